"""The server: the poll loop and the routing between clients, workers and the lab.

Clients PUSH batches to its PULL socket. Each task key ("ip:command") is looked up in one dict;
tasks it cannot run (unknown key, address outside ``networks``) are answered at once from here,
the rest become one work item for the ledger (comlab.system.ledger: the pending queue, who holds
what, retries, the dispatch decision). Workers connect a DEALER to the server's ROUTER (READY,
then DONE after each batch). The local pool (comlab.system.pool) is running before the server
reports ready; remote worker hosts may join on ``workers_url`` at any time. Lost workers are
noticed off the hot path (comlab.system.liveness). Results go out through one socket per client
(comlab.system.clients). When ``pending`` is full the server stops reading its PULL socket and
ZeroMQ's high-water marks push back on the client.

Runs: every batch names its client's run. A new HELLO on a result URL ends the previous run
there; BYE ends it; so does the client's connection going away. A run that ended has its queued
batches dropped (counted in ``stats``, logged) and its late batches refused as stale.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections import OrderedDict

import zmq

from .. import __version__
from . import protocol as P, strategies
from . import worker as worker_mod
from .clients import ClientSockets, TooManyClients
from .ledger import Ledger
from .liveness import Liveness
from .pool import Pool
from .role import HOST, Role, bind_or_explain
from .signals import WakeupPipe, ignored_signals

log = logging.getLogger("comlab.server")
now = time.monotonic_ns

READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 0.5  # then busy workers are terminated: their clients are being stopped too
HEARTBEAT_IVL_MS = 1000      # ZMTP PINGs on every worker connection ...
HEARTBEAT_TIMEOUT_MS = 3000  # ... which is dropped after this long without traffic
HELLO_WAIT_S = 5.0  # a client is welcomed after this even if some worker never joined
MAX_WARM = 1024     # threads a HELLO may ask each worker to start
OVERDUE_SLACK_S = 10.0  # a batch held longer than factor x its ideal time + this: worker wedged
ENDED_RUNS_KEPT = 4096
COUNTERS = ("batches", "tasks", "unknown", "unreachable", "dropped", "stale", "runs_ended",
            "retried", "failed", "worker_deaths", "workers_lost", "overdue", "refused")
CLIENT_TYPES = (P.Batch, P.Hello, P.Bye)
WORKER_TYPES = (P.Done, P.Ready, P.Joined, P.Pong)


class Server(Role):
    linger_ms = 0

    def __init__(self, table: dict, bind_url: str, reply_url: str = "", max_workers: int = 1, *,
                 strategy: str = strategies.DEFAULT, networks=(), workers_url: str | None = None,
                 control_url: str | None = None, watch_fd: int | None = None,
                 on_ready=None, security=None, max_pending: int | None = None,
                 start_method: str = "forkserver", log_level: int = logging.WARNING) -> None:
        super().__init__()
        if max_workers < 1 and not workers_url:
            raise ValueError("a server with no local workers needs --workers-url "
                             "(where remote worker hosts connect)")
        self.table = table
        self.bind_url, self.reply_url = bind_url, reply_url
        self.max_workers = max_workers
        self.strategy = strategies.check(strategy)
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.workers_url, self.control_url = workers_url, control_url
        self.watch_fd, self.on_ready, self.security = watch_fd, on_ready, security
        self.max_pending = max_pending or 2 * max(max_workers, 1) + 16
        self.start_method, self.log_level = start_method, log_level
        # Fork only from a process with one thread (run_server's): never from a notebook's.
        self.fork_first = ("fork" in __import__("multiprocessing").get_all_start_methods()
                           and threading.active_count() == 1)
        self.poller = None
        self.ip_status: dict[str, int] = {}
        if self.networks:
            # An address out of reach is unreachable even when the map knows it: drop such keys
            # from the table once, so the per-task look-up stays a single dict get.
            self.table = {k: v for k, v in table.items() if self.status_of(k) != P.UNREACHABLE}
        self.stats = dict.fromkeys(COUNTERS, 0)
        self.runs: dict[str, int] = {}                 # reply URL -> its current run
        self.ended: OrderedDict[int, None] = OrderedDict()
        self.hellos: dict[str, tuple] = {}             # reply URL -> (workers not joined, deadline)
        self.silent: set[bytes] = set()                # workers that never answered a CONNECT
        self.startup_s = None

    # -- setup ------------------------------------------------------------------------------
    def prepare(self):
        """Fork the initial pool now, while this process has no thread and no zmq context:
        fork is the fastest start (32 workers: ~0.1 s vs ~0.6 s through a forkserver) and safe
        only here. Replacements, started later from a threaded process, use the forkserver."""
        self._t0 = time.perf_counter()
        self.local_url, self._ipc_dir = local_endpoint()
        self.pool = Pool(worker_mod.main, (self.local_url, self.log_level, self.security),
                         start_method=self.start_method)
        if self.max_workers and self.fork_first:
            fork = __import__("multiprocessing").get_context("fork")
            for _ in range(self.max_workers):
                self.pool.start(fork)

    def setup(self):
        self.pull = self.socket(zmq.PULL, bind=self.bind_url, curve_server=True)
        self.bound_url = self.pull.getsockopt_string(zmq.LAST_ENDPOINT)
        self.router = self.socket(zmq.ROUTER, router_mandatory=1, curve_server=True,
                                  heartbeat_ivl=HEARTBEAT_IVL_MS,
                                  heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
                                  heartbeat_ttl=HEARTBEAT_TIMEOUT_MS)
        self.monitor = self.own(self.router.get_monitor_socket(zmq.EVENT_DISCONNECTED))
        self.router.bind(self.local_url)
        if self.workers_url:
            bind_or_explain(self.router, self.workers_url)
        self.control = self.socket(zmq.REP, bind=self.control_url) if self.control_url else None
        self.poller = zmq.Poller()
        watch = lambda s: self.poller.register(s, zmq.POLLIN)  # noqa: E731
        self.pool.watch, self.pool.unwatch = watch, self.poller.unregister
        self.clients = ClientSockets(self, monitor=True, watch=watch,
                                     unwatch=self.poller.unregister)
        cpus = os.cpu_count() or 1
        self.overdue_factor = 4.0 * max(1.0, self.max_workers / cpus)
        self.ledger = Ledger(self.send_work, self.fail_work, strategies.cost,
                             max_pending=self.max_pending)
        self.liveness = Liveness(self.to_worker)
        for sock in (self.router, self.pull, self.control, self.watch_fd):
            if sock is not None:
                watch(sock)
        self._pull_on = True
        self.wakeup = WakeupPipe.open()
        self.signal_fd = self.wakeup.fd if self.wakeup is not None else None
        if self.signal_fd is not None:
            watch(self.signal_fd)
        for sentinel in self.pool.procs:
            watch(sentinel)
        if self.max_workers:
            while len(self.pool.procs) < self.max_workers:
                self.pool.start()
            self.wait_for_workers(self.max_workers)
        watch(self.monitor)
        self.startup_s = time.perf_counter() - self._t0
        if self.on_ready is not None:
            self.on_ready(self.info())

    def info(self) -> dict:
        return {"version": __version__, "pid": os.getpid(), "host": HOST, "bind": self.bound_url,
                "workers_url": self.workers_url, "control": self.control_url,
                "workers": len(self.ledger.workers), "strategy": self.strategy,
                "startup_s": self.startup_s}

    def wait_for_workers(self, n: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(self.ledger.workers) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"only {len(self.ledger.workers)} of {n} workers ready "
                                   f"after {READY_TIMEOUT_S:.0f} s")
            for sock, _ in self.poller.poll(left * 1000):
                if sock == self.signal_fd:
                    self.wakeup.drain()  # the handler (if it raises) has run by now
                elif sock is self.router:
                    self.on_worker_frame(*self.router.recv_multipart())
                elif sock in self.pool.procs:
                    proc = self.pool.procs[sock][0]
                    raise RuntimeError(f"worker {proc.name} exited with code {proc.exitcode} "
                                       "before it was ready")

    # -- loop --------------------------------------------------------------------------------
    def loop(self):
        router, pull, control, monitors = self.router, self.pull, self.control, \
            self.clients.monitors
        recv_worker, recv_client = router.recv_multipart, pull.recv
        on_worker, on_client = self.on_worker_frame, self.on_client_frame
        ledger, poll = self.ledger, self.poller.poll
        while True:
            want_pull = not ledger.full
            if want_pull != self._pull_on:
                self.poller.modify(pull, zmq.POLLIN if want_pull else 0)
                self._pull_on = want_pull
            for sock, _ in poll(self.timeout_ms()):
                if sock is router:
                    for _ in range(256):  # drain: fewer polls under load
                        try:
                            on_worker(*recv_worker(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                elif sock is pull:
                    for _ in range(256):
                        if ledger.full:
                            break
                        try:
                            on_client(recv_client(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                elif sock is control and control is not None:
                    control.send(self.on_control(control.recv()))
                elif sock == self.signal_fd:
                    self.wakeup.drain()
                elif sock == self.watch_fd:
                    if not os.read(self.watch_fd, 4096):
                        log.info("parent gone (watched fd closed): stopping")
                        return
                elif sock in self.pool.procs:
                    self.on_worker_exit(sock)
                elif sock is self.monitor:
                    self.on_worker_disconnect()
                elif sock in monitors:
                    url = self.clients.disconnected(sock)
                    if url is not None:
                        self.end_run(url, "its connection closed")

    def timeout_ms(self) -> float | None:
        """Nothing to wait for: block. Else until the next HELLO deadline, probe, restart or
        overdue check (at most a second while batches are out)."""
        waits = [self.hello_timeout_ms()]
        probe_ms, lost = self.liveness.timeout_ms(lambda: list(self.ledger.workers))
        waits.append(probe_ms)
        for ident in lost:
            self.lost_worker(ident, "connection lost")
        restart = self.pool.restart_due()
        waits.append(None if restart is None else restart * 1000)
        if self.ledger.busy():
            waits.append(1000.0)
            for ident in self.ledger.overdue(OVERDUE_SLACK_S, self.overdue_factor):
                self.stats["overdue"] += 1
                self.lost_worker(ident, "holding a batch far past its ideal time")
        if len(self.clients) > 8:
            self.expire_clients()
        waits = [w for w in waits if w is not None]
        return min(waits) if waits else None

    # -- clients ---------------------------------------------------------------------------
    def on_client_frame(self, frame: bytes) -> None:
        t_server_in = now()  # the t_server_in stamp (comlab.schema): before decoding
        try:
            msg = P.decode(frame, CLIENT_TYPES)
            if type(msg) is P.Batch:
                self.on_batch(t_server_in, P.check_batch(msg))
            elif type(msg) is P.Hello:
                self.on_hello(msg)
            else:
                self.on_bye(msg)
        except Exception as exc:  # a peer's message costs that peer its message, no more
            self.stats["dropped"] += 1
            log.warning("dropped a client message (%d bytes): %s", len(frame),
                        P.preview(str(exc)))

    def on_hello(self, h: P.Hello) -> None:
        """Welcome a client once every idle worker has connected to it and warmed its threads,
        so neither connection set-up nor thread start-up lands inside the client's clock. Busy
        workers are told too, but not waited for."""
        url = h.reply_url or self.reply_url
        try:
            self.clients.get(url)  # a bad URL is dropped here, before a worker sees it
        except TooManyClients as exc:
            self.stats["refused"] += 1
            self.refuse(url, h.run, str(exc))
            raise
        old = self.runs.get(url)
        if old is not None and old != h.run:
            self.end_run(url, "a new client said HELLO on its URL", keep_socket=True)
        self.runs[url] = h.run
        idle = set(self.ledger.idle) - self.silent
        connect = P.Connect(url, self.strategy, max(0, min(h.warm, MAX_WARM))).pack()
        for ident in list(self.ledger.workers):
            self.to_worker(ident, connect)
        waiting = idle & set(self.ledger.workers)
        if waiting:
            self.hellos[url] = (waiting, time.monotonic() + HELLO_WAIT_S)
        else:
            self.welcome(url)

    def refuse(self, url: str, run: int, why: str) -> None:
        """Answer a client there is no room for, on a socket of its own, closed at once."""
        sock = self.socket(zmq.PUSH, curve_server=False)
        try:
            sock.connect(url)
            sock.send(P.Welcome(run, {"refused": why}).pack(), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        finally:
            self.close_socket(sock, linger_ms=1000)

    def welcome(self, url: str) -> None:
        self.hellos.pop(url, None)
        self.clients.send(url, P.Welcome(self.runs.get(url, 0), self.info()).pack())

    def hello_timeout_ms(self) -> float | None:
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
            if waiting and t >= deadline:
                # Never joined: not waited for again until it shows life (any message).
                self.silent |= waiting
                log.warning("%d workers did not join client %s within %.0f s", len(waiting),
                            url, HELLO_WAIT_S)
            if not waiting or t >= deadline:
                self.welcome(url)

    def on_batch(self, t_server_in: int, b: P.Batch) -> None:
        url = b.reply_url or self.reply_url
        current = self.runs.get(url)
        if current != b.run:
            if current is not None or b.run in self.ended:
                self.stats["stale"] += 1  # a batch of a run that ended: its client is gone
                return
            self.clients.get(url)  # a client that never said HELLO: its first batch starts
            self.runs[url] = b.run  # the run (a bad URL is dropped here)
        get = self.table.get
        entries = [get(k) for k in b.keys]
        task_ids = b.task_ids
        if None in entries:
            entries = self.answer_misses(t_server_in, b, url, entries)
            task_ids = [t for t, e in zip(task_ids, entries) if e is not None]
            entries = [e for e in entries if e is not None]
        self.stats["batches"] += 1
        self.stats["tasks"] += len(b.keys)
        if entries:
            t_enqueued = now()  # the t_enqueued stamp (comlab.schema): the work item exists
            self.ledger.submit(P.Work(b.run, b.batch_id, url, self.strategy, b.t_sent,
                                      t_server_in, t_enqueued, 0, task_ids,
                                      [e[0] for e in entries], [e[1] for e in entries]))

    def answer_misses(self, t_server_in: int, b: P.Batch, url: str, entries: list) -> list:
        """Answer tasks no worker can run (unknown key, unreachable address) at once."""
        ids, statuses = [], []
        for tid, key, entry in zip(b.task_ids, b.keys, entries):
            if entry is None:
                if not isinstance(key, str):
                    raise P.ProtocolError(f"task key {P.preview(key)} is not a string")
                ids.append(tid)
                statuses.append(self.status_of(key))
        for status in statuses:
            self.stats[P.STATUS_NAMES[status]] += 1
        t = now()
        n = len(ids)
        self.clients.send(url, P.Results(b.run, b.batch_id, "server", HOST, 0, b.t_sent,
                                         t_server_in, t,
                                         ids, statuses, [None] * n, [t] * n, [t] * n,
                                         None).pack())
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
            if len(self.ip_status) < 100_000:
                self.ip_status[ip] = status
        return status

    def expire_clients(self) -> None:
        """Let go of clients idle for a minute with no work queued or running: a client that
        vanished without BYE and without a connection to lose (its URL never answered)."""
        active = {w.run for w in self.ledger.pending}
        active |= {h.work.run for w in self.ledger.workers.values() for h in w.held}
        busy = {url for url, run in self.runs.items() if run in active}
        for url in self.clients.expire(in_use=busy):
            self.end_run(url, "idle, nothing in flight")

    def on_bye(self, bye: P.Bye) -> None:
        url = bye.reply_url or self.reply_url
        if self.runs.get(url) == bye.run:
            self.end_run(url, None)

    def end_run(self, url: str, why: str | None, keep_socket: bool = False) -> None:
        """A client is done (why None) or gone: drop its queued work, let go of its sockets."""
        run = self.runs.pop(url, None)
        if run is None:
            return
        self.ended[run] = None
        if len(self.ended) > ENDED_RUNS_KEPT:
            self.ended.popitem(last=False)
        self.hellos.pop(url, None)
        dropped = self.ledger.drop_run(run)
        self.stats["runs_ended"] += 1
        (log.warning if dropped else log.info)(
            "client %s: run ended (%s); %d queued tasks dropped", url, why or "BYE", dropped)
        if not keep_socket:
            self.clients.release(url)
            forget = P.Forget(url).pack()
            for ident in list(self.ledger.workers):
                self.to_worker(ident, forget)

    # -- workers ---------------------------------------------------------------------------
    def to_worker(self, ident: bytes, frame: bytes) -> bool:
        """Send to a worker; False when its connection is gone (EHOSTUNREACH)."""
        try:
            self.router.send_multipart([ident, frame])
            return True
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            return False

    def send_work(self, ident: bytes, work: P.Work) -> bool:
        if self.to_worker(ident, work.pack()):
            return True
        self.pool.kill(ident)  # a local worker with no connection is stopped or wedged
        return False

    def fail_work(self, work: P.Work, name: str) -> None:
        """A batch lost twice: its tasks fail."""
        self.stats["failed"] += len(work.task_ids)
        log.error("batch %s lost twice (last with worker %s): its tasks fail", work.batch_id, name)
        t = now()
        n = len(work.task_ids)
        self.clients.send(work.reply_url, P.Results(
            work.run, work.batch_id, name, HOST, work.attempt, work.t_sent, work.t_server_in,
            work.t_enqueued, work.task_ids, [P.FAILED] * n, [None] * n, [t] * n, [t] * n,
            [f"worker {name} died running this batch (attempt {work.attempt + 1})"] * n).pack())

    def on_worker_frame(self, ident: bytes, frame: bytes = b"", *rest) -> None:
        try:
            msg = P.decode(frame, WORKER_TYPES)
        except P.ProtocolError as exc:
            self.stats["dropped"] += 1
            log.warning("dropped a worker message from %s: %s", P.preview(ident), exc)
            return
        if self.silent:
            self.silent.discard(ident)
        kind = type(msg)
        if kind is P.Done:
            self.ledger.done(ident, msg.run, msg.batch_id)
        elif kind is P.Ready:
            self.ledger.ready(ident, msg.name, msg.host, msg.pid,
                              local=ident in self.pool.idents())
        elif kind is P.Joined:
            if self.hellos:
                self.on_joined(ident)
        else:
            w = self.ledger.workers.get(ident)
            if w is not None:
                self.liveness.pong(ident, w.host, msg.t, msg.t_worker)

    def lost_worker(self, ident: bytes, why: str) -> None:
        w = self.ledger.workers.get(ident)
        if w is None:
            return
        self.stats["workers_lost"] += 1
        log.warning("worker %s is lost (%s): its batches are retried", w.name, why)
        self.pool.kill(ident)
        self.ledger.lose(ident)
        if self.hellos:
            self.on_joined(ident)

    def on_worker_exit(self, sentinel: int) -> None:
        _, ident = self.pool.exited(sentinel)
        self.stats["worker_deaths"] += 1
        self.ledger.lose(ident)
        if self.hellos:
            self.on_joined(ident)

    def on_worker_disconnect(self) -> None:
        """A worker connection ended (killed, stopped, cut off): probe every worker."""
        while True:
            try:
                self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
        for ident in self.liveness.disconnected(list(self.ledger.workers)):
            self.lost_worker(ident, "connection lost")

    # -- control ---------------------------------------------------------------------------
    def on_control(self, frame: bytes) -> bytes:
        try:
            req = P.decode(frame, (P.Control,))
            return P.ControlReply(req.op, self.control_answer(req.op, req.args)).pack()
        except Exception as exc:
            return P.ControlReply("error", P.preview(str(exc))).pack()

    def control_answer(self, op: str, args: list):
        if op == "ping":
            return self.info()
        if op == "strategy":
            self.strategy = strategies.check(args[0] if args else None)
            return self.strategy
        if op == "clock":
            return now()
        if op == "clock-workers":
            local = self.pool.idents()
            idle = set(self.ledger.idle)
            chosen: dict[str, bytes] = {}
            for ident, w in self.ledger.workers.items():
                if ident not in local and (w.host not in chosen or ident in idle):
                    chosen[w.host] = ident
            return self.liveness.sample_clocks(chosen, int(args[0]))
        if op == "worker-clocks":
            return self.liveness.clocks
        if op == "stats":
            ledger = self.ledger
            return {**self.stats, **ledger.counts, "pending": len(ledger.pending),
                    "busy": ledger.busy(), "idle": len(ledger.idle),
                    "clients": len(self.clients), "client_drops": self.clients.dropped,
                    "workers": [{"name": w.name, "host": w.host, "pid": w.pid}
                                for w in ledger.workers.values()]}
        raise P.ProtocolError(f"unknown control request {P.preview(op)}")

    # -- teardown --------------------------------------------------------------------------
    def teardown(self):
        with ignored_signals(signal.SIGINT, signal.SIGTERM):
            try:
                pool = getattr(self, "pool", None)
                if pool is not None:
                    # Local workers only: remote ones stay, reconnect and join the next server.
                    if getattr(self, "router", None) is not None:
                        for ident in pool.idents():
                            self.to_worker(ident, P.STOP_FRAME)
                    pool.stop(STOP_GRACE_S)
            finally:
                if getattr(self, "_ipc_dir", None):
                    import shutil
                    shutil.rmtree(self._ipc_dir, ignore_errors=True)
                if getattr(self, "wakeup", None) is not None:
                    self.wakeup.close()
                    self.wakeup = None


def local_endpoint() -> tuple[str, str | None]:
    """The local pool's endpoint: Linux's abstract ipc namespace leaves no file behind even when
    the server is SIGKILLed; elsewhere a private directory (returned, for removal)."""
    if sys.platform.startswith("linux"):
        import secrets
        return f"ipc://@comlab-{os.getpid()}-{secrets.token_hex(6)}", None
    path = tempfile.mkdtemp(prefix="comlab-")
    return f"ipc://{path}/workers", path
