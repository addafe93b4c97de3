"""``python -m bench.chaos [--quick] [--only NAME ...]``: fault injection against real processes.

Loopback only (and, as root, network namespaces of its own). Each scenario starts a server (and
whatever else it needs), injects one kind of trouble while clients run, and prints one row:
scenario, tasks sent / ok / lost / failed, processes left behind, seconds, verdict. PASS means
every task sent ended in exactly one record (the client's accepted count matches the tasks with
a final status), no ok task carries a response other than its map's or a result computed before
the task was sent, nothing the scenario started is still alive 3 s after its clean-up, and the
scenario's own check holds (e.g. "no task lost"). FAIL says which. Every scenario has a timeout
(SIGALRM) and kills what it started. Issue 13 lists what the system did wrong when this was
written; many scenarios FAIL until it is fixed, and the table says so honestly.

Scenarios: worker churn (SIGKILL local workers every few hundred ms during a run; also under the
shared queue), every idle worker SIGKILLed, SIGSTOP of the server (1 s, and 5 s: past the
heartbeat TTL) and of a worker, a thread-per-task batch of 65,536 tasks (waves), a batch size
of 1,000,000,000 against many workers (warm threads), many parallel clients, a flood of batches
whose reply URL has no listener, hostile messages on every socket (the server's batch, worker
and control sockets, a client's result socket, a worker's server socket), a departed client (SIGKILLed mid-run, then
the next client on its port), hostile worker peers on --workers-url (DONE for a batch it does not
hold, READY while holding one, silence while holding one, a stolen routing id, forged results to
a client), and a worker host cut off from the server by a network-namespace partition.

The hostile payloads (``garbage_frames``, ``KILLERS``) are shared with tests/test_fuzz.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import psutil
import zmq

from comlab.lab.processes import ServerProcess, workdir
import msgpack

from comlab.system import protocol as P
from comlab.system.client import Client, ClientRun

MARK = "COMLAB_CHAOS_RUN"
LEFT_GRACE_S = 3.0
LOOPBACK = "127.0.0.1"


# -- hostile payloads (shared with tests/test_fuzz.py) -------------------------------------------
def deep_value(depth: int = 1000) -> bytes:
    """A msgpack value nested ``depth`` arrays deep: ~1 KB that decodes fine, and whose repr()
    raises RecursionError (it killed the server in a log line, and a client)."""
    return b"\x91" * depth + b"\xc0"


def raw(value) -> bytes:
    """Any value as a frame, bypassing the named types (what a peer might send)."""
    return msgpack.packb(value, use_bin_type=True)


def deep_message(kind: str, depth: int = 1000, fields: int = 3) -> bytes:
    """[VERSION, kind, <deep>, None...]: a versioned message of ``fields`` fields, one deep."""
    return bytes([0x90 | fields]) + raw(P.VERSION) + raw(kind) + deep_value(depth) + (
        b"\xc0" * (fields - 3))


def kind_of(cls) -> str:
    return cls.KIND


def fields(cls) -> int:
    """Items in a frame of this message type: VERSION, KIND and its fields."""
    return 2 + len(cls._fields)


# Messages that kill or wedge a process today (issue 13), by target socket.
KILLERS = {
    "server-batch": {"deep value": deep_value(),
                     "deep BATCH": deep_message(kind_of(P.Batch), fields=fields(P.Batch)),
                     "deep HELLO": deep_message(kind_of(P.Hello), fields=fields(P.Hello))},
    "server-worker": {"deep value": deep_value(),
                      "deep READY": deep_message(kind_of(P.Ready), fields=fields(P.Ready))},
    "server-control": {"deep value": deep_value(),
                       "deep strategy": deep_message(kind_of(P.Control), fields=fields(P.Control))},
    "client-results": {"deep value": deep_value(),
                       "deep RESULTS": deep_message(kind_of(P.Results), fields=fields(P.Results))},
    "worker": {"deep value": deep_value(),
               "deep WORK": deep_message(kind_of(P.Assign), fields=fields(P.Assign)),
               "short WORK": raw([P.VERSION, kind_of(P.Assign), 1]),
               "CONNECT, bad URL": P.Connect("no-such-url", "", 0).pack()},
}


def garbage_frames(seed: int = 0, n: int = 60) -> list[bytes]:
    """Undecodable, wrong-version, wrong-type and wrongly-shaped frames (never a valid message
    of any type, never a killer): what every socket must drop and count."""
    rng = random.Random(seed)
    out = [b"", b"\xc1", b"\x00\x01 garbage", bytes(range(256)), raw([P.VERSION + 1, "B"]),
           raw({"B": 1}), raw("text"), raw([P.VERSION]), raw([P.VERSION, "Z", 1]),
           raw([P.VERSION, None]), raw([P.VERSION, 1, 2, 3])]
    shapes = [kind_of(c) for c in (P.Batch, P.Hello, P.Ready, P.Done, P.Results, P.Control)]
    while len(out) < n:
        kind = rng.choice(shapes)
        values = [None, -1, 2**63, 1.5, "", "x" * rng.randint(0, 40), b"\x00", [], {}, [None],
                  {"a": []}, [1, "a"], True]
        msg = [P.VERSION, kind] + [rng.choice(values) for _ in range(rng.randint(0, 16))]
        if rng.random() < 0.3:
            out.append(raw(msg)[: rng.randint(1, 30)])  # truncated
        else:
            out.append(raw(msg))
    return out


# -- accounting ----------------------------------------------------------------------------------
@dataclass
class Row:
    scenario: str
    sent: int = 0
    ok: int = 0
    lost: int = 0
    failed: int = 0
    other: int = 0           # unknown / unreachable (none expected here)
    left: int = 0
    seconds: float = 0.0
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)   # what was done, shown with a PASS
    skipped: str = ""

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "SKIP"
        return "PASS" if not self.problems else "FAIL"

    @property
    def reason(self) -> str:
        text = self.skipped or "; ".join(p.splitlines()[0] if p else p
                                         for p in self.problems or self.notes)
        return text if len(text) <= 240 else text[:237] + "..."

    def add(self, run: ClientRun, expected: dict | None = None, label: str = "",
            keys: list | None = None) -> dict:
        """Count one client run and check its records; return its counts."""
        cols = run.columns()
        status = cols["status"]
        counts = {name: int((status == code).sum()) for code, name in enumerate(P.STATUS_NAMES)}
        sent = int((cols["t_sent"] >= 0).sum())
        self.sent += sent
        self.ok += counts["ok"]
        self.lost += counts["lost"]
        self.failed += counts["failed"]
        self.other += counts["unknown"] + counts["unreachable"]
        where = f"{label}: " if label else ""
        final = int((status != P.LOST).sum())
        if final != run.accepted:
            self.problems.append(f"{where}{run.accepted} results accepted for {final} tasks "
                                 "with a final status")
        done = status != P.LOST
        early = done & (cols["t_started"] >= 0) & (cols["t_started"] < cols["t_sent"])
        if early.any():
            self.problems.append(f"{where}{int(early.sum())} results started before their "
                                 "task was sent (an earlier run's, or forged)")
        if expected is not None:
            ok = np.flatnonzero(status == P.OK)
            want = np.array([expected[keys[i]] for i in ok], dtype=np.int64)
            wrong = int((cols["response"][ok] != want).sum())
            if wrong:
                self.problems.append(f"{where}{wrong} ok tasks carry a wrong response")
        return {**counts, "sent": sent}

    def require(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)


# -- processes -----------------------------------------------------------------------------------
def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _ours() -> set:
    """Live descendants of this process and orphans that carry this run's mark, minus this
    process's own multiprocessing helpers (they live as long as it does)."""
    me = psutil.Process()
    found = set()
    for p in me.children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if p.ppid() == me.pid and ("multiprocessing.forkserver" in cmd
                                   or "multiprocessing.resource_tracker" in cmd):
            continue
        found.add(p)
    for p in psutil.process_iter(["ppid"]):
        if p.info["ppid"] != 1:
            continue
        try:
            if p.environ().get(MARK) == os.environ.get(MARK):
                found.add(p)
        except psutil.Error:
            pass
    return {p for p in found if _alive(p)}


