"""Faults and bad input: nothing lost, nothing hangs, no orphans.

This module is the one index of every fault row. Rows already covered elsewhere are referenced,
not duplicated. Every test has a timeout; the autouse ``no_process_leak`` fixture (conftest)
fails any test that leaves a process behind, and tests about processes check them explicitly.

=============================================  ===================================================
fault or bad input                             test(s)
=============================================  ===================================================
unknown ip:command, alone in a batch or        test_system.py::test_unknown_tasks_answered_at_once
mixed in                                       (client CLI, alone and mixed);
                                               test_unknown_tasks_in_run_experiment (records,
                                               summarize's n_unknown)
malformed line in either data file             test_data.py (file:line and reason, lenient);
                                               test_cli_rejects_malformed_line,
                                               test_cli_lenient_skips_and_reports
empty commands file, or none valid             test_data.py::test_file_without_tasks_is_an_error;
                                               test_client_cli_without_tasks_fails_at_once,
                                               test_run_experiment_bad_data_starts_nothing
client with no server                          test_system.py::test_client_without_server_fails
server gone mid-run (SIGKILL)                  test_server_killed_mid_run (idle server:
                                               test_system.py::test_server_stop_leaves_nothing)
worker SIGKILLed mid-batch                     test_worker_killed_mid_batch_is_retried_once,
                                               test_worker_killed_twice_fails_that_batch_only
worker SIGKILLed idle, taking or just done;    test_worker_deaths.py (every dispatch design);
server SIGSTOPped past the heartbeat TTL;      test_takequeue.py (a reader killed holding the
worker churn                                   queue's lock, mid-frame, mid-header)
huge batches, huge batch size, threads         test_threads.py (waves, overdue rule, warm
                                               threads, a pool that cannot fit)
task raising inside a strategy                 test_system.py::test_strategy_on_server[faulty:2],
                                               test_strategies.py::test_raising_task_fails_alone;
                                               test_faulty_tasks_fail_and_the_worker_lives_on
garbage, truncated, wrong version to the       test_server_drops_bad_client_messages
server's socket                                (worker endpoint and control socket:
                                               test_server_drops_bad_worker_and_control_messages)
oversized message to the server's socket       test_server_survives_an_oversized_message (libzmq
                                               drops the peer; not counted: see README, Security)
garbage to the client's result socket          test_client_drops_garbage_results
port already in use                            test_system.py::test_server_port_in_use (server);
                                               test_client_port_in_use (client)
SIGINT / SIGTERM to the server                 test_system.py::test_server_stop_leaves_nothing
KeyboardInterrupt during run_experiment        test_lab.py::
                                               test_keyboard_interrupt_tears_everything_down
idle server and workers                        test_system.py::test_idle_server_uses_no_cpu
50,000 zero-wait tasks in one run              test_system.py::test_zero_wait_soak (the million:
                                               bench/soak.py, not a test)
"nothing lost" invariant (every run)           test_build_checks_accepted_results,
                                               test_overlap_or_foreign_id_breaks_the_invariant,
                                               test_summarize_counts_every_record
=============================================  ===================================================
"""

from __future__ import annotations

import contextlib
import json
import os
from array import array
import shutil
import signal
import socket
import struct

import msgpack
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

import comlab
import comlab.lab.experiment
from comlab import data
from comlab.lab import records
from comlab.system import protocol as P
from comlab.system.client import Client, ClientRun
from comlab.lab.processes import ServerProcess, workdir

from conftest import DISPATCH, descendants, wait_gone


# -- helpers -------------------------------------------------------------------------------------
def keys_of(client_file) -> list[str]:
    return [f"{ip}:{cmd}" for ip, cmd in data.read_commands(client_file)]


def wait_for(predicate, timeout: float, what: str):
    """Poll ``predicate`` every 10 ms until it is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.01)
    return value


@contextlib.contextmanager
def lab_server(map_file, workers: int = 1, **kwargs):
    """The lab's own server process (control socket: stats, strategy), always stopped."""
    wd = workdir()
    server = None
    try:
        server = ServerProcess(str(map_file), workers, wd, **kwargs)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(wd, ignore_errors=True)


