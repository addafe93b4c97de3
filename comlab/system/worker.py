"""A worker process: asks the server for work, runs it with the named strategy, pushes results.

The worker holds one batch at a time: it announces itself (READY), and after each batch sends
its results straight to the client's URL, then DONE to the server, which is also its request for
the next batch (the ZeroMQ Guide's load-balancing pattern, so no batch waits behind a busy
worker). It never knows what it runs beyond the strategy spec in the work item.

It dies with its parent: PR_SET_PDEATHSIG where Linux offers it, and the parent's sentinel in
its poll set everywhere, so a SIGKILLed server leaves no worker behind.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from array import array as _array
from collections import OrderedDict, deque

import zmq

from . import protocol as P, strategies, takequeue, usertask
from .clients import ClientSockets
from .role import HOST, Role
from .strategies import Cache, lookup, now
from .timer import precise_sleeps

log = logging.getLogger("comlab.worker")

SERVER_TYPES = (P.Assign, P.Connect, P.Forget, P.Stop, P.Ping)
NOBLOCK = int(zmq.NOBLOCK)
RESULTS_MAX_TASKS = 65536  # results held back for one RESULTS message at most
CONNECT_WAIT_S = 2.0  # a queue worker waits at most this for a new client connection to be up


class Unit:
    """What a worker runs in one go: one batch, or several zero-wait batches of a WORK in a
    row (they take no time, so running them together changes no stamp's meaning). Its columns
    are bytes as they came (HEAD records, task ids, ENTRY records)."""

    __slots__ = ("run", "url", "strategy", "heads", "ids", "entries", "n", "zero", "batches",
                 "last_batch")

    def __init__(self, a: P.Assign, heads: bytes, ids: bytes, entries: bytes, n: int,
                 zero: bool, batches: int, last_batch: int) -> None:
        self.run, self.url, self.strategy = a.run, a.reply_url, a.strategy
        self.heads, self.ids, self.entries, self.n, self.zero = heads, ids, entries, n, zero
        self.batches, self.last_batch = batches, last_batch


def _inlines(spec: str) -> bool:
    try:
        return lookup(spec)[0].inline_zero_waits
    except ValueError:  # an unknown strategy: each batch fails on its own (run_unit)
        return False


def split(a: P.Assign) -> list[Unit]:
    """A WORK's units: all of it when every wait is 0, else a unit per batch."""
    one = P.check_one_batch(a)
    if one is not None:  # the common case at small batches: no numpy on the way
        head, waits = one
        return [Unit(a, a.heads, a.task_ids, a.entries, head[5], not any(waits), 1, head[0])]
    heads, entries = P.check_assign(a)
    if not len(heads):
        return []
    last = int(heads["batch_id"][-1])
    if not entries["wait"].any() and _inlines(a.strategy):
        return [Unit(a, a.heads, a.task_ids, a.entries, len(entries), True, len(heads), last)]
    units, lo = [], 0
    for i, (batch_id, n) in enumerate(zip(heads["batch_id"].tolist(), heads["n"].tolist())):
        e = entries[lo:lo + n]
        units.append(Unit(a, heads[i:i + 1].tobytes(), a.task_ids[8 * lo:8 * (lo + n)],
                          e.tobytes(), n, not e["wait"].any(), 1, batch_id))
        lo += n
    return units


class Outbox:
    """Results held back until the batches that finish together are done: one RESULTS per
    client run, sent at ``flush``."""

    def __init__(self, clients: ClientSockets, name: str) -> None:
        self.clients, self.name = clients, name
        self.key = None
        self.parts: list = []
        self.size = 0

    def add(self, u: Unit, statuses: bytes, responses: bytes, starts: bytes, ends: bytes,
            errors) -> None:
        if self.key != (u.run, u.url):
            self.flush()
            self.key = (u.run, u.url)
        self.parts.append((u.heads, u.ids, statuses, responses, starts, ends, errors, u.n))
        self.size += u.n

    def flush(self) -> None:
        if not self.parts:
            return
        parts, (run, url) = self.parts, self.key
        self.parts, self.size, self.key = [], 0, None
        if len(parts) == 1:
            heads, ids, st, rs, t0, t1, errors, _ = parts[0]
        else:
            heads, ids, st, rs, t0, t1 = (b"".join([p[i] for p in parts]) for i in range(6))
            errors = None
            if any(p[6] is not None for p in parts):
                errors = [e for p in parts for e in (p[6] if p[6] is not None else
                                                      [None] * p[7])]
        self.clients.send(url, P.Results(run, self.name, HOST, heads, ids, st, rs, t0, t1,
                                         errors).pack())


class Worker(Role):
    linger_ms = 1000  # results in flight at shutdown still get a chance to leave

    def __init__(self, server_url: str, name: str, *, ident: str | None = None,
                 watch_parent: bool = True, security=None, queue=None,
                 slot: int = 0, task=None) -> None:
        """``queue``/``slot``: the shared queue design (comlab.system.dispatch): batches come
        from ``queue`` (a comlab.system.takequeue.TakeQueue), where ``slot`` is this worker's.
        ``task``: the server's own task (comlab.system.usertask.make), run by every strategy."""
        super().__init__()
        self.server_url = server_url
        self.name = name
        self.ident = ident or name  # the routing id (local workers: name + a secret token)
        self.watch_parent = watch_parent
        self.security = security
        self.strategies = Cache(task)
        self.task = task
        self.queue, self.slot = queue, slot
        self.ended: OrderedDict[int, None] = OrderedDict()  # runs whose batches are skipped
        self.backlog: deque[Unit] = deque()                  # batches given, not yet run
        self.queued = 0                                      # ... how many batches that is

    def setup(self):
        # Results never block the worker: a client that takes none costs its own results.
        self.clients = ClientSockets(self, linger_ms=1000,
                                     on_open=self.on_open if self.queue is not None else None)
        self.opening: dict[str, zmq.Socket] = {}  # url -> handshake monitor (queue design)
        self.results = Outbox(self.clients, self.name)
        # Forked workers may connect before the server binds: retry after 10 ms (doubling to
        # 1 s), not libzmq's default 100 ms, which would be most of a pool's start-up.
        self.server = self.socket(zmq.DEALER, connect=None, routing_id=self.ident.encode(),
                                  curve_server=False, reconnect_ivl=10, reconnect_ivl_max=1000)
        # Each handshake after the first is a new connection (server restarted, network back):
        # say READY again, so a server that never met us takes us on.
        self.monitor = self.own(self.server.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED))
        self.handshakes = 0
        self.server.connect(self.server_url)
        self.ready = P.Ready(self.name, HOST, os.getpid()).pack()
        self.server.send(self.ready)
        self.poller = zmq.Poller()
        self.poller.register(self.server, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        parent = multiprocessing.parent_process() if self.watch_parent else None
        self.parent_fd = parent.sentinel if parent is not None else None
        if self.parent_fd is not None:
            self.poller.register(self.parent_fd, zmq.POLLIN)

    def loop(self):
        if self.queue is not None:
            return self.queue_loop()
        while True:
            events = dict(self.poller.poll(60_000 if len(self.clients) else None))
            if not self.on_events(events):
                return

    def on_events(self, events: dict) -> bool:
        """What both loops do with a poll's events; False when the worker should stop."""
        if self.parent_fd is not None and self.parent_fd in events:
            log.info("%s: parent gone, exiting", self.name)
            return False
        if self.server in events and not self.serve():
            return False
        if self.monitor in events:
            self.on_handshake()
        if not events:
            self.clients.expire()  # idle a minute: let go of clients that left silently
        return True

    def serve(self) -> bool:
        """Take every message the server has queued for us, then run the batches in order.
        DONE says "finished up to this batch": it is sent once at most one batch is left here,
        so the server tops us up while we run that one, and under load one DONE covers several
        batches (fewer messages at the server); False means stop. Results of batches that
        finish together (zero-wait batches in a row) leave in one RESULTS, always before the
        DONE that covers them."""
        backlog, recv, handle = self.backlog, self.server.recv, self.handle
        finished = None
        while True:
            while True:
                try:
                    frame = recv(NOBLOCK)
                except zmq.Again:
                    break
                if not handle(frame):
                    return False
            if not backlog:
                break
            unit = backlog.popleft()
            self.queued -= unit.batches
            if unit.run not in self.ended:  # queued before its client left: skipped
                self.run_unit(unit)
            finished = unit
            nxt = backlog[0] if backlog else None
            if nxt is None or not (nxt.zero and nxt.run == unit.run and nxt.url == unit.url) \
                    or self.results.size >= RESULTS_MAX_TASKS:
                self.results.flush()
            if self.queued <= 1:
                self.results.flush()
                self.server.send(P.Done(finished.run, finished.last_batch).pack())
                finished = None
        self.results.flush()
        if finished is not None:
            self.server.send(P.Done(finished.run, finished.last_batch).pack())
        return True

    def queue_loop(self):
        """The seed's design: take the next batch from the shared queue when free. The worker
        waits for the queue in its poll set, holding nothing (comlab.system.takequeue), so a
        worker killed or stopped while idle costs the others nothing, and it answers the server
        (CONNECT, FORGET, STOP, PING) at once."""
        q, slot, poller = self.queue, self.slot, self.poller
        poller.register(q.fileno(), zmq.POLLIN)
        ppid = os.getppid()
        alive = (lambda: os.getppid() == ppid)  # noqa: E731
        while True:
            events = dict(poller.poll(60_000 if len(self.clients) else None))
            if not self.on_events(events):
                return
            if q.fileno() not in events:
                continue
            try:
                item = q.take(slot, alive)
            except EOFError:
                return
            if item is None:
                continue  # another worker took it
            if item is takequeue.TORN:  # a worker died mid-take; the server repairs the queue
                time.sleep(0.01)
                continue
            _, frame = item
            try:
                units = split(P.Assign.decode(frame))
            except P.ProtocolError as exc:
                log.warning("%s: dropped a queued batch: %s", self.name, exc)
            else:
                for unit in units:
                    if unit.run not in self.ended:
                        self.run_unit(unit)
                self.results.flush()
                self.wait_connected()
            q.finish(slot)

    def on_open(self, url: str, sock: zmq.Socket) -> None:
        """A new socket to a client: watch for its handshake (before it connects)."""
        self.opening[url] = self.own(sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED))

    def wait_connected(self) -> None:
        """Results sent on a connection not yet up sit in its queue, and die with this worker:
        a queue worker says it is done with a batch only once they can leave (at most
        CONNECT_WAIT_S: a client that never answers has lost them anyway)."""
        for url in list(self.opening):
            mon = self.opening.pop(url)
            mon.poll(CONNECT_WAIT_S * 1000)
            sock = self.clients.socks.get(url)
            if sock is not None:
                sock.disable_monitor()  # before its end closes (see ClientSockets.release)
            self.close_socket(mon, 0)

    def on_handshake(self) -> None:
        while True:
            try:
                self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.handshakes += 1
            if self.handshakes > 1:
                log.info("%s: reconnected to %s: READY again", self.name, self.server_url)
                self.server.send(self.ready)

    def handle(self, frame: bytes) -> bool:
        """Act on one message from the server; False means stop."""
        try:
            msg = P.decode(frame, SERVER_TYPES)
        except P.ProtocolError as exc:
            log.warning("%s: dropped message from server: %s", self.name, exc)
            return True
        kind = type(msg)
        if kind is P.Assign:
            try:
                units = split(msg)
            except P.ProtocolError as exc:
                log.warning("%s: dropped a WORK from the server: %s", self.name, exc)
                return True
            self.backlog.extend(units)
            self.queued += sum(u.batches for u in units)
        elif kind is P.Connect:
            self.join(msg)
        elif kind is P.Forget:
            self.clients.release(msg.reply_url)
            self.ended[msg.run] = None
            if len(self.ended) > 1024:
                self.ended.popitem(last=False)
        elif kind is P.Stop:
            return False
        elif msg.nonce is not None:  # PING with a nonce: a clock sample; None: a probe
            self.server.send(P.Pong(msg.nonce, now()).pack())
        return True

    def run_unit(self, u: Unit) -> None:
        """Run a unit (one batch, or zero-wait batches in a row) and add its results."""
        n = u.n
        try:
            strategy = self.strategies.get(u.strategy)
            if u.zero and strategy.inline_zero_waits:
                stamps = strategy.inline_stamps(n)
                self.results.add(u, bytes(n), P.entry_responses(u.entries), stamps, stamps,
                                 None)
                return
            responses, waits = P.entry_lists(u.entries)
            statuses, outs, starts, ends, errors = strategy.run(responses, waits)
            # A task that failed still returns the response it was given: the batch's seal
            # covers every response (comlab.system.protocol.Seal).
            outs = _array("q", outs if errors is None else
                          [r if x is None else x for x, r in zip(outs, responses)])
        except Exception as exc:  # a broken strategy or work item fails its batch, not us
            t = now()
            statuses, outs, starts, ends = [P.FAILED] * n, \
                _array("q", P.entry_responses(u.entries)), [t] * n, [t] * n
            errors = [f"strategy {P.preview(u.strategy)}: {type(exc).__name__}: "
                      f"{P.preview(str(exc))}"] * n
        self.results.add(u, _array("b", statuses).tobytes(), outs.tobytes(),
                         _array("q", starts).tobytes(), _array("q", ends).tobytes(), errors)

    def join(self, c: P.Connect) -> None:
        """Connect to a new client and start the threads its batches will need, before its
        clock starts; then tell the server."""
        try:
            self.clients.get(c.reply_url)
            if c.strategy and c.warm:
                self.strategies.get(c.strategy).warm(c.warm)
        except Exception as exc:  # a failed warm-up only costs speed; the batch will tell
            log.warning("%s: joining %s failed: %s", self.name, P.preview(c.reply_url),
                        P.preview(str(exc)))
        self.server.send(P.Joined(c.reply_url).pack())

    def teardown(self):
        self.strategies.close()
        if self.task is not None:
            self.task.close()  # no command of ours outlives us


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def main(name: str, server_url: str, log_level: int = logging.WARNING, security=None, *,
         ident: str | None = None, threads: int | None = None, task: dict | None = None,
         entries: list | None = None, **queue) -> None:
    """Entry point of a worker process (a multiprocessing target: lives in the package);
    ``threads``: its share of the machine's threads (comlab.system.limits.thread_share);
    ``task``/``entries``: the server's own task and its map's entries (usertask), imported
    here, once: a worker that cannot import it exits (code 2) with one line naming it."""
    die_with_parent()
    if threads is not None:
        strategies.set_threads(threads)
    runner = None
    if task is not None:
        try:
            runner = usertask.make(task, entries or [], task.get("procs", 1))
        except ValueError as exc:
            print(f"comlab worker {name}: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
    precise_sleeps()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the server's
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    Worker(server_url, name, ident=ident, security=security, task=runner, **queue).run()
