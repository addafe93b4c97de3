"""The server: takes batches from clients, looks every task up once, and hands batches to workers.

Clients PUSH batches to its PULL socket. Each task key ("ip:command") is looked up in one dict;
tasks it cannot run (unknown key, address outside ``networks``) are answered at once from here,
the rest become one work item. Work items wait in ``pending`` (the queue shared by all workers)
until a worker asks for one: workers connect a DEALER to the server's ROUTER and ask by sending
READY, then DONE after each batch (the Guide's load-balancing pattern), so the server always knows
which batch each worker holds. That is what lets it retry the batch of a worker that died (once;
a second loss marks its tasks failed). ``pending`` is bounded: when it is full the server stops
reading its PULL socket and ZeroMQ's high-water marks push back on the client.

The local pool is started (forkserver: fast and safe from a threaded parent) and ready before the
server reports ready, so start-up is never part of a measurement. Remote worker hosts may join on
``workers_url`` at any time. A remote worker that is gone (killed, host cut off) is noticed off
the hot path: ZMTP heartbeats end a silent connection, a socket monitor reports the disconnect,
and the server then probes its remote workers (PING): with ROUTER_MANDATORY the send to a
vanished peer fails, and its batch is retried like a dead local worker's.
"""

from __future__ import annotations

import ipaddress
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import OrderedDict, deque

import zmq

from .. import __version__
from . import protocol as P
from . import strategies
from .role import HOST, Role
from .signals import WakeupPipe, ignored_signals
from . import worker as worker_mod

log = logging.getLogger("comlab.server")
now = time.monotonic_ns

READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 0.5  # then busy workers are terminated: their clients are being stopped too
HEARTBEAT_IVL_MS = 1000      # ZMTP PINGs on every worker connection ...
HEARTBEAT_TIMEOUT_MS = 3000  # ... which is dropped after this long without traffic
PROBE_AGAIN_S = (0.05, 0.5)  # after a disconnect: probe now and again (the ROUTER may learn of
                             # the dead pipe a little after the monitor event arrives)
# Messages a worker may send, by type: how many fields (see comlab.protocol).
WORKER_MESSAGE_FIELDS = {P.READY: 5, P.DONE: 3, P.JOINED: 3, P.PONG: 4}
SHORT_QUEUE_S = 0.001  # a busy worker may hold more batches while they sum to <= 1 ms of waits
SHORT_QUEUE_MAX = 4    # ... and at most this many
HELLO_WAIT_S = 5.0  # a client is welcomed after this even if some worker never joined