class ClientThread(threading.Thread):
    """An in-process Client running in the background, so the test can act mid-run."""

    def __init__(self, keys, batch_size: int, server_url: str, timeout: float) -> None:
        super().__init__(daemon=True)
        self.client = Client(keys, batch_size, "tcp://127.0.0.1:*", server_url, timeout=timeout)
        self.run_result: ClientRun | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.run_result = self.client.run()
        except BaseException as exc:  # handed to the test by result()
            self.error = exc

    def started(self) -> bool:
        """The run's clock started (the handshake is done)."""
        result = getattr(self.client, "result", None)
        return bool(result is not None and result.t_start)

    def result(self, timeout: float) -> ClientRun:
        self.join(timeout)
        assert not self.is_alive(), f"the client did not end within {timeout:g} s"
        if self.error is not None:
            raise self.error
        return self.run_result


def cli(module: str, *args, timeout: float = 30.0) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, start_new_session=True)
    return proc, time.monotonic() - t0


def results_message(ids=(0,), statuses=None, *, run=0, batch_id=1000, token=0, n_fields=12,
                    **fields) -> list:
    """A RESULTS message of one batch as a plain list (``raw`` packs it); keyword fields
    replace the message's fields as they are on the wire (binary columns: bytes)."""
    ids = list(ids)
    n = len(ids)
    msg = P.results(run, "w9", "host", [(batch_id, 0, 1, 2, token, n)], ids,
                    [P.OK] * n if statuses is None else list(statuses), [1] * n, [4] * n,
                    [5] * n)._replace(**fields)
    return [P.VERSION, P.Results.KIND, *msg][:n_fields]


def raw(msg) -> bytes:
    """Any value as a frame, bypassing the named types (to send what a peer might)."""
    return msgpack.packb(msg, use_bin_type=True)


def status_names(cols) -> list[str]:
    return [P.STATUS_NAMES[s] for s in cols["status"]]


# -- unknown tasks through the lab ---------------------------------------------------------------
@pytest.mark.timeout(60)
def test_unknown_tasks_in_run_experiment(tmp_path):
    known = [f"10.0.0.{i}:foo" for i in range(1, 7)]
    unknown = ["10.9.0.1:foo", "10.0.0.1:nope", "10.9.0.2:bar", "10.9.0.3:foo",
               "10.9.0.4:foo", "10.9.0.5:foo"]
    # Batches of 4: known only, unknown only, then 2 known + 2 unknown. Batches of 1: all alone.
    commands = known[:4] + unknown[:4] + known[4:] + unknown[4:]
    smap = {f"10.0.0.{i}": {"foo": (i, 0.0)} for i in range(1, 7)}
    t0 = time.monotonic()
    df = comlab.run_experiment(batch_sizes=[1, 4], workers=[1], repeats=1, commands=commands,
                               server_map=smap, timeout=30.0, progress=False,
                               results_dir=tmp_path)
    assert time.monotonic() - t0 < 15, "a run waited for its timeout"
    for _, run in df.groupby("run"):
        status = dict(zip(run["ip"].astype(str) + ":" + run["command"].astype(str),
                          run["status"].astype(str)))
        assert {k: status[k] for k in unknown} == dict.fromkeys(unknown, "unknown")
        assert {k: status[k] for k in known} == dict.fromkeys(known, "ok")
        bad = run[run["status"] == "unknown"]
        assert bad["response"].isna().all() and bad["t_received"].notna().all()
        assert (bad["worker"].astype(str) == "server").all()
    s = comlab.summarize(df)
    assert s["n_tasks"].tolist() == [12, 12]
    assert s["n_unknown"].tolist() == [6, 6] and s["n_ok"].tolist() == [6, 6]
    assert (s["n_lost"] == 0).all() and (s["n_failed"] == 0).all()