class ScenarioTimeout(Exception):
    pass


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise ScenarioTimeout in the main thread after ``seconds``."""
    def fire(signum, frame):
        raise ScenarioTimeout(f"scenario timed out after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)  # e.g. pytest-timeout's
    t0 = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer:  # give the outer timer back what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(0.001, outer - (time.monotonic() - t0)))


@dataclass
class Profile:
    name: str
    scale: float     # task counts
    timeout: float   # per client run


PROFILES = {"full": Profile("full", 1.0, 20.0), "quick": Profile("quick", 0.5, 15.0),
            "tiny": Profile("tiny", 0.25, 4.0)}  # tiny: tests/test_chaos.py


class Lab:
    """What a scenario starts: a working directory, servers, subprocesses; all stopped."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.dir = workdir()
        self.servers: list[ServerProcess] = []
        self.procs: list[subprocess.Popen] = []
        self.ctx = zmq.Context()
        self.stopped: list[int] = []  # pids we SIGSTOPped: SIGCONT before stopping anything
        self.closed = False

    def n(self, full: int, least: int = 4) -> int:
        return max(least, int(full * self.profile.scale))

    def data(self, n: int, wait: float, prefix: str = "10.1") -> tuple[list, dict, str]:
        """n distinct keys, each with its own response, and a map file for them."""
        keys = [f"{prefix}.{i // 250}.{i % 250 + 1}:run" for i in range(n)]
        expected = {k: 1000 + i for i, k in enumerate(keys)}
        path = os.path.join(self.dir, f"map-{prefix}-{n}.txt")
        with open(path, "w") as f:
            for k, r in expected.items():
                f.write(f"{k}:{r}:{wait!r}\n")
        return keys, expected, path

    def server(self, map_file: str, workers: int, **kwargs) -> ServerProcess:
        s = ServerProcess(map_file, workers, self.dir, **kwargs)
        self.servers.append(s)
        return s

    def popen(self, args: list, **kwargs) -> subprocess.Popen:
        p = subprocess.Popen(args, start_new_session=True, **kwargs)
        self.procs.append(p)
        return p

    def socket(self, kind: int, **options) -> zmq.Socket:
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        for name, value in options.items():
            s.setsockopt(getattr(zmq, name.upper()), value)
        return s

    def sigstop(self, pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        self.stopped.append(pid)

    def sigcont(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        with contextlib.suppress(ValueError):
            self.stopped.remove(pid)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for pid in list(self.stopped):
            self.sigcont(pid)
        for s in self.servers:
            with contextlib.suppress(Exception):
                s.stop()
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(2)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                    p.wait(2)
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
        self.ctx.destroy(linger=0)
        shutil.rmtree(self.dir, ignore_errors=True)


def free_url() -> str:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return f"tcp://{LOOPBACK}:{s.getsockname()[1]}"


class ClientThread(threading.Thread):
    """A Client running in the background (daemon thread), so the scenario can act mid-run."""

    def __init__(self, keys, batch_size: int, server_url: str, timeout: float,
                 bind: str = f"tcp://{LOOPBACK}:*", security=None) -> None:
        super().__init__(daemon=True)
        self.keys = keys
        self.client = Client(keys, batch_size, bind, server_url, timeout=timeout,
                             security=security)
        self.run_result: ClientRun | None = None
        self.error: BaseException | None = None
        self.started_s = time.monotonic()
        self.ended_s = None
        self.start()

    def run(self) -> None:
        try:
            self.run_result = self.client.run()
        except BaseException as exc:
            self.error = exc
        self.ended_s = time.monotonic()

    def in_run(self) -> bool:
        result = getattr(self.client, "result", None)
        return bool(result is not None and result.t_start)

    def messages(self) -> int:
        result = getattr(self.client, "result", None)
        return result.log.count if result is not None else 0

    def finish(self, row: Row, expected: dict, label: str = "", wait: float = 60.0):
        """Join (bounded); count the run in ``row``; its counts, or None if it broke."""
        self.join(wait)
        if self.is_alive():
            row.problems.append(f"{label or 'client'} did not end within {wait:g} s")
            return None
        if self.error is not None:
            row.problems.append(f"{label or 'client'} crashed: {type(self.error).__name__}: "
                                f"{str(self.error)[:80]}")
            return None
        return row.add(self.run_result, expected, label, self.keys)


def wait_until(predicate, timeout: float, period: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(period)


def stats(server: ServerProcess, timeout: float = 5.0) -> dict:
    return server.control("stats", timeout=timeout)


def local_worker_pids(server: ServerProcess) -> list[int]:
    """Pids of the server's own workers that it lists as joined (a dead one not yet reaped is
    a zombie: left out)."""
    tree = {p.pid for p in psutil.Process(server.proc.pid).children(recursive=True) if _alive(p)}
    return [w["pid"] for w in stats(server)["workers"] if w["pid"] in tree]


def alive(server: ServerProcess) -> bool:
    return server.proc.poll() is None


def normal_run(lab: Lab, row: Row, server: ServerProcess, keys, expected, label="normal run",
               batch: int = 4) -> dict | None:
    """One plain run after the trouble: must end with every task ok."""
    if not alive(server):
        row.problems.append(f"server died (exit code {server.proc.poll()})")
        return None
    t = ClientThread(keys, batch, server.url, lab.profile.timeout)
    counts = t.finish(row, expected, label, lab.profile.timeout + 15)
    if counts is not None:
        row.require(counts["ok"] == len(keys), f"{label}: {counts['ok']} of {len(keys)} ok "
                                               f"({counts['lost']} lost, {counts['failed']} "
                                               "failed)")
    return counts


# -- scenarios -----------------------------------------------------------------------------------
def worker_churn(lab: Lab, row: Row, dispatch: str | None = None) -> None:
    """SIGKILL a local worker every 0.15 s while a run is going: no task may be lost (a batch
    lost twice fails, which is a record too)."""
    keys, expected, path = lab.data(lab.n(2000, 200), 0.01)
    server = lab.server(path, 4, dispatch=dispatch)
    t = ClientThread(keys, 4, server.url, lab.profile.timeout * 2)
    wait_until(t.in_run, 10)
    kills = 0
    rng = random.Random(1)
    while t.is_alive():
        pids = local_worker_pids(server)
        if pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
        t.join(0.15)
    counts = t.finish(row, expected)
    row.notes.append(f"{kills} SIGKILLs")
    row.require(kills >= 3, f"only {kills} workers killed: the run was too short to churn")
    if counts:
        row.require(counts["lost"] == 0, f"{counts['lost']} tasks lost under churn")
    row.require(alive(server), "server died")


def sigstop_server(lab: Lab, row: Row) -> None:
    """SIGSTOP the server for 1 s mid-run, then SIGCONT: every task ok."""
    keys, expected, path = lab.data(lab.n(400, 40), 0.01)
    server = lab.server(path, 2)
    t = ClientThread(keys, 2, server.url, lab.profile.timeout)
    wait_until(lambda: t.messages() > 0, 10)
    lab.sigstop(server.proc.pid)
    time.sleep(1.0)  # the fault itself: the server frozen for 1 s
    lab.sigcont(server.proc.pid)
    counts = t.finish(row, expected)
    if counts:
        row.require(counts["ok"] == len(keys), f"{counts['ok']} of {len(keys)} ok")


def sigstop_worker(lab: Lab, row: Row) -> None:
    """SIGSTOP a local worker holding a batch and leave it stopped: its batch must be retried
    elsewhere well before the client's timeout (every task ok)."""
    keys, expected, path = lab.data(16, 0.2)
    server = lab.server(path, 2)
    timeout = max(8.0, lab.profile.timeout)  # a stopped worker may take a few s to notice
    t = ClientThread(keys, 2, server.url, timeout)
    wait_until(lambda: t.in_run() and stats(server)["busy"] >= 1, 10)
    pids = local_worker_pids(server)
    lab.sigstop(pids[0])
    counts = t.finish(row, expected, wait=timeout + 10)
    lab.sigcont(pids[0])
    if counts:
        row.require(counts["ok"] == len(keys), f"{counts['ok']} of {len(keys)} ok: a stopped "
                                               "worker's batch waited for the client's timeout")


def idle_kill(dispatch: str):
    def scenario(lab: Lab, row: Row) -> None:
        """SIGKILL every idle worker of a 2-worker server once (the seed's queue: one of them
        held the queue's reader lock, and the server was wedged for good), then a normal run of
        512 tasks: all ok."""
        keys, expected, path = lab.data(512, 0.0)
        server = lab.server(path, 2, dispatch=dispatch)
        pids = local_worker_pids(server)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        if not wait_until(lambda: stats(server)["worker_deaths"] == len(pids)
                          and len(local_worker_pids(server)) == 2, 10):
            row.problems.append("the killed workers were not replaced")
        normal_run(lab, row, server, keys, expected)
    return scenario


def sigstop_server_long(dispatch: str):
    def scenario(lab: Lab, row: Row) -> None:
        """SIGSTOP the server for 5 s mid-run (past the workers' 3 s heartbeat TTL: on SIGCONT
        it finds them gone and kills them), SIGCONT: that run and the next lose nothing."""
        keys, expected, path = lab.data(lab.n(10000, 1000), 0.0)
        server = lab.server(path, 2, dispatch=dispatch)
        time.sleep(1.5)  # the workers' first heartbeat (with its TTL) comes 1 s after joining
        t = ClientThread(keys, 4, server.url, lab.profile.timeout + 10)
        wait_until(t.in_run, 10)
        lab.sigstop(server.proc.pid)
        time.sleep(5.0)  # the fault itself
        lab.sigcont(server.proc.pid)
        counts = t.finish(row, expected, wait=lab.profile.timeout + 20)
        if counts:
            row.require(counts["lost"] == 0, f"{counts['lost']} of {len(keys)} lost")
        normal_run(lab, row, server, keys[:512], expected)
    return scenario


def waved_batch(lab: Lab, row: Row) -> None:
    """140,000 tasks of 1 ms in batches of 65,536, thread-per-task, 2 workers: each batch runs
    in waves of the worker's thread share; no worker may be taken for wedged (the old overdue
    rule killed them twice and failed every task), and the server's counters never exceed the
    tasks sent."""
    n = lab.n(140_000, 20_000)
    keys, expected, path = lab.data(20_000, 0.001)  # distinct keys: at most 62,500 addresses
    keys = (keys * -(-n // len(keys)))[:n]
    server = lab.server(path, 2)
    t = ClientThread(keys, min(65536, n // 2 + 1), server.url, 120.0)
    counts = t.finish(row, expected, wait=150.0)
    st = stats(server)
    row.notes.append(f"server: {st['tasks']} tasks, {st['failed']} failed, "
                     f"{st['overdue']} overdue")
    if counts:
        row.require(counts["ok"] == n, f"{counts['ok']} of {n} ok")
    row.require(st["failed"] <= st["tasks"] == n, f"server counters: {st['failed']} failed, "
                                                  f"{st['tasks']} tasks of {n} sent")
    row.require(st["overdue"] == 0, f"{st['overdue']} workers taken for wedged")


def huge_batch_size(lab: Lab, row: Row) -> None:
    """A client asks for batches of 1,000,000,000 tasks (``run_client FILE 1000000000``)
    against many workers: each idle worker warms threads for the tasks the run has, within its
    share of the machine (the old server parked 1,024 per worker: 32 workers took 32,549 of
    32,768 pids)."""
    from comlab.system import limits
    workers = lab.n(32, 8)
    keys, expected, path = lab.data(lab.n(128, 64), 0.001)
    server = lab.server(path, workers)
    tree = psutil.Process(server.proc.pid)
    before = sum(p.num_threads() for p in [tree, *tree.children(recursive=True)])
    normal_run(lab, row, server, keys, expected, batch=1_000_000_000)
    after = sum(p.num_threads() for p in [tree, *tree.children(recursive=True)])
    most = workers * min(len(keys), limits.thread_share(workers))
    row.notes.append(f"{workers} workers: server tree {before} -> {after} threads")
    row.require(after - before <= most, f"{after - before} threads warmed by {workers} workers "
                                        f"for a run of {len(keys)} tasks")


def many_clients(lab: Lab, row: Row) -> None:
    """Many clients at once against one server (more than its 32 cached client sockets), then
    the idle server and workers must use ~no CPU."""
    n_clients = lab.n(50, 36)
    keys, expected, path = lab.data(16, 0.01)
    server = lab.server(path, 2)
    threads = [ClientThread(keys, 4, server.url, lab.profile.timeout) for _ in range(n_clients)]
    broken = 0
    for i, t in enumerate(threads):
        counts = t.finish(row, expected, f"client {i}", lab.profile.timeout + 20)
        if counts is None or counts["ok"] != len(keys):
            broken += 1
    theirs = [p for p in row.problems if p.startswith("client ")]
    if broken or theirs:
        row.problems = [p for p in row.problems if not p.startswith("client ")] + [
            f"{broken} of {n_clients} clients did not get every task ok"
            + (f" (e.g. {theirs[0]})" if theirs else "")]
    tree = [psutil.Process(server.proc.pid)] + psutil.Process(server.proc.pid).children(True)
    for p in tree:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(1.0)  # a measuring window, not synchronisation
    cpu = 0.0
    for p in tree:
        with contextlib.suppress(psutil.Error):
            cpu += p.cpu_percent(None)
    row.require(cpu < 3.0, f"idle server + workers use {cpu:.0f} % CPU after {n_clients} "
                           "clients (reconnecting to departed clients)")


def batch_flood(lab: Lab, row: Row) -> None:
    """A peer floods the server with batches whose reply URL has no listener; a legitimate
    client arriving meanwhile must get every task, in about normal time."""
    keys, expected, path = lab.data(32, 0.0)  # zero-wait: the flood runs at full speed
    server = lab.server(path, 2)
    base = ClientThread(keys, 2, server.url, lab.profile.timeout)
    base.finish(row, expected, "baseline")
    baseline = base.ended_s - base.started_s
    push = lab.socket(zmq.PUSH, sndhwm=0)
    push.connect(server.url)
    dead = free_url()  # nobody listens here
    for b in range(lab.n(2500, 2500)):
        push.send(P.Batch(4242, dead, b, P.ids_bytes([0]), keys[:1]).pack())
    wait_until(lambda: stats(server)["batches"] >= 2000, 10)
    t = ClientThread(keys, 2, server.url, lab.profile.timeout)
    counts = t.finish(row, expected, "client after the flood")
    took = t.ended_s - t.started_s
    if counts:
        row.require(counts["ok"] == len(keys), f"client after the flood: {counts['ok']} of "
                                               f"{len(keys)} ok")
        row.require(took < 3 * baseline + 2, f"client after the flood took {took:.1f} s "
                                             f"(baseline {baseline:.2f} s)")
    row.require(alive(server), "server died")


def _fake_sender(lab: Lab, kind: int, url: str, frames: list[bytes]) -> None:
    sock = lab.socket(kind)
    sock.connect(url)
    for f in frames:
        sock.send(f)
    sock.close(2000)  # linger: libzmq delivers what is queued once connected (2 s at most)


def settle(server: ServerProcess, timeout: float = 5.0) -> None:
    """Wait until the server has counted the drops of what it was sent (the count stays the
    same for 0.3 s), or died; bounded."""
    deadline = time.monotonic() + timeout
    last, same = -1, 0
    while alive(server) and time.monotonic() < deadline and same < 3:
        try:
            dropped = stats(server, 1.0)["dropped"]
        except RuntimeError:  # no answer: it is dying
            return
        same = same + 1 if dropped == last and dropped > 0 else 0
        last = dropped
        time.sleep(0.1)


def hostile_server_batch(lab: Lab, row: Row) -> None:
    """Garbage and the killers on the server's batch (PULL) socket."""
    keys, expected, path = lab.data(16, 0.0)
    server = lab.server(path, 1)
    frames = garbage_frames(1) + list(KILLERS["server-batch"].values())
    _fake_sender(lab, zmq.PUSH, server.url, frames)
    _after_hostile(lab, row, server, keys, expected)


def hostile_server_worker(lab: Lab, row: Row) -> None:
    """Garbage and the killers on the server's worker endpoint (--workers-url)."""
    keys, expected, path = lab.data(16, 0.0)
    wurl = free_url()
    server = lab.server(path, 1, workers_url=wurl)
    frames = garbage_frames(2) + list(KILLERS["server-worker"].values())
    _fake_sender(lab, zmq.DEALER, wurl, frames)
    _after_hostile(lab, row, server, keys, expected)


def hostile_server_control(lab: Lab, row: Row) -> None:
    """Garbage and the killers on the server's control socket (REQ: one at a time)."""
    keys, expected, path = lab.data(16, 0.0)
    server = lab.server(path, 1)
    unanswered = 0
    for f in garbage_frames(3, 30) + list(KILLERS["server-control"].values()):
        req = lab.socket(zmq.REQ)
        req.connect(server.control_url)
        req.send(f)
        if req.poll(3000):
            req.recv()
        else:
            unanswered += 1
        req.close(0)
        if not alive(server):
            break
    row.require(unanswered == 0, f"{unanswered} control requests got no answer")
    normal_run(lab, row, server, keys, expected)


def _after_hostile(lab, row, server, keys, expected) -> None:
    settle(server)
    normal_run(lab, row, server, keys, expected)


def hostile_client_results(lab: Lab, row: Row) -> None:
    """Garbage and the killers to a client's result socket mid-run: it must go on."""
    keys, expected, path = lab.data(8, 0.3)
    server = lab.server(path, 1)
    t = ClientThread(keys, 2, server.url, lab.profile.timeout)
    wait_until(t.in_run, 10)
    frames = garbage_frames(4) + list(KILLERS["client-results"].values())
    _fake_sender(lab, zmq.PUSH, t.client.reply_url, frames)
    counts = t.finish(row, expected)
    if counts:
        row.require(counts["ok"] == len(keys), f"{counts['ok']} of {len(keys)} ok")


def hostile_to_worker(lab: Lab, row: Row) -> None:
    """A fake server (ROUTER) sends a worker garbage and the killers, then real work: the same
    worker process must answer it."""
    frames = garbage_frames(5) + list(KILLERS["worker"].values())
    problems = fuzz_worker(lab, frames, timeout=3.0)
    row.problems.extend(problems)
    row.sent += 4
    if not problems:
        row.ok += 4
    else:
        row.lost += 4


def fuzz_worker(lab: Lab, frames: list[bytes], timeout: float = 10.0) -> list[str]:
    """Start a worker host (1 worker) against a fake ROUTER, send it ``frames``, then one WORK
    of 4 tasks; return problems (empty: the same worker answered with 4 ok results and DONE)."""
    router = lab.socket(zmq.ROUTER)
    url = f"tcp://{LOOPBACK}:{router.bind_to_random_port(f'tcp://{LOOPBACK}')}"
    results = lab.socket(zmq.PULL)
    reply = f"tcp://{LOOPBACK}:{results.bind_to_random_port(f'tcp://{LOOPBACK}')}"
    lab.popen([sys.executable, "-m", "comlab.system.worker_host", url, "--workers", "1"],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not router.poll(timeout * 1000):
        return ["the worker never said READY"]
    ident, ready = router.recv_multipart()[:2]
    pid = P.Ready.decode(ready).pid
    for f in frames:
        router.send_multipart([ident, f])
    router.send_multipart([ident, P.assign([P.work(1, 7, reply, "sequential", [0, 1, 2, 3],
                                                   [5, 6, 7, 8], [0.0] * 4)])])
    problems = []
    if not results.poll(timeout * 1000):
        problems.append("no RESULTS for real work after the garbage")
    else:
        msg = P.Results.decode(results.recv())
        if msg.statuses != bytes(4) or msg.responses != P.ids_bytes([5, 6, 7, 8]):
            problems.append(f"wrong RESULTS after the garbage: {str(msg)[:80]}")
    if not psutil.pid_exists(pid) or not _alive(psutil.Process(pid)):
        problems.append(f"the worker (pid {pid}) died on the garbage and was replaced")
    return problems


def departed_client(how: str):
    """A client on a fixed port leaves mid-run (``how``: "killed", SIGKILL; "timeout", its
    own --timeout passes); the next client on the same port must get only its own results, in
    about the time the first clean run took."""
    def scenario(lab: Lab, row: Row) -> None:
        _departed(lab, row, how)
    scenario.__doc__ = departed_client.__doc__.replace("``how``", repr(how))
    return scenario


def _departed(lab: Lab, row: Row, how: str) -> None:
    keys, expected, path = lab.data(32, 0.1)
    server = lab.server(path, 2)
    bind = free_url()
    base = ClientThread(keys, 2, server.url, lab.profile.timeout, bind=bind)
    base.finish(row, expected, "baseline")
    baseline = base.ended_s - base.started_s
    big_keys = keys * 8  # 256 tasks of 0.1 s on 2 workers: ~13 s of queued work
    cfile = os.path.join(lab.dir, "departing.txt")
    with open(cfile, "w") as f:
        f.write("\n".join(big_keys) + "\n")
    gone = lab.popen([sys.executable, "-m", "comlab.run_client", cfile, "2", bind, server.url,
                      "--timeout", "60" if how == "killed" else "1"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: stats(server)["busy"] >= 2, 10)
    if how == "killed":
        gone.kill()
    gone.wait(20)
    t = ClientThread(keys, 2, server.url, lab.profile.timeout, bind=bind)
    counts = t.finish(row, expected, "next client")
    took = t.ended_s - t.started_s
    if counts:
        row.require(counts["ok"] == len(keys), f"next client: {counts['ok']} of {len(keys)} ok")
        row.require(took < 2 * baseline + 1, f"next client took {took:.1f} s (baseline "
                                             f"{baseline:.2f} s): the departed client's work "
                                             "ran first")
        run = t.run_result
        row.require(run.duplicates == 0, f"next client dropped {run.duplicates} messages as "
                                         "duplicates (stale results)")


class FakeWorker(threading.Thread):
    """A worker peer on --workers-url that misbehaves as told: ``mode`` is one of
    done-not-held, ready-while-holding, silent, forged-results, done-no-results (DONE at once,
    never runs), hold (keeps every batch), answer-999 (results with response 999 under the
    batch's true token, then DONE)."""

    def __init__(self, lab: Lab, url: str, mode: str, ident: bytes | None = None,
                 n_tasks: int = 0, curve_keys: str | None = None) -> None:
        super().__init__(daemon=True)
        self.sock = lab.socket(zmq.DEALER, routing_id=ident or b"peer-" + uuid.uuid4().hex[:6]
                               .encode())
        if curve_keys:  # the deployment's worker key: a peer that stole it
            from comlab.system.security import Curve
            Curve.load(curve_keys, "worker").apply(self.sock, server=False)
        self.sock.connect(url)
        self.mode, self.n_tasks = mode, n_tasks
        self.stop = threading.Event()
        self.ctx = lab.ctx
        self.start()

    def run(self) -> None:
        sock = self.sock
        sock.send(P.Ready("peer", "peer-host", 1).pack())
        push = None
        run = 0
        while not self.stop.is_set():
            if self.mode == "done-not-held":
                sock.send(P.Done(run, random.randint(10**6, 10**7)).pack())
            if not sock.poll(20):
                continue
            msg = P.decode(sock.recv())
            if type(msg) is P.Connect and self.mode != "silent":
                sock.send(P.Joined(msg.reply_url).pack())
            elif type(msg) is P.Assign:
                run = msg.run
                last = int(P.read_heads(msg.heads, "WORK")["batch_id"][-1])
                if self.mode == "done-no-results":
                    sock.send(P.Done(run, last).pack())
                elif self.mode == "answer-999":
                    if push is None:
                        push = self.ctx.socket(zmq.PUSH)
                        push.setsockopt(zmq.LINGER, 0)
                        push.connect(msg.reply_url)
                    n = len(msg.task_ids) // 8
                    t = P.ids_bytes([time.monotonic_ns()] * n)
                    push.send(P.Results(run, "peer", "peer-host", msg.heads, msg.task_ids,
                                        bytes(n), P.ids_bytes([999] * n), t, t, None).pack())
                    sock.send(P.Done(run, last).pack())
                elif self.mode == "ready-while-holding":
                    sock.send(P.Ready("peer", "peer-host", 1).pack())
                elif self.mode == "forged-results":
                    # It learnt the run, its batch's token and the client's result URL from its
                    # batch: first, results for every task of the run (999 each), then its own
                    # batch answered truly, as a worker would. Only the true ones may count.
                    if push is None:
                        push = self.ctx.socket(zmq.PUSH)
                        push.setsockopt(zmq.LINGER, 0)
                        push.connect(msg.reply_url)
                        ids = list(range(self.n_tasks))
                        n = len(ids)
                        head = P.read_heads(msg.heads, "WORK")[0].tolist()
                        push.send(P.results(msg.run, "peer", "peer-host", [(*head[:5], n)],
                                            ids, [P.OK] * n, [999] * n, [4] * n,
                                            [5] * n).pack())
                    heads, entries = P.check_assign(msg)
                    n = len(entries)
                    t = P.ids_bytes([time.monotonic_ns()] * n)
                    push.send(P.Results(msg.run, "peer", "peer-host", msg.heads, msg.task_ids,
                                        bytes(n), entries["response"].tobytes(), t, t,
                                        None).pack())
                    sock.send(P.Done(msg.run, int(heads["batch_id"][-1])).pack())
        if push is not None:
            push.close(0)


def hostile_worker(mode: str):
    def scenario(lab: Lab, row: Row) -> None:
        keys, expected, path = lab.data(32, 0.05)
        wurl = free_url()
        server = lab.server(path, 2, workers_url=wurl)
        peer = FakeWorker(lab, wurl, mode, n_tasks=len(keys))
        wait_until(lambda: len(stats(server)["workers"]) >= 3, 5)
        try:
            t0 = time.monotonic()
            counts = normal_run(lab, row, server, keys, expected, batch=2)
            took = time.monotonic() - t0
            if counts and mode == "silent":
                row.require(took < lab.profile.timeout / 2,
                            f"the run took {took:.1f} s: a silent peer held a batch")
        finally:
            peer.stop.set()
            peer.join(2)
    scenario.__doc__ = f"A worker peer on --workers-url: {mode}; a normal run must be all ok."
    return scenario


def lying_peer(mode: str, peers: int = 1, secure: bool = False):
    """Issue 24's rows: worker peers that say DONE without running (with or without a valid
    worker key under Curve), hold every batch, or answer 999 under the batch's true token."""
    def scenario(lab: Lab, row: Row) -> None:
        # Holders: fewer batches than peers, so a batch released from one finds another idle.
        n, wait, batch = lab.n(512), 0.05, 16 if peers == 1 else 32
        keys, expected, path = lab.data(n, wait)
        wurl = free_url()
        keys_dir = client_keys = None
        if secure:
            from comlab.system import security
            keys_dir = os.path.join(lab.dir, "keys")
            security.create_keys(keys_dir)
            client_keys = security.Curve.load(keys_dir, "client")
        server = lab.server(path, 2, workers_url=wurl, curve_keys=keys_dir)
        fakes = [FakeWorker(lab, wurl, mode, curve_keys=keys_dir) for _ in range(peers)]
        if not wait_until(lambda: len(stats(server)["workers"]) >= 2 + peers, 10):
            row.problems.append("set-up: the peers never joined")
            return
        try:
            t = ClientThread(keys, batch, server.url, lab.profile.timeout + 10,
                             security=client_keys)
            counts = t.finish(row, expected, wait=lab.profile.timeout + 25)
            s = stats(server)
        finally:
            for f in fakes:
                f.stop.set()
                f.join(2)
        if counts is None:
            return
        row.require(counts["lost"] == 0, f"{counts['lost']} tasks lost")
        if mode == "answer-999":
            run = t.run_result
            errors = run.columns()["error"][run.columns()["status"] == P.FAILED]
            row.require(all("peer" in e and "seal" in e for e in errors),
                        "a failed task does not name the forging worker")
            row.require(counts["ok"] + counts["failed"] == len(keys), "tasks neither ok nor "
                                                                      "failed")
        else:
            row.require(counts["ok"] == len(keys), f"{counts['ok']} of {len(keys)} ok "
                                                   f"({counts['failed']} failed)")
        if mode != "hold":
            row.require(s.get("quarantined", 0) >= 1, "the lying peer was not quarantined")
        row.notes.append(f"quarantined {s.get('quarantined', 0)}, retried "
                         f"{s.get('retried', 0)}, forged {s.get('forged', 0)}")
    scenario.__doc__ = f"{peers} worker peer(s) on --workers-url: {mode}" + \
        (" (holding a valid worker key)" if secure else "") + "; no task lost or wrong."
    return scenario


def unsolicited_pongs(lab: Lab, row: Row) -> None:
    """A peer claiming a worker host's name sends PONGs nobody asked for while the server
    samples that host's clock: the offset must stay that of the host's true answers."""
    keys, expected, path = lab.data(8, 0.0)
    wurl = free_url()
    server = lab.server(path, 1, workers_url=wurl)
    socks = {}
    for name in (b"liar", b"truth"):
        socks[name] = lab.socket(zmq.DEALER, routing_id=name)
        socks[name].connect(wurl)
        socks[name].send(P.Ready(name.decode(), "hostA", 1).pack())
        wait_until(lambda: name.decode() in {w["name"] for w in stats(server)["workers"]}, 5)
    server.control("clock-workers", 4)
    for k in range(200):
        t = time.monotonic_ns() + k * 10_000
        socks[b"liar"].send(P.Pong(t, t + 2 * 10 ** 9).pack())
    answered = 0
    while answered < 4 and socks[b"truth"].poll(3000):
        msg = P.decode(socks[b"truth"].recv())
        if type(msg) is P.Ping and msg.nonce is not None:
            socks[b"truth"].send(P.Pong(msg.nonce, time.monotonic_ns()).pack())
            answered += 1
    wait_until(lambda: server.control("worker-clocks").get("hostA", {}).get("samples", 0) >= 4,
               3)
    found = server.control("worker-clocks").get("hostA", {})
    offset = found.get("offset_ns")
    row.require(offset is not None and abs(offset) < 10 ** 7,
                f"hostA's clock offset is {offset} ns (one machine: ~0)")
    row.notes.append(f"hostA offset {offset} ns from {found.get('samples')} samples")
    normal_run(lab, row, server, keys, expected)


def steal_routing_id(lab: Lab, row: Row) -> None:
    """A peer takes the routing id the next local worker will get (w2 with 2 workers), then a
    local worker dies: its replacement must join, and a normal run must be all ok."""
    keys, expected, path = lab.data(32, 0.02)
    wurl = free_url()
    server = lab.server(path, 2, workers_url=wurl)
    peer = lab.socket(zmq.DEALER, routing_id=b"w2")
    peer.connect(wurl)
    peer.send(P.Ready("w2", "peer-host", 1).pack())
    if not wait_until(lambda: {"name": "w2", "host": "peer-host", "pid": 1}
                      in stats(server)["workers"], 5):
        row.problems.append("set-up: the peer never joined as w2")
        return
    victim = local_worker_pids(server)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in [w["pid"] for w in stats(server)["workers"]], 5)
    joined = wait_until(lambda: len(local_worker_pids(server)) >= 2, 3)
    row.require(bool(joined), "the replacement worker never joined (its routing id is taken)")
    peer.close(0)
    normal_run(lab, row, server, keys, expected)


def partition(lab: Lab, row: Row) -> None:
    """A worker host in its own network namespace loses its link mid-run for 2 s: its batches
    are retried on the server's own worker, every task ok, and it rejoins once the link is back.
    Needs root and ``ip netns``; skipped otherwise."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        row.skipped = "needs root and ip netns"
        return
    tag = uuid.uuid4().hex[:6]
    ns = {r: f"chaos-{r}-{tag}" for r in ("server", "worker", "client", "br")}
    addr = {"client": "10.78.0.1", "server": "10.78.0.2", "worker": "10.78.0.3"}
    made = []

    def ip(*args):
        return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)

    try:
        if ip("netns", "add", ns["br"]).returncode != 0:
            row.skipped = "ip netns add failed"
            return
        made.append(ns["br"])
        ip("-n", ns["br"], "link", "add", "br0", "type", "bridge")
        ip("-n", ns["br"], "link", "set", "br0", "up")
        for i, role in enumerate(("client", "server", "worker")):
            ip("netns", "add", ns[role])
            made.append(ns[role])
            ip("link", "add", "eth0", "netns", ns[role], "type", "veth", "peer", "name", f"p{i}",
               "netns", ns["br"])
            ip("-n", ns["br"], "link", "set", f"p{i}", "master", "br0", "up")
            ip("-n", ns[role], "addr", "add", f"{addr[role]}/24", "dev", "eth0")
            ip("-n", ns[role], "link", "set", "eth0", "up")
            ip("-n", ns[role], "link", "set", "lo", "up")
        keys, expected, path = lab.data(64, 0.1)
        wurl = f"tcp://{addr['server']}:5558"
        exec_in = lambda role: ["ip", "netns", "exec", ns[role]]  # noqa: E731
        server = lab.server(path, 1, workers_url=wurl, address=addr["server"], insecure=True,
                            prefix=exec_in("server"))
        lab.popen([*exec_in("worker"), sys.executable, "-m", "comlab.system.worker_host", wurl,
                   "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_until(lambda: len(stats(server)["workers"]) >= 3, 15):
            row.problems.append("the worker host never joined")
            return
        cfile = os.path.join(lab.dir, "partition.txt")
        with open(cfile, "w") as f:
            f.write("\n".join(keys) + "\n")
        timeout = max(15.0, lab.profile.timeout)  # a 2 s partition inside a ~1 s run
        client = lab.popen([*exec_in("client"), sys.executable, "-m", "comlab.run_client",
                            cfile, "2", f"tcp://{addr['client']}:5556", server.url,
                            "--timeout", str(timeout), "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        wait_until(lambda: stats(server)["busy"] >= 3, 10)
        ip("-n", ns["worker"], "link", "set", "eth0", "down")
        time.sleep(2.0)  # the fault itself: a 2 s partition
        ip("-n", ns["worker"], "link", "set", "eth0", "up")
        out, _ = client.communicate(timeout=timeout + 10)
        try:
            summary = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            row.problems.append(f"client printed no summary (exit {client.returncode})")
            return
        row.sent += summary["tasks"]
        row.ok += summary["ok"]
        row.lost += summary["lost"]
        row.failed += summary["failed"]
        row.require(summary["ok"] == len(keys), f"{summary['ok']} of {len(keys)} ok")
        row.require(summary["sum"] == sum(expected.values()), "wrong sum of responses")
        back = wait_until(lambda: len(stats(server)["workers"]) >= 3, 15)
        row.require(bool(back), "the worker host did not rejoin after the partition")
    finally:
        lab.close()  # stop the processes before their namespaces go
        for name in reversed(made):
            ip("netns", "del", name)


# -- issue 24: peers that are not who they say ----------------------------------------------------
def control_frames(lab: Lab, row: Row) -> None:
    """A REQ sends the control socket messages of 2 and 3 frames (the server exited 1, EFSM),
    and clients send messages of protocol version 3.0 (accepted as 3): each is answered or
    dropped, and a normal run is all ok."""
    keys, expected, path = lab.data(16, 0.0)
    server = lab.server(path, 1)
    good = P.Control("ping", []).pack()
    for parts in ([good, good], [b"", b"x", good]):
        req = lab.socket(zmq.REQ)
        req.connect(server.control_url)
        req.send_multipart(parts)
        answered = req.poll(5000) and P.ControlReply.decode(req.recv()).op == "error"
        row.require(bool(answered), f"no error answer to a request of {len(parts)} frames")
        req.close(0)
    floats = [raw([3.0, "B", 1, free_url(), 0, P.ids_bytes([0]), keys[:1]]),
              raw([True, "E", 1, ""])]
    _fake_sender(lab, zmq.PUSH, server.url, floats)
    wait_until(lambda: not alive(server) or stats(server)["dropped"] >= 2, 5)
    row.require(alive(server) and stats(server)["tasks"] == 0,
                "a message of protocol version 3.0 was taken for one of version 3")
    normal_run(lab, row, server, keys, expected)


def hello_hijack(lab: Lab, row: Row) -> None:
    """HELLOs of other runs naming a running client's result URL, every 50 ms (the client lost
    ~195 of 512 tasks): it must lose none."""
    keys, expected, path = lab.data(lab.n(512, 64), 0.01)
    server = lab.server(path, 2)
    t = ClientThread(keys, 4, server.url, lab.profile.timeout * 2)
    wait_until(t.in_run, 10)
    push = lab.socket(zmq.PUSH)
    push.connect(server.url)
    sent = 0
    while t.is_alive():
        push.send(P.Hello(10**9 + sent, t.client.reply_url, 1, b"").pack())
        sent += 1
        t.join(0.05)
    counts = t.finish(row, expected)
    row.notes.append(f"{sent} HELLOs on its URL, {stats(server)['refused']} refused")
    if counts:
        row.require(counts["ok"] == len(keys), f"{counts['ok']} of {len(keys)} ok")


def hello_flood(lab: Lab, row: Row) -> None:
    """1,000 HELLOs to fresh URLs nobody listens at over 4 s (all 256 client slots were taken,
    legitimate clients refused, 1,025 fds): 8 clients started during the flood are all served,
    the server's fds stay bounded."""
    keys, expected, path = lab.data(16, 0.0)
    server = lab.server(path, 1)
    n, seconds = lab.n(1000, 250), 4.0 * min(1.0, lab.profile.scale * 2)
    push = lab.socket(zmq.PUSH, sndhwm=0)
    push.connect(server.url)
    proc = psutil.Process(server.proc.pid)
    fds, clients = [proc.num_fds()], []
    t0 = time.monotonic()
    for i in range(n):
        push.send(P.Hello(10**9 + i, f"tcp://127.0.0.2:{20000 + i}", 1, b"").pack())
        if i % (n // 8) == n // 16:
            clients.append(ClientThread(keys, 4, server.url, lab.profile.timeout))
        if i % 50 == 0:
            fds.append(proc.num_fds())
        time.sleep(max(0.0, t0 + seconds * (i + 1) / n - time.monotonic()))
    for i, c in enumerate(clients):
        counts = c.finish(row, expected, f"client {i}", lab.profile.timeout + 15)
        if counts:
            row.require(counts["ok"] == len(keys), f"client {i}: {counts['ok']} of "
                                                   f"{len(keys)} ok")
    s = stats(server)
    row.notes.append(f"{n} HELLOs in {seconds:g} s, {len(clients)} clients; server fds "
                     f"{fds[0]} -> max {max(fds)}; {s.get('runs_reclaimed', 0)} runs reclaimed")
    row.require(max(fds) < 4 * 256 + 64, f"server fds reached {max(fds)}")


def _unknown_batch_tail(n: int) -> bytes:
    """What follows ``P.batch_prefix`` in a BATCH of n distinct unknown keys."""
    return (raw(0) + raw(np.arange(n, dtype=P.I64).tobytes())
            + msgpack.Packer().pack_array_header(n) + b"".join(raw(f"{i:x}") for i in range(n)))


def huge_batches(lab: Lab, row: Row) -> None:
    """Four BATCH frames of 4.4 M unknown keys (66 MB each, under the 64 MiB every socket
    takes), each with a fresh reply URL, then four of 300 k keys (above the task limit, within
    the byte limit), while a client runs (the server grew 38 -> 749 MiB for good, 7-13 s of loop
    time each, the client exited 2): the client is all ok, the server's RSS is back within
    50 MiB of its start within 10 s, and the longest control round trip meanwhile (the loop's
    longest stall) is reported."""
    keys, expected, path = lab.data(lab.n(512, 64), 0.005)
    server = lab.server(path, 2)
    proc = psutil.Process(server.proc.pid)
    rss0 = proc.memory_info().rss
    rtts, done = [], threading.Event()

    def pinger():
        req = lab.socket(zmq.REQ)
        req.connect(server.control_url)
        while not done.is_set():
            t = time.monotonic()
            req.send(P.Control("ping", []).pack())
            if not req.poll(20_000):
                break
            req.recv()
            rtts.append(time.monotonic() - t)
            done.wait(0.02)
        req.close(0)

    frames = [(lab.n(4_400_000, 100_000), 4), (300_000, 4)]
    tails = [_unknown_batch_tail(n) for n, _ in frames]  # before the clocks: the GIL
    ping = threading.Thread(target=pinger, daemon=True)
    ping.start()
    t = ClientThread(keys, 4, server.url, lab.profile.timeout * 2)
    peak = rss0
    for (n, times), tail in zip(frames, tails):
        for i in range(times):  # each with a fresh reply URL, each from a fresh peer
            push = lab.socket(zmq.PUSH)
            push.connect(server.url)
            push.send(P.batch_prefix(7 + i, free_url()) + tail)
            push.close(2000)
            peak = max(peak, proc.memory_info().rss)
        row.notes.append(f"{times} x {len(tail) / 1e6:.0f} MB ({n} keys)")
    del tails
    counts = t.finish(row, expected, "client during the frames")
    if counts:
        row.require(counts["ok"] == len(keys), f"{counts['ok']} of {len(keys)} ok")
    back = wait_until(lambda: proc.memory_info().rss < rss0 + 50 * 2**20, 10, 0.2)
    refused = wait_until(lambda: stats(server).get("refused_batches", 0) >= frames[1][1], 10)
    row.require(bool(refused), "the frames above the task limit were not all refused")
    done.set()
    ping.join(25)
    rss1 = proc.memory_info().rss
    s = stats(server)
    row.notes.append(f"server RSS {rss0 / 2**20:.0f} -> peak {peak / 2**20:.0f} -> "
                     f"{rss1 / 2**20:.0f} MiB; longest control round trip "
                     f"{1000 * max(rtts, default=0):.0f} ms; "
                     f"{s.get('refused_batches', 0)} refused, {s['unknown']} unknown answered, "
                     f"{s['dropped']} dropped")
    row.require(bool(back), f"server RSS {rss1 / 2**20:.0f} MiB, start {rss0 / 2**20:.0f}")
    row.require(s["unknown"] == 0, f"{s['unknown']} unknown tasks answered: a frame above "
                                   "the limits was read")


def frozen_worker_stolen_id(lab: Lab, row: Row) -> None:
    """A remote worker frozen 5 s; once the server has lost it, a peer connects with its old
    routing id (``host/pid/n``) and says READY (500 of 512 lost, the worker never rejoined):
    the worker rejoins and a run of 512 is all ok."""
    keys, expected, path = lab.data(lab.n(512, 64), 0.005)
    wurl = free_url()
    server = lab.server(path, 0, workers_url=wurl)
    host = lab.popen([sys.executable, "-m", "comlab.system.worker_host", wurl, "--workers", "2",
                      "--ready-json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                     env={**os.environ, "COMLAB_HOST": "remote-a"})
    info = json.loads(host.stdout.readline())
    if not wait_until(lambda: len(stats(server)["workers"]) >= 2, 15):
        row.problems.append("set-up: the worker host never joined")
        return
    victim = next(w for w in stats(server)["workers"] if w["name"] == info["workers"][0])
    lab.sigstop(victim["pid"])
    lost = wait_until(lambda: victim["name"] not in {w["name"] for w in stats(server)["workers"]},
                      10)
    row.require(bool(lost), "the frozen worker was never lost")
    peer = lab.socket(zmq.DEALER, routing_id=victim["name"].encode())
    peer.connect(wurl)
    peer.send(P.Ready("peer", "peer-host", 1).pack())
    time.sleep(max(0.0, 5.0 - 3.0))  # the fault itself: frozen 5 s in all (3 s to be lost)
    lab.sigcont(victim["pid"])
    back = wait_until(lambda: victim["name"] in {w["name"] for w in stats(server)["workers"]}, 10)
    row.require(bool(back), "the frozen worker never rejoined")
    counts = normal_run(lab, row, server, keys, expected)
    peer.close(0)
    if counts:
        row.notes.append("the worker rejoined; the peer joined as itself")


def reachable_plain_workers(lab: Lab, row: Row) -> None:
    """A --workers-url other hosts reach without CurveZMQ (a plain peer that joined took 94 %
    of the batches): the server refuses to start without --insecure; with per-host keys, a peer
    with no key or a withdrawn host key gets no work, and a run is all ok."""
    keys, expected, path = lab.data(32, 0.01)
    port = free_url().rsplit(":", 1)[1]
    out = subprocess.run([sys.executable, "-m", "comlab.run_server", path, free_url(), "", "1",
                          "--workers-url", f"tcp://0.0.0.0:{port}"], capture_output=True,
                         text=True, timeout=30)
    row.require(out.returncode == 2 and "--insecure" in out.stderr,
                f"a plain reachable worker endpoint was accepted (exit {out.returncode})")
    from comlab.system.security import Curve, create_host_keys, create_keys
    kdir = os.path.join(lab.dir, "keys")
    create_keys(kdir)
    for name in ("a", "b"):
        create_host_keys(kdir, name)
    os.remove(os.path.join(kdir, "authorized", "worker-b.key"))  # withdrawn
    wurl = free_url()
    server = lab.server(path, 1, workers_url=wurl, curve_keys=kdir)
    peer = FakeWorker(lab, wurl, "silent")  # no key at all
    for name in ("a", "b"):
        lab.popen([sys.executable, "-m", "comlab.system.worker_host", wurl, "--workers", "1",
                   "--curve-keys", kdir, "--host-key", name],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                  env={**os.environ, "COMLAB_HOST": f"host-{name}"})
    wait_until(lambda: len(stats(server)["workers"]) >= 2, 15)
    hosts = sorted(w["host"] for w in stats(server)["workers"])
    row.require("host-b" not in hosts and "peer-host" not in hosts,
                f"joined without a valid key: {hosts}")
    run = Client(keys, 2, f"tcp://{LOOPBACK}:*", server.url, timeout=lab.profile.timeout + 5,
                 security=Curve.load(kdir, "client")).run()
    counts = row.add(run, expected, "secure run", keys)
    row.require(counts["ok"] == len(keys), f"{counts['ok']} of {len(keys)} ok")
    row.notes.append(f"workers: {hosts}")
    peer.stop.set()
    peer.join(2)


SCENARIOS = {
    "worker-churn": worker_churn,
    "worker-churn/queue": lambda lab, row: worker_churn(lab, row, "queue"),
    "idle-kill": idle_kill("broker"),
    "idle-kill/queue": idle_kill("queue"),
    "sigstop-server-long": sigstop_server_long("broker"),
    "sigstop-server-long/queue": sigstop_server_long("queue"),
    "waved-batch": waved_batch,
    "huge-batch-size": huge_batch_size,
    "sigstop-server": sigstop_server,
    "sigstop-worker": sigstop_worker,
    "many-clients": many_clients,
    "batch-flood": batch_flood,
    "hostile/server-batch": hostile_server_batch,
    "hostile/server-worker": hostile_server_worker,
    "hostile/server-control": hostile_server_control,
    "hostile/client-results": hostile_client_results,
    "hostile/worker": hostile_to_worker,
    "departed-client/killed": departed_client("killed"),
    "departed-client/timeout": departed_client("timeout"),
    "peer/done-not-held": hostile_worker("done-not-held"),
    "peer/ready-while-holding": hostile_worker("ready-while-holding"),
    "peer/silent": hostile_worker("silent"),
    "peer/steal-routing-id": steal_routing_id,
    "peer/forged-results": hostile_worker("forged-results"),
    "peer/done-no-results": lying_peer("done-no-results"),
    "peer/done-no-results-secure": lying_peer("done-no-results", secure=True),
    "peer/answer-999": lying_peer("answer-999"),
    "peer/holders": lying_peer("hold", peers=20),
    "peer/unsolicited-pongs": unsolicited_pongs,
    "partition": partition,
    "hostile/control-frames": control_frames,
    "peer/hello-hijack": hello_hijack,
    "peer/hello-flood": hello_flood,
    "peer/huge-batches": huge_batches,
    "peer/frozen-worker-stolen-id": frozen_worker_stolen_id,
    "peer/reachable-plain-workers": reachable_plain_workers,
}


def run_scenario(name: str, profile: str = "quick", timeout: float | None = None) -> Row:
    """Run one scenario; kill what it left behind; its row."""
    os.environ.setdefault(MARK, uuid.uuid4().hex)
    prof = PROFILES[profile]
    row = Row(name)
    before = _ours()
    lab = Lab(prof)
    t0 = time.monotonic()
    try:
        with alarm(timeout or 4 * prof.timeout + 30):
            SCENARIOS[name](lab, row)
    except Exception as exc:  # a scenario that breaks is a FAIL with the reason, not a crash
        row.problems.append(f"{type(exc).__name__}: {str(exc)[:120]}")
    finally:
        lab.close()
    row.seconds = time.monotonic() - t0
    new = _ours() - before
    deadline = time.monotonic() + LEFT_GRACE_S
    while new and time.monotonic() < deadline:
        time.sleep(0.05)
        new = {p for p in new if _alive(p)}
    row.left = len(new)
    if new:
        row.problems.append(f"{len(new)} process(es) left behind")
        for p in new:
            with contextlib.suppress(psutil.Error):
                p.kill()
    return row


HEADER = ("scenario", "sent", "ok", "lost", "failed", "left", "s", "verdict")


def format_row(row: Row) -> str:
    cells = (row.scenario, row.sent, row.ok, row.lost, row.failed, row.left,
             f"{row.seconds:.1f}", row.verdict + (f": {row.reason}" if row.reason else ""))
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller runs (about a minute)")
    p.add_argument("--only", nargs="+", metavar="NAME", choices=list(SCENARIOS),
                   help="run only these scenarios")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    profile = "quick" if args.quick else "full"
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    rows = []
    for name in args.only or SCENARIOS:
        row = run_scenario(name, profile)
        rows.append(row)
        print(format_row(row), flush=True)
    passed = sum(r.verdict == "PASS" for r in rows)
    failed = sum(r.verdict == "FAIL" for r in rows)
    print(f"\n{passed} PASS, {failed} FAIL, {len(rows) - passed - failed} SKIP")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{**{k: getattr(r, k) for k in ("scenario", "sent", "ok", "lost",
                                                      "failed", "left", "seconds")},
                        "verdict": r.verdict, "reason": r.reason} for r in rows], f, indent=1)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