class Server(Role):
    linger_ms = 0

    def __init__(self, table: dict, bind_url: str, reply_url: str = "", max_workers: int = 1, *,
                 strategy: str = strategies.DEFAULT, networks=(), workers_url: str | None = None,
                 control_url: str | None = None, watch_fd: int | None = None,
                 on_ready=None, security=None, max_pending: int | None = None,
                 start_method: str = "forkserver", log_level: int = logging.WARNING) -> None:
        super().__init__()
        self.table = table
        self.bind_url = bind_url
        self.reply_url = reply_url
        self.max_workers = max_workers
        self.strategy = strategies.check(strategy)
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.workers_url = workers_url
        self.control_url = control_url
        self.watch_fd = watch_fd
        self.on_ready = on_ready
        self.security = security
        self.max_pending = max_pending or 2 * max(max_workers, 1) + 16
        self.mp = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            self.mp.set_forkserver_preload(["comlab.system.worker"])
        # Fork only from a process with one thread (run_server's): never from a notebook's.
        self.fork_first = ("fork" in multiprocessing.get_all_start_methods()
                           and threading.active_count() == 1)
        self.poller = None
        self.log_level = log_level
        self.pending: deque[list] = deque()
        self.idle: deque[bytes] = deque()
        self.busy: dict[bytes, deque] = {}        # routing id -> (work, sum of waits), in order
        self.short: deque[bytes] = deque()         # busy workers that may queue one more
        self.workers: dict[bytes, dict] = {}      # routing id -> name, host, pid
        self.procs: dict[int, tuple] = {}         # sentinel fd -> (Process, routing id)
        self.clients: OrderedDict[str, zmq.Socket] = OrderedDict()
        self.ip_status: dict[str, int] = {}
        self.hellos: dict[str, tuple] = {}        # reply_url -> (workers not joined, deadline)
        if self.networks:
            # An address out of reach is unreachable even when the map knows it: drop such keys
            # from the table once, so the per-task look-up stays a single dict get.
            self.table = {k: v for k, v in table.items() if self.status_of(k) != P.UNREACHABLE}
        self.stats = dict.fromkeys(("batches", "tasks", "unknown", "unreachable", "dropped",
                                    "retried", "failed", "worker_deaths", "workers_lost"), 0)
        self._probes: list[float] = []  # monotonic times of the next remote-worker probes
        self.clocks: dict[str, dict] = {}     # remote host -> best clock sample (clock_workers)
        self._clock_left: dict[bytes, int] = {}
        self._next_worker = 0
        self.startup_s = None

    # -- setup ------------------------------------------------------------------------------
    def prepare(self):
        """Fork the initial pool now, while this process has no thread and no zmq context:
        fork is the fastest start (32 workers: ~0.1 s vs ~0.6 s through a forkserver) and safe
        only here. Replacements, started later from a threaded process, use the forkserver."""
        self._t0 = time.perf_counter()
        self.local_url, self._ipc_dir = local_endpoint()
        if self.max_workers and self.fork_first:
            fork = multiprocessing.get_context("fork")
            for _ in range(self.max_workers):
                self.start_worker(fork)

    def setup(self):
        t0 = self._t0
        self.pull = self.socket(zmq.PULL, bind=self.bind_url, curve_server=True)
        self.bound_url = self.pull.getsockopt_string(zmq.LAST_ENDPOINT)
        self.router = self.socket(zmq.ROUTER, router_mandatory=1, curve_server=True,
                                  heartbeat_ivl=HEARTBEAT_IVL_MS,
                                  heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
                                  heartbeat_ttl=HEARTBEAT_TIMEOUT_MS)
        # A lost connection (peer killed: at once; host cut off: after the heartbeat timeout)
        # shows here; the remote workers are then probed (local ones have sentinels).
        self.monitor = self.router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._sockets.append(self.monitor)
        self.router.bind(self.local_url)
        if self.workers_url:
            from .role import bind_or_explain
            bind_or_explain(self.router, self.workers_url)
        self.control = None
        if self.control_url:
            self.control = self.socket(zmq.REP, bind=self.control_url)
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.pull, zmq.POLLIN)
        self._pull_on = True
        if self.control is not None:
            self.poller.register(self.control, zmq.POLLIN)
        if self.watch_fd is not None:
            self.poller.register(self.watch_fd, zmq.POLLIN)
        self.wakeup = WakeupPipe.open()
        self.signal_fd = self.wakeup.fd if self.wakeup is not None else None
        if self.signal_fd is not None:
            self.poller.register(self.signal_fd, zmq.POLLIN)
        for sentinel in self.procs:
            self.poller.register(sentinel, zmq.POLLIN)
        if self.max_workers:
            while len(self.procs) < self.max_workers:
                self.start_worker()
            self.wait_for_workers(self.max_workers)
        self.poller.register(self.monitor, zmq.POLLIN)
        self.startup_s = time.perf_counter() - t0
        if self.on_ready is not None:
            self.on_ready(self.info())

    def info(self) -> dict:
        return {"version": __version__, "pid": os.getpid(), "host": HOST, "bind": self.bound_url,
                "workers_url": self.workers_url, "control": self.control_url,
                "workers": len(self.workers), "strategy": self.strategy,
                "startup_s": self.startup_s}

    def start_worker(self, mp=None) -> None:
        name = f"w{self._next_worker}"
        self._next_worker += 1
        proc = (mp or self.mp).Process(target=worker_mod.main, name=f"comlab-{name}",
                                       daemon=True, args=(self.local_url, name, self.log_level,
                                                          self.security))
        proc.start()
        self.procs[proc.sentinel] = (proc, name.encode())
        if self.poller is not None:
            self.poller.register(proc.sentinel, zmq.POLLIN)

    def wait_for_workers(self, n: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(self.workers) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"only {len(self.workers)} of {n} workers ready "
                                   f"after {READY_TIMEOUT_S:.0f} s")
            for sock, _ in self.poller.poll(left * 1000):
                if sock == self.signal_fd:
                    self.wakeup.drain()  # the handler (if it raises) has run by now
                elif sock is self.router:
                    self.on_worker_message(*self.router.recv_multipart())
                elif sock in self.procs:
                    proc, _ = self.procs[sock]
                    raise RuntimeError(f"worker {proc.name} exited with code {proc.exitcode} "
                                       "before it was ready")

    # -- loop --------------------------------------------------------------------------------
    def loop(self):
        router, pull, control = self.router, self.pull, self.control
        while True:
            want_pull = len(self.pending) < self.max_pending
            if want_pull != self._pull_on:
                self.poller.modify(pull, zmq.POLLIN if want_pull else 0)
                self._pull_on = want_pull
            timeout = self.hello_timeout_ms()
            if self._probes:
                timeout = self.probe_timeout_ms(timeout)
            for sock, _ in self.poller.poll(timeout):
                if sock is router:
                    self.drain(router, lambda: self.on_worker_message(*router.recv_multipart(
                        zmq.NOBLOCK)))
                elif sock is pull:
                    self.drain(pull, lambda: self.on_client_message(pull.recv(zmq.NOBLOCK)),
                               while_=lambda: len(self.pending) < self.max_pending)
                elif sock is control and control is not None:
                    control.send(P.pack(self.on_control(control.recv())))
                elif sock == self.signal_fd:
                    self.wakeup.drain()
                elif sock == self.watch_fd:
                    if not os.read(self.watch_fd, 4096):
                        log.info("parent gone (watched fd closed): stopping")
                        return
                elif sock in self.procs:
                    self.on_worker_exit(sock)
                elif sock is self.monitor:
                    self.on_disconnect()

    @staticmethod
    def drain(sock, step, while_=lambda: True, most: int = 256) -> None:
        """Handle up to `most` queued messages per wake-up: fewer polls under load."""
        for _ in range(most):
            if not while_():
                return
            try:
                step()
            except zmq.Again:
                return

    # -- clients ---------------------------------------------------------------------------
    def on_client_message(self, frame: bytes) -> None:
        t_in = now()
        try:
            msg = P.unpack(frame)
            kind = msg[1]
            if kind == P.BATCH:
                self.on_batch(t_in, *P.check_batch(msg))
            elif kind == P.HELLO and len(msg) == 4 and isinstance(msg[2], str) \
                    and isinstance(msg[3], int):
                self.on_hello(msg[2] or self.reply_url, msg[3])
            else:
                raise P.ProtocolError(f"unexpected message type {kind!r} from a client")
        except (P.ProtocolError, TypeError) as exc:
            self.stats["dropped"] += 1
            log.warning("dropped a client message (%d bytes): %s", len(frame), exc)

    def on_hello(self, reply_url: str, warm: int) -> None:
        """Welcome a client once every idle worker has connected to it and warmed its threads,
        so neither connection set-up nor thread start-up lands inside the client's clock. Busy
        workers are told too, but not waited for."""
        self.client_socket(reply_url)  # a bad URL is dropped here, before a worker sees it
        waiting = set(self.idle)
        for ident in list(self.workers):
            self.to_worker(ident, P.connect(reply_url, self.strategy, min(warm, 4096)))
        waiting &= set(self.workers)
        if waiting:
            self.hellos[reply_url] = (waiting, time.monotonic() + HELLO_WAIT_S)
        else:
            self.welcome(reply_url)

    def welcome(self, reply_url: str) -> None:
        self.hellos.pop(reply_url, None)
        self.to_client(reply_url, P.welcome(self.info()))

    def hello_timeout_ms(self) -> float | None:
        """Poll timeout: none, unless a client waits for its WELCOME."""
        if not self.hellos:
            return None
        self.on_joined(None)
        if not self.hellos:
            return None
        return max(0.0, min(d for _, d in self.hellos.values()) - time.monotonic()) * 1000

    def on_joined(self, ident: bytes | None) -> None:
        """A worker finished a CONNECT (ident None: check deadlines only)."""
        t = time.monotonic()
        for url, (waiting, deadline) in list(self.hellos.items()):
            waiting.discard(ident)
            if not waiting or t >= deadline:
                self.welcome(url)

    def on_batch(self, t_in, batch_id, reply_url, t_sent, task_ids, keys) -> None:
        reply_url = reply_url or self.reply_url
        self.client_socket(reply_url)  # a bad URL is dropped here, before a worker sees it
        get = self.table.get
        entries = [get(k) for k in keys]
        if None in entries:
            entries = self.answer_misses(t_in, batch_id, reply_url, t_sent, task_ids, keys,
                                         entries)
            task_ids = [t for t, e in zip(task_ids, entries) if e is not None]
            entries = [e for e in entries if e is not None]
        self.stats["batches"] += 1
        self.stats["tasks"] += len(keys)
        if entries:
            self.dispatch([P.VERSION, P.WORK, batch_id, reply_url, self.strategy, t_sent, t_in,
                           now(), 0, task_ids, [e[0] for e in entries], [e[1] for e in entries]])

    def answer_misses(self, t_in, batch_id, reply_url, t_sent, task_ids, keys, entries) -> list:
        """Answer tasks no worker can run (unknown key, unreachable address) at once."""
        ids, statuses = [], []
        for tid, key, entry in zip(task_ids, keys, entries):
            if entry is None:
                if not isinstance(key, str):
                    raise P.ProtocolError(f"task key {key!r} is not a string")
                ids.append(tid)
                statuses.append(self.status_of(key))
        for status in statuses:
            self.stats[P.STATUS_NAMES[status]] += 1
        t = now()
        n = len(ids)
        self.to_client(reply_url, P.pack([
            P.VERSION, P.RESULTS, batch_id, "server", HOST, 0, t_sent, t_in, t, ids, statuses,
            [None] * n, [t] * n, [t] * n, None]))
        return entries

    def status_of(self, key: str) -> int:
        ip = key.partition(":")[0]
        status = self.ip_status.get(ip)
        if status is None:
            status = P.UNKNOWN
            if self.networks:
                try:
                    addr = ipaddress.ip_address(ip)
                    if not any(addr in net for net in self.networks):
                        status = P.UNREACHABLE
                except ValueError:
                    status = P.UNREACHABLE
            if len(self.ip_status) < 1_000_000:
                self.ip_status[ip] = status
        return status

    def client_socket(self, url: str) -> zmq.Socket:
        """The PUSH socket to a client's result URL, connected once and kept (a few).

        A URL libzmq refuses (or none at all: no reply URL and no server default, as in the
        lab) is the sender's error: ProtocolError, so the message naming it is dropped and
        counted. It used to raise ZMQError here, or in the worker it was passed on to, and
        kill the server (a worker would die twice on it; its failed answer then hit this)."""
        sock = self.clients.get(url)
        if sock is None:
            if not url:
                raise P.ProtocolError("no reply URL, and the server has no default one")
            sock = self.socket(zmq.PUSH, curve_server=False)
            try:
                sock.connect(url)
            except zmq.ZMQError as exc:
                self.close_socket(sock)
                raise P.ProtocolError(f"bad reply URL {url!r}: {exc.strerror}") from None
            self.clients[url] = sock
            if len(self.clients) > worker_mod.MAX_CLIENT_SOCKETS:
                self.close_socket(self.clients.popitem(last=False)[1])
        return sock

    def to_client(self, url: str, frame: bytes) -> None:
        sock = self.client_socket(url)
        try:
            sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self.stats["dropped"] += 1
            log.error("client %s is not taking results: one message dropped", url)

    # -- workers ---------------------------------------------------------------------------
    def dispatch(self, work: list) -> None:
        """An idle worker gets the batch; failing that, a worker whose queue holds less than
        SHORT_QUEUE_S of work; failing that, it waits in pending."""
        for candidates in (self.idle, self.short):
            while candidates:
                ident = candidates.popleft()
                if candidates is self.short and not self.takes_more(ident):
                    continue
                if self.give(ident, work):
                    return
        self.pending.append(work)

    def give(self, ident: bytes, work: list) -> bool:
        if not self.to_worker(ident, P.pack(work)):
            return False
        held = self.busy.get(ident)
        if held is None:
            held = self.busy[ident] = deque()
        held.append((work, sum(work[11])))
        if self.takes_more(ident):
            self.short.append(ident)
        return True

    def takes_more(self, ident: bytes) -> bool:
        """May this busy worker queue one more batch? Only behind less than SHORT_QUEUE_S of
        expected work (the sum of the waits it holds), so a batch is never stranded behind a
        slow one, while a worker on tiny batches never idles for the DONE -> WORK round trip."""
        held = self.busy.get(ident)
        return (held is not None and len(held) < SHORT_QUEUE_MAX
                and sum(s for _, s in held) <= SHORT_QUEUE_S)

    def to_worker(self, ident: bytes, frame: bytes) -> bool:
        try:
            self.router.send_multipart([ident, frame])
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the worker is gone
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.forget_worker(ident)
            return False

    def on_worker_message(self, ident: bytes, frame: bytes = b"", *rest) -> None:
        try:
            msg = P.unpack(frame)
            kind = msg[1]
            if len(msg) != WORKER_MESSAGE_FIELDS.get(kind, len(msg)):
                raise P.ProtocolError(f"{kind!r} message with {len(msg)} fields")
            if kind == P.READY and not all(isinstance(x, t) for x, t in
                                           zip(msg[2:], (str, str, int))):
                raise P.ProtocolError(f"malformed READY {msg!r:.80}")
        except (P.ProtocolError, TypeError) as exc:
            self.stats["dropped"] += 1
            log.warning("dropped a worker message from %r: %s", ident, exc)
            return
        if kind == P.DONE:
            if ident not in self.workers:  # a worker we forgot, or an earlier server's
                return                     # (it says READY when it reconnects)
            held = self.busy.get(ident)
            if held:
                held.popleft()  # a worker runs its batches in the order it got them
                if held:
                    if self.pending and self.takes_more(ident):
                        self.give(ident, self.pending.popleft())
                    return
                del self.busy[ident]
        elif kind == P.JOINED:
            self.on_joined(ident)
            return
        elif kind == P.PONG:
            self.on_pong(ident, msg)
            return
        elif kind == P.READY:
            if ident in self.workers:  # READY again: it reconnected
                if ident not in self.busy:
                    return             # idle (or about to be given work): nothing to change
                self.forget_worker(ident)  # it holds nothing: its batch was lost; retry it
            self.workers[ident] = {"name": msg[2], "host": msg[3], "pid": msg[4]}
        else:
            self.stats["dropped"] += 1
            log.warning("unexpected message type %r from worker %r", kind, ident)
            return
        if self.pending:
            work = self.pending.popleft()
            if not self.give(ident, work):
                self.pending.appendleft(work)
        else:
            self.idle.append(ident)

    def on_disconnect(self) -> None:
        """A worker connection ended: probe the remote workers now and twice more shortly."""
        while True:
            try:
                self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
        self.probe_workers()
        t = time.monotonic()
        self._probes = [t + d for d in PROBE_AGAIN_S]

    def probe_timeout_ms(self, timeout: float | None) -> float | None:
        """Run the probes that are due; the poll timeout that honours the next one."""
        t = time.monotonic()
        if self._probes[0] <= t:
            while self._probes and self._probes[0] <= t:
                self._probes.pop(0)
            self.probe_workers()
        if not self._probes:
            return timeout
        left = max(0.0, self._probes[0] - t) * 1000
        return left if timeout is None else min(timeout, left)

    def probe_workers(self) -> None:
        """PING (a probe the worker ignores) every remote worker: with ROUTER_MANDATORY a send
        to a vanished peer fails (EHOSTUNREACH), and forget_worker retries its batch."""
        local = {ident for _, ident in self.procs.values()}
        for ident in [i for i in self.workers if i not in local]:
            if not self.to_worker(ident, P.PROBE_MESSAGE):
                self.stats["workers_lost"] += 1
                log.warning("remote worker %s is gone (connection lost)",
                            ident.decode(errors="replace"))

    # -- clocks of remote worker hosts -------------------------------------------------------
    def clock_workers(self, samples: int) -> list:
        """Start a ping-pong of ``samples`` round trips with one worker of each remote host
        (an idle one if it has any); the results gather in ``self.clocks``. Returns the hosts."""
        self.clocks, self._clock_left = {}, {}
        local = {ident for _, ident in self.procs.values()}
        idle = set(self.idle)
        chosen: dict[str, bytes] = {}
        for ident, w in self.workers.items():
            if ident not in local and (w["host"] not in chosen or ident in idle):
                chosen[w["host"]] = ident
        for ident in chosen.values():
            self._clock_left[ident] = max(1, samples) - 1
            self.to_worker(ident, P.ping(now()))
        return sorted(chosen)

    def on_pong(self, ident: bytes, msg: list) -> None:
        """A clock sample: offset = worker clock - server clock at the midpoint; the one with
        the smallest round trip is kept (its error is at most half that round trip)."""
        t3 = now()
        t0, t_worker = msg[2], msg[3]
        worker = self.workers.get(ident)
        if worker is None or not isinstance(t0, int) or not isinstance(t_worker, int):
            return
        rtt = t3 - t0
        best = self.clocks.setdefault(worker["host"], {"offset_ns": 0, "rtt_ns": None,
                                                       "samples": 0})
        best["samples"] += 1
        if best["rtt_ns"] is None or rtt < best["rtt_ns"]:
            best["rtt_ns"], best["offset_ns"] = rtt, t_worker - (t0 + t3) // 2
        left = self._clock_left.get(ident, 0)
        if left > 0:
            self._clock_left[ident] = left - 1
            self.to_worker(ident, P.ping(now()))

    def on_worker_exit(self, sentinel: int) -> None:
        proc, ident = self.procs.pop(sentinel)
        self.poller.unregister(sentinel)
        proc.join(0)
        self.stats["worker_deaths"] += 1
        log.warning("worker %s (pid %s) exited with code %s; starting a replacement",
                    proc.name, proc.pid, proc.exitcode)
        self.forget_worker(ident)
        self.start_worker()

    def forget_worker(self, ident: bytes) -> None:
        """A worker is gone: retry its batch once, or answer its tasks as failed."""
        self.workers.pop(ident, None)
        if self.hellos:
            self.on_joined(ident)
        try:
            self.idle.remove(ident)
        except ValueError:
            pass
        held = self.busy.pop(ident, None)
        if held:
            name = ident.decode(errors="replace")
            for work, _ in reversed(held):
                self.lost_batch(work, name)
            while self.idle and self.pending:
                self.dispatch(self.pending.popleft())

    def lost_batch(self, work: list, name: str) -> None:
        """Retry a batch a vanished worker held, once; the second time its tasks fail."""
        if work[8] == 0:
            self.stats["retried"] += 1
            retry = list(work)
            retry[8] = 1
            log.warning("batch %s lost with worker %s: retrying it", work[2], name)
            self.pending.appendleft(retry)
        else:
            self.stats["failed"] += len(work[9])
            t = now()
            n = len(work[9])
            log.error("batch %s lost twice (last with worker %s): its tasks fail", work[2], name)
            self.to_client(work[3], P.pack([
                P.VERSION, P.RESULTS, work[2], name, HOST, work[8], work[5], work[6], work[7],
                work[9], [P.FAILED] * n, [None] * n, [t] * n, [t] * n,
                [f"worker {name} died running this batch (attempt {work[8] + 1})"] * n]))

    # -- control ---------------------------------------------------------------------------
    def on_control(self, frame: bytes) -> list:
        try:
            msg = P.unpack(frame)
            kind = msg[1]
            if kind == "ping":
                return [P.VERSION, "pong", self.info()]
            if kind == "strategy":
                self.strategy = strategies.check(msg[2])
                return [P.VERSION, "ok", self.strategy]
            if kind == "clock":
                return [P.VERSION, "clock", now()]
            if kind == "clock-workers":
                return [P.VERSION, "ok", self.clock_workers(int(msg[2]))]
            if kind == "worker-clocks":
                return [P.VERSION, "worker-clocks", self.clocks]
            if kind == "stats":
                return [P.VERSION, "stats", {**self.stats, "pending": len(self.pending),
                                             "busy": len(self.busy), "idle": len(self.idle),
                                             "workers": list(self.workers.values())}]
            raise P.ProtocolError(f"unknown control request {kind!r}")
        except (P.ProtocolError, ValueError, IndexError, TypeError) as exc:
            return [P.VERSION, "error", str(exc)]

    # -- teardown --------------------------------------------------------------------------
    def teardown(self):
        with ignored_signals(signal.SIGINT, signal.SIGTERM):
            try:
                # Local workers only: remote ones stay, reconnect and join the next server.
                for _, ident in list(self.procs.values()):
                    if getattr(self, "router", None) is None:  # setup failed before the bind
                        break
                    self.to_worker(ident, P.STOP_MESSAGE)
                stop_processes([p for p, _ in self.procs.values()], STOP_GRACE_S)
            finally:
                if getattr(self, "_ipc_dir", None):
                    shutil.rmtree(self._ipc_dir, ignore_errors=True)
                if getattr(self, "wakeup", None) is not None:
                    self.wakeup.close()
                    self.wakeup = None


def local_endpoint() -> tuple[str, str | None]:
    """The local pool's endpoint: Linux's abstract ipc namespace leaves no file behind even when
    the server is SIGKILLed; elsewhere a private directory (returned, for removal)."""
    if sys.platform.startswith("linux"):
        return f"ipc://@comlab-{os.getpid()}-{secrets.token_hex(6)}", None
    path = tempfile.mkdtemp(prefix="comlab-")
    return f"ipc://{path}/workers", path


def stop_processes(procs, grace_s: float, term_wait_s: float = 0.3) -> None:
    """Wait for processes to stop, then terminate, then kill: bounded, nothing survives."""
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + term_wait_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(1.0)