# -- bad data files at the command line ----------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("role", ["client", "server"])
def test_cli_rejects_malformed_line(role, tmp_path, free_url):
    if role == "client":
        path = tmp_path / "commands.txt"
        path.write_text("# tasks\n10.0.0.1:foo\n10.0.0.300:foo\n10.0.0.2:foo\n")
        proc, wall = cli("comlab.run_client", path, 2, free_url(), free_url(), "--timeout", 30)
        line, reason = 3, "bad IPv4 address '10.0.0.300'"
    else:
        path = tmp_path / "map.txt"
        path.write_text("10.0.0.1:foo:1:0.5\n10.0.0.2:foo:one:0.5\n")
        proc, wall = cli("comlab.run_server", path, free_url(), "", 1, "--ready-json")
        line, reason = 2, "bad response 'one'"
    assert proc.returncode == 2, proc.stderr
    assert f"{path}:{line}: {reason}" in proc.stderr
    assert proc.stdout == ""  # no ready line, no sum: nothing started
    assert wall < 10


@pytest.mark.timeout(60)
def test_cli_lenient_skips_and_reports(tmp_path, server_proc, free_url):
    smap = tmp_path / "map.txt"
    smap.write_text("10.0.0.1:foo:2:0\nnot a line\n10.0.0.2:foo:3:0\n")
    server = server_proc(smap, 1, "--lenient")
    assert f"{smap}: skipped 1 bad line(s): 2" in server.stderr()

    commands = tmp_path / "commands.txt"
    commands.write_text("10.0.0.1:foo\n10.0.0.2:foo:extra\n10.0.0.2:foo\n10.0.0.1:foo\n")
    proc, _ = cli("comlab.run_client", commands, 2, free_url(), server.url, "--timeout", 30,
                  "--json", "--lenient")
    assert proc.returncode == 0, proc.stderr
    assert f"{commands}: skipped 1 bad line(s): 2" in proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert (summary["tasks"], summary["ok"], summary["sum"]) == (3, 3, 7), summary


# -- no tasks at all: refused before anything starts ---------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("text,lenient", [("", False), ("# only a comment\n\n", False),
                                          ("bad\n10.0.0.1\n", True)],
                         ids=["empty", "comments-only", "lenient-all-bad"])
def test_client_cli_without_tasks_fails_at_once(text, lenient, tmp_path, free_url):
    path = tmp_path / "commands.txt"
    path.write_text(text)
    with socket.socket() as holder:  # the bind URL is taken: binding would fail differently
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        bind = f"tcp://127.0.0.1:{holder.getsockname()[1]}"
        # No server either: connecting would wait for a handshake (up to 10 s).
        proc, wall = cli("comlab.run_client", path, 4, bind, free_url(), "--timeout", 30,
                         *(["--lenient"] if lenient else []))
    assert proc.returncode == 2
    assert f"error: {path}: no tasks" in proc.stderr, proc.stderr
    assert "in use" not in proc.stderr and "no server" not in proc.stderr
    assert proc.stdout == ""
    assert wall < 5


@pytest.mark.timeout(30)
def test_run_experiment_bad_data_starts_nothing(tmp_path, monkeypatch):
    def must_not_start(*args, **kwargs):
        raise AssertionError("a process was started for bad input")

    before = descendants()
    monkeypatch.setattr(comlab.lab.session, "ServerProcess", must_not_start)
    monkeypatch.setattr(comlab.lab.session, "AgentProcess", must_not_start)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    bad_map = tmp_path / "map.txt"
    bad_map.write_text("10.0.0.1:foo:1:0\n10.0.0.2:foo:1:-1\n")
    good_map = {"10.0.0.1": {"foo": (1, 0.0)}}
    cases = [
        (dict(commands=str(empty), server_map=good_map), f"{empty}: no tasks"),
        (dict(commands=[], server_map=good_map), "<list>: no tasks"),
        (dict(commands=["10.0.0.1:foo"], server_map=str(bad_map)), f"{bad_map}:2: "),
    ]
    for kwargs, message in cases:
        with pytest.raises(comlab.DataError) as info:
            comlab.run_experiment(batch_sizes=[1], workers=[1], repeats=1, progress=False,
                                  results_dir=tmp_path / "results", name="never", **kwargs)
        assert message in str(info.value)
    assert not (tmp_path / "results").exists()
    assert descendants() <= before


