"""The server: the poll loop and the routing between clients, workers and the lab.

Clients PUSH batches to its PULL socket; the intake (comlab.system.intake: runs, handshake,
look-up) answers tasks no worker can run and turns the rest of each batch into one work item
for the ledger (comlab.system.ledger: the pending queue, who holds what, retries, the dispatch
decision). Workers connect a DEALER to the server's ROUTER (READY, then DONE after each batch);
their side (comlab.system.workerside) sends them work and takes their messages and losses.
The local pool (comlab.system.pool) is running before the server reports ready; remote worker
hosts may join on ``workers_url`` at any time. Lost workers are noticed off the hot path
(comlab.system.liveness). Results go out through one socket per client
(comlab.system.clients). When ``pending`` is full the server stops reading its PULL socket and
ZeroMQ's high-water marks push back on the client. The lab's control socket
(comlab.system.control) reads the server's ``snapshot()``.

Each part is built in ``setup`` with what it needs (sockets, the ledger, callables); none holds
the server, and each mutable set has one owner (the ledger's ``silent`` workers, the client
sockets' ``fed`` URLs, the ack book's tracked runs): the others ask it.

Every peer message is checked (comlab.system.protocol) and costs its sender that message at
most: never the process, another client's tasks, or unbounded memory, threads or waiting.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time

import zmq

from .. import __version__
from . import dispatch as dispatch_mod, limits, protocol as P, strategies, usertask
from . import worker as worker_mod
from .clients import ClientSockets
from .control import Control
from .intake import Intake, Lookup
from .ledger import Ledger
from .liveness import Liveness
from .pool import Pool
from .role import HOST, Role, bind_or_explain
from .signals import WakeupPipe, ignored_signals
from .workerside import FailedBatches, Outbox, WorkerSide

log = logging.getLogger("comlab.server")
# Plain ints: pyzmq's enum flags cost an enum operation per call on the hot path.
NOBLOCK, RCVMORE = int(zmq.NOBLOCK), int(zmq.RCVMORE)

READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 0.5  # then busy workers are terminated: their clients are being stopped too
HEARTBEAT_IVL_MS = 1000      # ZMTP PINGs on every worker connection ...
HEARTBEAT_TIMEOUT_MS = 3000  # ... which is dropped after this long without traffic
# A batch held longer than factor x (its ideal time + OVERDUE_PER_TASK_S per task) + the slack:
# its worker is wedged. The per-task part is the harness's own cost, generously (a
# thread-per-task task costs ~0.1 ms of thread wake-ups and stamps on 2 cores), so a batch of
# 65,536 tasks running in waves is not taken for a wedged worker.
OVERDUE_SLACK_S = float(os.environ.get("COMLAB_OVERDUE_SLACK_S", 10.0))
OVERDUE_PER_TASK_S = 0.00025
REMOTE_OVERDUE_SLACK_S = 2.0  # ... for a remote worker (its batches are retried elsewhere, it
                              # gets no work until it answers again)
COUNTERS = ("batches", "tasks", "unknown", "unreachable", "dropped", "stale", "runs_ended",
            "retried", "failed", "worker_deaths", "workers_lost", "overdue", "refused",
            "refused_batches", "runs_reclaimed")


class ParentGone(Exception):
    """The watched fd (the lab's parent-alive pipe) closed while the server was starting."""


class Server(Role):
    linger_ms = 0

    def __init__(self, table: dict, bind_url: str, reply_url: str = "", max_workers: int = 1, *,
                 strategy: str = strategies.DEFAULT, networks=(), workers_url: str | None = None,
                 control_url: str | None = None, watch_fd: int | None = None,
                 on_ready=None, security=None, max_pending: int | None = None,
                 start_method: str = "forkserver", log_level: int = logging.WARNING,
                 dispatch: str = dispatch_mod.DEFAULT, insecure: bool = False,
                 task: dict | None = None) -> None:
        """``insecure``: accept plain-TCP worker peers on a ``workers_url`` other hosts can
        reach (else that needs ``security``: whoever connects there gets the clients' work).
        ``task``: the operator's own task (comlab.system.usertask.spec) instead of the
        emulated sleep; it runs on the local workers only."""
        super().__init__()
        if max_workers < 1 and not workers_url:
            raise ValueError("a server with no local workers needs --workers-url "
                             "(where remote worker hosts connect)")
        check_workers_url(workers_url, security, insecure)
        self.bind_url = bind_url
        self.max_workers = max_workers
        # Each local worker's share of the machine's threads (refused if the pool cannot fit):
        # set before the strategy is checked, since a thread pool must fit in it.
        self.threads = limits.check_server(max_workers)
        strategies.set_threads(self.threads)
        self.dispatch = dispatch_mod.check(dispatch)
        self.stats = dict.fromkeys(COUNTERS, 0)  # the parts' counters, in one dict
        self.task = usertask.for_server(task, workers_url)
        self.lookup = Lookup(table, networks, by_index=self.task is not None)
        self.task_kwargs = self.task and usertask.worker_kwargs(
            self.task, self.lookup.table, limits.command_share(max_workers))
        # The intake's, once it is built (setup): it owns the strategy from then on.
        self.first_strategy, self.reply_url = strategies.check(strategy), reply_url
        self.workers_url, self.control_url = workers_url, control_url
        self.watch_fd, self.on_ready, self.security = watch_fd, on_ready, security
        self.max_pending = max_pending or 2 * max(max_workers, 1) + 16
        self.start_method, self.log_level = start_method, log_level
        # Fork only from a process with one thread (run_server's): never from a notebook's.
        self.fork_first = ("fork" in multiprocessing.get_all_start_methods()
                           and threading.active_count() == 1)
        self.poller = None
        self.startup_s = None

    # -- setup ------------------------------------------------------------------------------
    def prepare(self):
        """Fork the initial pool now, while this process has no thread and no zmq context:
        fork is the fastest start (32 workers: ~0.1 s vs ~0.6 s through a forkserver) and safe
        only here. Replacements, started later from a threaded process, use the forkserver."""
        self._t0 = time.perf_counter()
        self.local_url, self._ipc_dir = local_endpoint()
        mp = multiprocessing.get_context(self.start_method)
        self.policy = dispatch_mod.make(self.dispatch, mp=mp, slots=self.max_workers + 4)
        self.poller = zmq.Poller()  # no context needed: it only lists what to poll
        # For reading only (register's default adds POLLOUT: always ready).
        self.watch = functools.partial(self.poller.register, flags=zmq.POLLIN)
        self.pool = Pool(worker_mod.main, (self.local_url, self.log_level, self.security),
                         start_method=self.start_method, watch=self.watch,
                         unwatch=self.poller.unregister,
                         kwargs_of=lambda ident: {**self.policy.local_pool_kwargs(ident),
                                                  "threads": self.threads,
                                                  **(self.task_kwargs or {})})
        if self.max_workers and self.fork_first:
            fork = multiprocessing.get_context("fork")
            for _ in range(self.max_workers):
                self.check_parent()  # a pool of thousands takes seconds: stop if the lab left
                self.pool.start(fork)

    def check_parent(self) -> None:
        """ParentGone if the watched fd has reached end of file (a poll, no wait)."""
        if self.watch_fd is None:
            return
        import select
        if select.select([self.watch_fd], [], [], 0)[0] and not os.read(self.watch_fd, 4096):
            raise ParentGone("parent gone (watched fd closed) while starting")

    def setup(self):
        self.pull = self.socket(zmq.PULL, bind=self.bind_url, curve_server=True,
                                maxmsgsize=P.MAX_BATCH_BYTES)
        self.bound_url = self.pull.getsockopt_string(zmq.LAST_ENDPOINT)
        self.router = self.socket(zmq.ROUTER, router_mandatory=1, curve_server=True,
                                  heartbeat_ivl=HEARTBEAT_IVL_MS,
                                  heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
                                  heartbeat_ttl=HEARTBEAT_TIMEOUT_MS)
        self.outbox = Outbox(self.router)  # what workers are sent
        self.monitor = self.own(self.router.get_monitor_socket(zmq.EVENT_DISCONNECTED))
        self.router.bind(self.local_url)
        if self.workers_url:
            bind_or_explain(self.router, self.workers_url)
        self.control = self.socket(zmq.REP, bind=self.control_url) if self.control_url else None
        watch = self.watch
        self.clients = ClientSockets(self, monitor=True, watch=watch,
                                     unwatch=self.poller.unregister)
        self.overdue_factor = 4.0 * max(1.0, self.max_workers / (os.cpu_count() or 1))
        self.ledger = Ledger(self.outbox.give, FailedBatches(self.clients, self.stats).fail,
                             policy=self.policy, local=self.pool.local,
                             max_pending=self.max_pending)
        self.liveness = Liveness(self.outbox.send)
        self.intake = Intake(self.lookup, self.first_strategy, self.stats, clients=self.clients,
                             ledger=self.ledger, send=self.outbox.send, info=self.info,
                             reply_url=self.reply_url)
        self.workers = WorkerSide(self.outbox, self.ledger, self.liveness, self.pool, self.stats,
                                  stop_waiting_for=self.intake.stop_waiting_for)
        self.on_control = Control(self.info, self.snapshot, self.intake, self.liveness).answer
        self.wakeup = WakeupPipe.open()
        self.signal_fd = self.wakeup.fd if self.wakeup is not None else None
        for sock in (self.router, self.pull, self.control, self.watch_fd, self.signal_fd):
            if sock is not None:
                watch(sock)
        self._pull_on, self._chores_due = True, 0.0
        if self.max_workers:
            while len(self.pool.procs) < self.max_workers:
                self.check_parent()
                self.pool.start()
            self.wait_for_workers(self.max_workers)
        watch(self.monitor)
        self.startup_s = time.perf_counter() - self._t0
        if self.on_ready is not None:
            self.on_ready(self.info())

    def info(self) -> dict:
        return {"version": __version__, "pid": os.getpid(), "host": HOST, "bind": self.bound_url,
                "workers_url": self.workers_url, "control": self.control_url,
                "workers": len(self.ledger.workers), "strategy": self.intake.strategy,
                "dispatch": self.dispatch, "threads_per_worker": self.threads,
                "startup_s": self.startup_s,  # with a task, clients seal task ids only:
                **({"task": usertask.describe(self.task)[:200]} if self.task else {})}

    def snapshot(self) -> dict:
        """What the server is doing, as plain data (comlab.system.control formats it)."""
        ledger, policy = self.ledger, self.policy
        local, idle = self.pool.idents(), set(ledger.idle)
        return {"counters": {**self.stats, **ledger.counts}, "dispatch": self.dispatch,
                "pending": len(ledger.pending), "queued": policy.queued(),
                "busy": ledger.busy() + policy.busy(), "idle": len(ledger.idle),
                "clients": len(self.clients), "client_drops": self.clients.dropped,
                "refused_pongs": self.liveness.refused_pongs,
                "workers": [{"ident": i, "name": w.name, "host": w.host, "pid": w.pid,
                             "local": i in local, "idle": i in idle}
                            for i, w in ledger.workers.items()],
                "quarantined_workers": list(ledger.quarantined.values())[-64:]}

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
                elif sock == self.watch_fd:
                    self.check_parent()
                elif sock is self.router:
                    self.workers.on_frame(*self.router.recv_multipart())
                elif sock in self.pool.procs:
                    proc = self.pool.procs[sock][0]
                    raise RuntimeError(f"worker {proc.name} exited with code {proc.exitcode} "
                                       "before it was ready")

    # -- loop --------------------------------------------------------------------------------
    def loop(self):
        router, pull, poll = self.router, self.pull, self.poller.poll
        outbox, flush = self.outbox, self.workers.flush
        while True:
            want_pull = not self.ledger.full
            if want_pull != self._pull_on:
                self.poller.modify(pull, zmq.POLLIN if want_pull else 0)
                self._pull_on = want_pull
            hot = False
            timeout = self.timeout_ms()  # its chores may give out work: sent before we sleep
            if outbox:
                flush()
            for sock, _ in poll(timeout):
                if sock is router or sock is pull:
                    hot = True
                elif not self.on_event(sock):
                    return
            if hot:
                self.pump()
            if outbox:
                flush()

    def pump(self, most: int = 4096) -> None:
        """Move messages while any wait on the worker and client sockets, with no poll between
        them (at batch 1 a poll costs more than the message); at most ``most`` before the
        other sockets are looked at again."""
        recv_worker, recv_client = self.router.recv, self.pull.recv
        more = self.router.getsockopt
        on_worker, on_client, ledger = self.workers.on_frame, self.intake.on_client_frame, \
            self.ledger
        outbox, flush = self.outbox, self.workers.flush
        moved = 0
        while moved < most:
            before = moved
            for _ in range(64):
                try:
                    ident = recv_worker(NOBLOCK)
                except zmq.Again:
                    break
                frame = recv_worker()  # a ROUTER message has the peer's frames after its id
                while more(RCVMORE):
                    recv_worker()      # frames beyond one: not a comlab message's
                    frame = b""
                on_worker(ident, frame)
                moved += 1
            for _ in range(64):
                if ledger.full:
                    break
                try:
                    frame = recv_client(NOBLOCK)
                except zmq.Again:
                    break
                on_client(frame)
                moved += 1
            if outbox:
                flush()  # what this round gave each worker, one message per worker
            if moved == before:
                return

    def on_event(self, sock) -> bool:
        """Everything but the hot sockets; False means stop."""
        if sock is self.control:
            self.control.send(self.on_control(*self.control.recv_multipart()))
        elif sock == self.signal_fd:
            self.wakeup.drain()
        elif sock == self.watch_fd:
            if not os.read(self.watch_fd, 4096):
                log.info("parent gone (watched fd closed): stopping")
                return False
        elif sock in self.pool.procs:
            self.workers.exited(sock)
        elif sock is self.monitor:
            self.workers.disconnected(self.monitor)
        elif sock in self.clients.monitors:
            url = self.clients.disconnected(sock)
            if url is not None:
                self.intake.end_run(url, "its connection closed")
        return True

    def timeout_ms(self) -> float | None:
        """Nothing to wait for: block. Else until the next HELLO deadline, probe, restart or
        the once-a-second chores (overdue batches, idle clients) while there are workers."""
        intake = self.intake
        waits = [intake.hello_timeout_ms() if intake.hellos or intake.deferred else None]
        if self.liveness.probes:
            probe_ms, lost = self.liveness.timeout_ms(lambda: list(self.ledger.workers))
            waits.append(probe_ms)
            for ident in lost:
                self.workers.lost(ident, "connection lost")
        if self.pool.restarts:
            restart = self.pool.restart_due()
            waits.append(None if restart is None else restart * 1000)
        if not self._pull_on and self.policy.queued():
            waits.append(1.0)  # takes from the shared queue are seen by reading its counters
        if self.ledger.workers:
            t = time.monotonic()
            if t >= self._chores_due:
                self._chores_due = t + 1.0
                self.chores()
            waits.append((self._chores_due - t) * 1000)
        waits = [w for w in waits if w is not None]
        return min(waits) if waits else None

    def chores(self) -> None:
        """Once a second: workers holding a batch far past its ideal time are lost (stopped or
        wedged); clients idle with nothing in flight are let go."""
        per_task = OVERDUE_PER_TASK_S + (self.task or {}).get("timeout", 0.0)
        self.workers.overdue(OVERDUE_SLACK_S, self.overdue_factor, REMOTE_OVERDUE_SLACK_S,
                             per_task)
        self.ledger.judge_unacked()  # DONEs whose results never reached the client
        if len(self.clients) > 8:
            self.intake.expire_clients()
        self.intake.expire_unconnected()
        if self.security is not None:
            try:
                if self.security.reload():
                    log.warning("authorized keys re-read: new connections see the new list")
            except Exception as exc:  # keep the list we have; say why once a second
                log.warning("could not re-read the authorized keys: %s", exc)

    # -- teardown --------------------------------------------------------------------------
    def teardown(self):
        with ignored_signals(signal.SIGINT, signal.SIGTERM):
            try:
                pool = getattr(self, "pool", None)
                if pool is not None:
                    # Local workers only: remote ones stay, reconnect and join the next server.
                    if getattr(self, "outbox", None) is not None:
                        for ident in pool.idents():
                            self.outbox.send(ident, P.STOP_FRAME)
                    pool.stop(STOP_GRACE_S)
                    self.policy.close()
            finally:
                if getattr(self, "_ipc_dir", None):
                    import shutil
                    shutil.rmtree(self._ipc_dir, ignore_errors=True)
                if getattr(self, "wakeup", None) is not None:
                    self.wakeup.close()
                    self.wakeup = None


def check_workers_url(url: str | None, security, insecure: bool) -> None:
    """ValueError for a worker endpoint other hosts can reach with neither CurveZMQ keys nor an
    explicit ``insecure``: any peer there could take work and answer for it."""
    from .security import is_local_url
    if url and security is None and not insecure and not is_local_url(url):
        raise ValueError(f"--workers-url {url} is reachable from other hosts: use CurveZMQ "
                         "(--curve-keys DIR, see comlab keys) or accept any peer as a worker "
                         "with --insecure")


def local_endpoint() -> tuple[str, str | None]:
    """The local pool's endpoint: Linux's abstract ipc namespace leaves no file behind even when
    the server is SIGKILLed; elsewhere a private directory (returned, for removal)."""
    if sys.platform.startswith("linux"):
        import secrets
        return f"ipc://@comlab-{os.getpid()}-{secrets.token_hex(6)}", None
    path = tempfile.mkdtemp(prefix="comlab-")
    return f"ipc://{path}/workers", path