# -- a server killed mid-run ---------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("dispatch", DISPATCH)
def test_server_killed_mid_run(make_data, dispatch):
    client_file, server_file = make_data(n=8, wait=0.3)
    keys = keys_of(client_file)
    with lab_server(server_file, 2, dispatch=dispatch) as server:
        tree = psutil.Process(server.proc.pid).children(recursive=True)
        pids = {w["pid"] for w in server.control("stats")["workers"]}
        assert pids <= {p.pid for p in tree} and len(pids) == 2
        timeout = 3.0
        client = ClientThread(keys, 1, server.url, timeout=timeout)
        wait_for(lambda: client.started() and client.client.result.log.count, 10,
                 "the first result")
        server.proc.kill()
        left = wait_gone(tree, 2.0)
        assert not left, f"alive 2 s after the server's SIGKILL: {[p.pid for p in left]}"
        run = client.result(timeout + 10)
    cols = run.columns()
    elapsed = (time.monotonic_ns() - run.t_start) / 1e9
    assert elapsed >= timeout, "the client ended before its deadline"
    names = status_names(cols)
    assert names.count("ok") >= 1 and names.count("lost") >= 1
    assert names.count("ok") + names.count("lost") == len(keys), names
    lost = cols["status"] == P.LOST
    assert (cols["t_received"][lost] == -1).all() and (cols["t_sent"] >= 0).all()
    assert run.accepted == names.count("ok")
    assert run.summary()["lost"] == names.count("lost")


# -- workers killed mid-batch --------------------------------------------------------------------
def _worker_pid(server) -> int:
    (worker,) = server.control("stats")["workers"]
    return worker["pid"]


def _kill_when_busy(server, not_pid: int | None = None) -> int:
    """SIGKILL the (only) worker once it holds a batch; return its pid."""
    def busy_worker():
        stats = server.control("stats")
        if stats["busy"] < 1 or len(stats["workers"]) != 1:
            return None
        pid = stats["workers"][0]["pid"]
        return pid if pid != not_pid else None

    pid = wait_for(busy_worker, 10, "a worker inside a batch")
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dispatch", DISPATCH)
def test_worker_killed_mid_batch_is_retried_once(make_data, dispatch):
    client_file, server_file = make_data(n=6, wait=0.4)
    keys = keys_of(client_file)
    with lab_server(server_file, 1, dispatch=dispatch) as server:
        client = ClientThread(keys, 2, server.url, timeout=20)
        wait_for(client.started, 10, "the handshake")
        killed = _kill_when_busy(server)
        run = client.result(20)
        stats = server.control("stats")
        replacement = _worker_pid(server)
    assert wait_gone(_processes([killed]), 2) == []  # reaped by the server
    assert replacement != killed
    # Every batch the worker held is retried once: the one it ran, and with the adaptive
    # broker the one held ahead of it.
    held = 2 if dispatch == "broker" else 1
    assert (stats["worker_deaths"], stats["retried"], stats["failed"]) == (1, held, 0), stats
    cols = run.columns()
    assert status_names(cols) == ["ok"] * 6
    retried = np.flatnonzero(cols["attempt"] == 1)
    assert len(retried) == 2 * held and len(set(cols["batch_id"][retried])) == held
    assert {w.split("-")[0] for w in cols["worker"][retried]} == {"w1"}  # the replacement
    assert (cols["t_received"] - run.t_start < 20e9).all()
    assert run.duplicates == 0 and run.accepted == 6


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dispatch", DISPATCH)
def test_worker_killed_twice_fails_that_batch_only(make_data, dispatch):
    client_file, server_file = make_data(n=6, wait=0.4)
    keys = keys_of(client_file)
    with lab_server(server_file, 1, dispatch=dispatch) as server:
        client = ClientThread(keys, 2, server.url, timeout=20)
        wait_for(client.started, 10, "the handshake")
        # Kill whichever worker is busy until a batch has died twice: with the broker that is
        # the retried batch at once (retries go first); with the shared queue the retry waits
        # behind the batch already queued, which dies once first.
        killed = []
        for _ in range(5):
            killed.append(_kill_when_busy(server, not_pid=killed[-1] if killed else None))
            wait_for(lambda: server.control("stats")["worker_deaths"] == len(killed), 10,
                     "the death noticed")
            if server.control("stats")["failed"]:
                break
        run = client.result(20)
        stats = server.control("stats")
    assert stats["failed"] >= 2 and stats["retried"] >= 1, stats
    assert wait_gone(_processes(killed), 2) == []
    cols = run.columns()
    names = status_names(cols)
    failed = np.flatnonzero(cols["status"] == P.FAILED)
    # Only batches lost twice fail (with the adaptive broker, a worker may die holding two).
    assert len(failed) == stats["failed"] and len(failed) == 2 * len(set(cols["batch_id"][failed]))
    assert (cols["attempt"][failed] == 1).all()
    assert all("died running this batch" in e for e in cols["error"][failed])
    others = np.setdiff1d(np.arange(6), failed)
    assert (cols["status"][others] == P.OK).all() and (cols["attempt"][others] <= 1).all()
    assert (cols["t_received"] - run.t_start < 20e9).all(), "the run waited for its deadline"
    assert run.accepted == 6


def _processes(pids) -> list[psutil.Process]:
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    return procs


# -- a task raising inside a strategy ------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("dispatch", DISPATCH)
def test_faulty_tasks_fail_and_the_worker_lives_on(make_data, free_url, dispatch):
    client_file, server_file = make_data(n=8, wait=0.0)
    keys = keys_of(client_file)
    with lab_server(server_file, 1, strategy="faulty:2", dispatch=dispatch) as server:
        pid = _worker_pid(server)
        run = Client(keys, 4, free_url(), server.url, timeout=20).run()
        cols = run.columns()
        second = np.arange(8) % 2 == 1  # every 2nd task of each batch of 4
        assert (cols["status"][second] == P.FAILED).all()
        assert (cols["status"][~second] == P.OK).all()
        assert all(e.startswith("RuntimeError: injected fault") for e in cols["error"][second])
        assert run.accepted == 8

        server.control("strategy", "thread-per-task")
        again = Client(keys, 4, free_url(), server.url, timeout=20).run()
        assert status_names(again.columns()) == ["ok"] * 8
        stats = server.control("stats")
        assert stats["worker_deaths"] == 0 and _worker_pid(server) == pid


# -- bad messages to the server ------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_server_drops_bad_client_messages(make_data, free_url):
    client_file, server_file = make_data(n=8, wait=0.0)
    keys = keys_of(client_file)
    good = P.Batch(5, "tcp://127.0.0.1:9", 0, P.ids_bytes([0, 1]), keys[:2])
    fields = [P.VERSION, P.Batch.KIND, *good]
    bad = {
        "garbage bytes": b"\xc1 not msgpack at all",
        "random bytes": bytes(range(256)) * 4,
        "truncated": good.pack()[:-7],
        "empty frame": b"",
        "wrong version": raw([P.VERSION + 1] + fields[1:]),
        "not an array": raw({"B": 1}),
        "unknown type": raw([P.VERSION, "Z", 1]),
        "results to the server": raw(results_message()),
        "batch, 6 fields": raw(fields[:6]),
        "batch, ids and keys differ": raw(fields[:5] + [P.ids_bytes([0]), keys[:2]]),
        "batch, ids not int64": raw(fields[:5] + [b"\0" * 12, keys[:2]]),
        "batch, ids a list": raw(fields[:5] + [[0, 1], keys[:2]]),
        "batch, key not a string": good._replace(task_ids=P.ids_bytes([0]), keys=[12]).pack(),
        "batch, unhashable key": good._replace(task_ids=P.ids_bytes([0]), keys=[[1]]).pack(),
        "batch, nested 1,000 deep": raw(fields[:6] + [msgpack.unpackb(b"\x91" * 999 + b"\x01")]),
        "nested 1,000 deep": b"\x91" * 1000 + b"\x01",
        # Reply URLs libzmq refuses: these used to kill the server (or a worker, twice).
        "batch, no reply URL": good._replace(reply_url="").pack(),
        "batch, bad reply URL": good._replace(reply_url="no-such-url", run=6).pack(),
        "batch, bad reply URL, unknown task": P.Batch(7, "x://", 0, P.ids_bytes([0]),
                                                      ["10.9.9.9:zz"]).pack(),
        "hello, bad reply URL": P.Hello(8, "no-such-url", 0).pack(),
        "hello, no reply URL": P.Hello(9, "", 0).pack(),
    }
    with lab_server(server_file, 1) as server:
        pid = _worker_pid(server)
        ctx = zmq.Context()
        try:
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.connect(server.url)
            for frame in bad.values():
                push.send(frame)
            wait_for(lambda: server.control("stats")["dropped"] >= len(bad), 10,
                     "every bad message counted")
            push.close(0)
        finally:
            ctx.destroy(linger=0)  # closes the sockets too, even after a failure
        time.sleep(0.1)  # a crash caused by the last message would show by now
        assert server.proc.poll() is None, server.failure("the server died")
        stats = server.control("stats")
        assert stats["dropped"] == len(bad), stats
        assert (stats["batches"], stats["worker_deaths"]) == (0, 0), stats
        assert _worker_pid(server) == pid
        run = Client(keys, 4, free_url(), server.url, timeout=20).run()
        assert status_names(run.columns()) == ["ok"] * 8
        with open(server.log_path) as f:
            log = f.read()
    assert log.count("dropped a client message") == len(bad), log
    assert "Traceback" not in log, log


@pytest.mark.timeout(60)
def test_ack_after_its_run_ended_is_stale_not_hostile(make_data, free_url):
    """A client's last ACK can reach the server after its connection closed (the server then
    ended the run first): that ACK is counted stale, never logged as a hostile message."""
    client_file, server_file = make_data(n=8, wait=0.0)
    with lab_server(server_file, 1) as server:
        client = Client(keys_of(client_file), 4, free_url(), server.url, timeout=20)
        assert status_names(client.run().columns()) == ["ok"] * 8
        wait_for(lambda: server.control("stats")["runs_ended"] >= 1, 10, "the run ended")
        before = server.control("stats")
        late = P.Ack(client.run_id, client.reply_url, b"", b"", client.seal.ack_tag(b"", b""))
        ctx = zmq.Context()
        try:
            push = ctx.socket(zmq.PUSH)
            push.connect(server.url)
            push.send(late.pack())
            wait_for(lambda: server.control("stats")["stale"] > before["stale"], 10,
                     "the late ACK counted stale")
        finally:
            ctx.destroy(linger=0)
        assert server.control("stats")["dropped"] == before["dropped"]
        with open(server.log_path) as f:
            assert "dropped a client message" not in f.read()


@pytest.mark.timeout(60)
def test_server_drops_bad_worker_and_control_messages(make_data, free_url):
    """A peer on the worker endpoint or the control socket cannot crash the server either."""
    client_file, server_file = make_data(n=8, wait=0.0)
    workers_url = free_url()
    bad = [b"\xc1", raw([P.VERSION, "Y"]), raw([P.VERSION, "Y", 1, 2, 3]),
           raw([P.VERSION, "Y", "x", "h", "pid"]), raw([P.VERSION, "D"]),
           raw([P.VERSION, "J", 1, 2, 3]), raw([P.VERSION, "Z"]),
           b"\x91" * 1000 + b"\x01"]
    with lab_server(server_file, 1, workers_url=workers_url) as server:
        ctx = zmq.Context()
        try:
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(workers_url)
            for frame in bad:
                dealer.send(frame)
            wait_for(lambda: server.control("stats")["dropped"] >= len(bad), 10,
                     "every bad worker message counted")
        finally:
            ctx.destroy(linger=0)
        for request in (("strategy", 5), ("strategy", None), ("strategy",), ("nonsense",)):
            with pytest.raises(ValueError):
                server.control(*request)
        assert server.proc.poll() is None, server.failure("the server died")
        assert len(server.control("stats")["workers"]) == 1  # no phantom worker joined
        run = Client(keys_of(client_file), 4, free_url(), server.url, timeout=20).run()
        assert status_names(run.columns()) == ["ok"] * 8


def _oversized_batch() -> bytes:
    """A well-formed BATCH (one unknown task) just above MAX_MESSAGE_BYTES, built by hand:
    were it read, the server would answer it and count it."""
    head = raw([P.VERSION, P.Batch.KIND, 0, "tcp://127.0.0.1:9", 0, P.ids_bytes([0])])
    assert head[0] == 0x96  # fixarray of 6: make it 7 with a keys list of one str32
    key_len = P.MAX_MESSAGE_BYTES
    frame = b"\x97" + head[1:] + b"\x91\xdb" + struct.pack(">I", key_len) + b"x" * key_len
    assert len(frame) > P.MAX_MESSAGE_BYTES
    return frame


@pytest.mark.timeout(60)
def test_server_survives_an_oversized_message(make_data, free_url):
    client_file, server_file = make_data(n=8, wait=0.0)
    keys = keys_of(client_file)
    with lab_server(server_file, 1) as server:
        ctx = zmq.Context()
        try:
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            monitor = push.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            push.connect(server.url)
            push.send(_oversized_batch())
            # libzmq (ZMQ_MAXMSGSIZE on the server's sockets) reads the size, drops the peer.
            assert monitor.poll(10_000), "the server did not drop the oversized sender"
            assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
            push.disable_monitor()
            monitor.close(0)
            push.close(0)
        finally:
            ctx.destroy(linger=0)  # closes the sockets too, even after a failure
        assert server.proc.poll() is None, server.failure("the server died")
        stats = server.control("stats")
        assert (stats["batches"], stats["tasks"], stats["unknown"]) == (0, 0, 0), stats
        run = Client(keys, 4, free_url(), server.url, timeout=20).run()
        assert status_names(run.columns()) == ["ok"] * 8


# -- garbage to the client's result socket -------------------------------------------------------
@pytest.mark.timeout(60)
def test_client_drops_garbage_results(make_data):
    client_file, server_file = make_data(n=4, wait=0.5)
    keys = keys_of(client_file)
    real = raw(results_message())
    garbage = [
        b"\x00\x01 garbage",
        real[:-3],                                              # truncated
        raw([P.VERSION + 1] + results_message()[1:]),          # wrong version
        raw("not an array"),
        P.Joined("x").pack(),                                   # not RESULTS
        raw(results_message(n_fields=11)),
        b"\x91" * 1000 + b"\x01",                               # nested 1,000 deep
    ]
    # Well-formed for the run, but forged or broken: only the run's own client knows its id.
    # Each is batch 0's answer with its true token except for the one thing forged or broken:
    # that thing alone must be what makes the client refuse it.
    forged = [
        dict(ids=[0, 1], statuses=[P.OK]),                      # columns of unequal length
        dict(ids=[10**6]),                                      # a task never sent
        dict(ids=[-1]), dict(task_ids=b"a"),                    # ... not an int64 column
        dict(ids=[2]),                                          # a task of another batch
        dict(statuses=[9]),                                     # no such status
        dict(statuses=[P.LOST]),                                # only the client says lost
        dict(heads=b"\x01" * 47),                               # not a whole HEAD
        dict(errors="boom"), dict(errors=[5]), dict(responses=b"\0" * 9),
        dict(token=12345),                                      # not the batch's token
        dict(batch_id=1),                                       # ... nor this batch's
    ]
    with lab_server(server_file, 1) as server:
        client = ClientThread(keys, 2, server.url, timeout=20)
        wait_for(client.started, 10, "the handshake")
        ctx = zmq.Context()
        try:
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.connect(client.client.reply_url)
            for frame in garbage:
                push.send(frame)
            token = P.batch_token(client.client.secret, 0)
            for changes in forged:
                push.send(raw(results_message(**{"run": client.client.run_id, "batch_id": 0,
                                                 "token": token, **changes})))
            push.send(raw(results_message(run=client.client.run_id + 1)))  # another run's
            # The run lasts >= 1 s (2 batches of 0.5 s, 1 worker): the garbage lands inside it.
            wait_for(lambda: client.client.result.garbage >= len(garbage) + len(forged), 5,
                     "the garbage counted")
            push.close(0)
        finally:
            ctx.destroy(linger=0)  # closes the sockets too, even after a failure
        run = client.result(20)
    assert run.garbage == len(garbage) + len(forged) and run.duplicates == 0
    assert run.stale == 1
    cols = run.columns()
    assert status_names(cols) == ["ok"] * 4 and run.accepted == 4
    records.build(cols, run.t_start, keys=keys, waits=np.full(4, 0.5), run_info={"run": 0},
                  accepted=run.accepted)


# -- ports ---------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_client_port_in_use(make_data, free_url):
    client_file, _ = make_data(n=8)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        bind = f"tcp://127.0.0.1:{holder.getsockname()[1]}"
        proc, wall = cli("comlab.run_client", client_file, 4, bind, free_url(), "--timeout", 30)
    assert proc.returncode == 2
    assert f"address already in use: {bind}" in proc.stderr, proc.stderr
    assert "sum of responses" not in proc.stdout
    assert wall < 10


# -- the "nothing lost" invariant ----------------------------------------------------------------
def _client_run(n: int, batch_size: int, messages: list, accepted: int) -> ClientRun:
    run = ClientRun(n, batch_size, "tcp://127.0.0.1:9")
    run.t_start = 1
    run.t_sent = array("q", [1] * -(-n // batch_size))
    for m in messages:
        run.log.append(raw(m), 6)
    run.accepted = accepted
    return run


def _build(run: ClientRun, columns=None):
    return records.build(run.columns() if columns is None else columns, run.t_start,
                         keys=[f"10.0.0.{i}:foo" for i in range(run.n_tasks)], waits=np.zeros(run.n_tasks), run_info={"run": 7},
                         accepted=run.accepted)


def test_build_checks_accepted_results():
    run = _client_run(4, 2, [results_message([0, 1], batch_id=0),
                             results_message([2], batch_id=1)], accepted=3)
    df = _build(run)
    assert df["status"].astype(str).tolist() == ["ok", "ok", "ok", "lost"]

    cols = run.columns()
    cols["status"][3] = P.FAILED  # a final status with no accepted result behind it
    with pytest.raises(records.InvariantError, match=r"run 7: the client accepted 3 task "
                                                     r"results but 4 of 4 tasks"):
        _build(run, cols)
    cols["status"][3] = 9
    with pytest.raises(records.InvariantError, match="status codes"):
        _build(run, cols)
    cols = run.columns()
    with pytest.raises(records.InvariantError, match="3 records for 4 tasks"):
        _build(run, {k: v[:3] for k, v in cols.items()})
    run.accepted = 2  # a result counted but never placed
    with pytest.raises(records.InvariantError, match="accepted 2 task results but 3 of 4"):
        _build(run)


@pytest.mark.parametrize("second", [
    pytest.param(dict(ids=[1, 2], batch_id=9), id="partial-overlap"),
    pytest.param(dict(ids=[2, 4], batch_id=1), id="id-out-of-range"),
    pytest.param(dict(ids=[2, -1], batch_id=1), id="negative-id"),
])
def test_overlap_or_foreign_id_breaks_the_invariant(second):
    first = results_message([0, 1], batch_id=0)
    run = _client_run(4, 2, [first, results_message(**second)], accepted=4)
    cols = run.columns()  # never an IndexError: what cannot be placed is left out
    assert (cols["status"] != P.LOST).sum() == 3
    with pytest.raises(records.InvariantError, match="accepted 4 task results but 3 of 4"):
        _build(run)


def test_summarize_counts_every_record():
    run = _client_run(2, 1, [results_message([0], batch_id=0),
                             results_message([1], batch_id=1)], accepted=2)
    df = _build(run).assign(batch_size=1, workers=1, strategy="sequential", transport="tcp")
    assert comlab.summarize(df).loc[0, ["n_tasks", "n_ok"]].tolist() == [2, 2]
    df.loc[1, "status"] = np.nan  # e.g. a code outside the categories
    with pytest.raises(records.InvariantError, match="1 of 2 records have no known status"):
        comlab.summarize(df)
