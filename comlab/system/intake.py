"""The clients' side of the server: runs per result URL, the HELLO handshake, the look-up.

Each task key ("ip:command") is looked up in one dict (``Lookup``, built with the server);
tasks no worker can run (unknown key, address outside ``networks``) are answered at once from
here, the rest of a batch becomes one work item for the ledger. A result URL has one current run, ended by BYE, the client's connection
going away, or a minute idle with nothing in flight. A HELLO of another run on that URL ends it
only if its client is gone: while the server's socket to the URL is connected, the HELLO waits
``HANDOVER_WAIT_S`` for it to leave, then is refused (no peer can end another's run by naming
its URL). A run starts once the server's socket reaches its URL (workers are told only then), and
is ended when nobody listens there within ``CONNECT_WAIT_S``; when client sockets run short,
runs whose URL never connected, then runs that never sent a batch, give theirs up first
(comlab.system.clients): a flood of HELLOs costs the flood.

A BATCH above ``protocol.MAX_BATCH_TASKS`` tasks (or ``MAX_BATCH_BYTES``) is refused before a key
is read: its head is peeked (``peek_batch``) and its client, if it said HELLO, gets a WELCOME
``{"refused": why, "batch", "token"}`` (the token proves the server sent it).
A run that ended has its queued batches dropped (counted, logged) and its late batches refused
as stale, so one client's departure can never cost another client time or results.

A client is welcomed once every idle worker has connected back to it and warmed its threads
(CONNECT -> JOINED), so neither connection set-up nor thread start-up lands in its clock; a
worker that never answers is not waited for again until it shows life.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import time
from collections import OrderedDict

import msgpack
import numpy as np

from . import protocol as P, strategies
from .clients import TooManyClients
from .role import HOST

_NO_SEAL = P.Seal(b"")  # a run that never said HELLO: no secret, token 0
log = logging.getLogger("comlab.server")
now = time.monotonic_ns

HELLO_WAIT_S = 1.0  # a client is welcomed after this even if some worker never joined
MAX_WARM = 1024     # threads a HELLO may ask each worker to start
ENDED_RUNS_KEPT = 4096
HANDOVER_WAIT_S = 1.0  # a HELLO on a URL whose client is still there waits this long
CONNECT_WAIT_S = 3.0   # a run whose URL nobody listens at is ended after this
PEEK_BYTES = 9 * P.MAX_BATCH_TASKS  # smaller frames cannot hold more tasks than the limit
CLIENT_TYPES = (P.Batch, P.Hello, P.Bye, P.Ack)


def _entry(key: str, response: int, wait: float) -> bytes:
    try:
        return np.array([(response, wait)], P.ENTRY).tobytes()
    except OverflowError:
        raise ValueError(f"{key}: response {response} is outside the signed 64-bit range "
                         f"{P.INT64_MIN}..{P.INT64_MAX}") from None


def peek_batch(frame: bytes) -> tuple | None:
    """(run, reply_url, batch_id, tasks) from a BATCH frame's head, without decoding a key;
    None when it is no BATCH of this version's shape (``decode`` then says why)."""
    unpacker = msgpack.Unpacker(io.BytesIO(frame), raw=False, read_size=4096)
    try:
        if unpacker.read_array_header() != 2 + len(P.Batch._fields):
            return None
        version, kind, run, url, batch_id = (unpacker.unpack() for _ in range(5))
        unpacker.skip()  # the task ids
        n = unpacker.read_array_header()
    except Exception:  # msgpack raises several types for garbage
        return None
    if type(version) is not int or version != P.VERSION or kind != P.Batch.KIND \
            or type(run) is not int or type(url) is not str or type(batch_id) is not int:
        return None
    return run, url, batch_id, n


class Lookup:
    """The task table, ready for the per-task look-up (built once, at the server's
    construction: a bad entry is refused before anything starts)."""

    def __init__(self, table: dict, networks=(), by_index: bool = False) -> None:
        """``by_index``: the server runs a task of its own (comlab.system.usertask): an ENTRY
        carries the entry's index in ``table`` instead of its response, and tokens seal the
        task ids only."""
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.ip_status: dict[str, int] = {}
        if self.networks:
            # An address out of reach is unreachable even when the map knows it: drop such keys
            # from the table once, so the per-task look-up stays a single dict get.
            table = {k: v for k, v in table.items() if self.status_of(k) != P.UNREACHABLE}
        self.table = table
        # The look-up's two answers, ready to use: a task's ENTRY record (its response and
        # wait as the WORK column's bytes) and its wait (the batch's expected cost).
        self.entry_of = {k: _entry(k, i if by_index else r, w)
                         for i, (k, (r, w)) in enumerate(table.items())}
        self.sealed = not by_index  # do tokens seal the responses?
        self.wait_of = {k: float(w) for k, (_, w) in table.items()}

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


class Intake:
    def __init__(self, lookup: Lookup, strategy: str, stats: dict, *, clients, ledger, send,
                 info, reply_url: str = "") -> None:
        """``clients`` the server's sockets to result URLs (comlab.system.clients), ``ledger``
        where work goes (comlab.system.ledger), ``send(ident, frame)`` to a worker, ``info()``
        what a WELCOME says of the server; ``stats`` its counters."""
        self.lookup, self.reply_url, self.strategy, self.stats = lookup, reply_url, strategy, stats
        self.entry_of, self.wait_of = lookup.entry_of, lookup.wait_of  # per task: no hop
        self.sealed = lookup.sealed  # do tokens seal the responses?
        self.clients, self.ledger, self.to_worker, self.info = clients, ledger, send, info
        self.mark_fed = clients.mark_fed               # a run that sent a batch keeps its
                                                       # socket when sockets run short
        self.runs: dict[str, int] = {}                 # reply URL -> its current run
        self.ended: OrderedDict[int, None] = OrderedDict()
        self.hellos: dict[str, tuple] = {}             # reply URL -> (workers not joined, deadline)
        self.seals: dict[int, P.Seal] = {}             # run -> its batch tokens (its secret)
        self.connecting: dict[str, P.Hello] = {}       # reply URL -> HELLO, until it connects
        self.deferred: dict[str, tuple] = {}           # reply URL -> (HELLO, deadline): its
                                                       # URL's run is active, its client there
        clients.on_connect, clients.on_evict = self.on_connected, self.on_evicted

    def broadcast(self, frame: bytes) -> None:
        for ident in list(self.ledger.workers):
            self.to_worker(ident, frame)

    def on_client_frame(self, frame: bytes) -> None:
        t_server_in = now()  # the t_server_in stamp (comlab.schema): before decoding
        if len(frame) > PEEK_BYTES and self.too_big(frame):
            return
        try:
            msg = P.decode(frame, CLIENT_TYPES)
            if type(msg) is P.Batch:
                self.on_batch(t_server_in, P.check_batch(msg))
            elif type(msg) is P.Hello:
                self.on_hello(msg)
            elif type(msg) is P.Ack:
                self.on_ack(msg)
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
        old = self.runs.get(url)
        if old is not None and old != h.run:
            if url in self.clients.connected:  # its client is still there: wait for it to go
                if url in self.deferred:  # one waits already: this one is refused
                    self.stats["refused"] += 1
                    log.warning("refused a HELLO for %s: the run there is active", url[:80])
                    return
                self.deferred[url] = (h, time.monotonic() + HANDOVER_WAIT_S)
                return
            self.end_run(url, "a new client said HELLO on its URL")
        try:
            self.clients.get(url)  # a bad URL is dropped here, before a worker sees it
        except TooManyClients as exc:
            self.stats["refused"] += 1
            self.refuse(url, h.run, str(exc))
            raise
        self.runs[url] = h.run
        self.seals[h.run] = P.Seal(h.secret)
        self.ledger.track(h.run)
        if url in self.clients.connected:
            self.join_workers(url, h)
        else:  # workers hear of it once someone listens there (``on_connected``)
            self.connecting[url] = h

    def on_connected(self, url: str) -> None:
        """The server's socket reached a client's URL: its HELLO goes on to the workers."""
        h = self.connecting.pop(url, None)
        if h is not None and self.runs.get(url) == h.run:
            self.join_workers(url, h)

    def join_workers(self, url: str, h: P.Hello) -> None:
        waiting = self.ledger.idle_answering()
        self.broadcast(P.Connect(url, self.strategy, max(0, min(h.warm, MAX_WARM))).pack())
        if waiting:
            self.hellos[url] = (waiting, time.monotonic() + HELLO_WAIT_S)
        else:
            self.welcome(url)

    def refuse(self, url: str, run: int, why: str) -> None:
        """Answer a client there is no room for, on a socket of its own, closed at once."""
        self.clients.send_once(url, P.Welcome(run, {"refused": why}).pack())

    def welcome(self, url: str) -> None:
        self.hellos.pop(url, None)
        self.clients.send(url, P.Welcome(self.runs.get(url, 0), self.info()).pack())

    def hello_timeout_ms(self) -> float | None:
        """ms until the next HELLO deadline (workers joining, a deferred HELLO); None: none."""
        if self.deferred:
            self.expire_deferred()
        if self.hellos:
            self.on_joined(None)
        deadlines = [d for _, d in self.hellos.values()] + [d for _, d in self.deferred.values()]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic()) * 1000

    def expire_deferred(self) -> None:
        """HELLOs whose URL's client did not leave in time are refused (told on that URL)."""
        t = time.monotonic()
        for url, (h, deadline) in list(self.deferred.items()):
            if t >= deadline:
                del self.deferred[url]
                self.stats["refused"] += 1
                log.warning("refused a HELLO for %s: the run there is active", url[:80])
                self.clients.send(url, P.Welcome(h.run, {
                    "refused": "another client's run is active on this result URL"}).pack())

    def too_big(self, frame: bytes) -> bool:
        """Refuse a BATCH above the limits before any per-task work; True if refused."""
        head = peek_batch(frame)
        if head is None or (head[3] <= P.MAX_BATCH_TASKS and len(frame) <= P.MAX_BATCH_BYTES):
            return False
        run, url, batch_id, n = head
        url = url or self.reply_url
        self.stats["refused_batches"] += 1
        why = (f"batch {batch_id} of {n} tasks ({len(frame)} bytes) is above the server's "
               f"limits of {P.MAX_BATCH_TASKS} tasks and {P.MAX_BATCH_BYTES} bytes per batch")
        log.warning("refused a BATCH for %s: %s", url[:80], why)
        if self.runs.get(url) == run and P.INT64_MIN <= batch_id <= P.INT64_MAX:
            token = self.seals.get(run, _NO_SEAL).possession(batch_id)
            self.clients.send(url, P.Welcome(run, {"refused": why, "batch": batch_id,
                                                   "token": token}).pack())
        return True

    def stop_waiting_for(self, ident: bytes) -> None:
        """A worker joined a client, or is gone: no HELLO waits for it any more."""
        if self.hellos:
            self.on_joined(ident)

    def on_joined(self, ident: bytes | None) -> None:
        """A worker finished a CONNECT (ident None: check deadlines only)."""
        t = time.monotonic()
        for url, (waiting, deadline) in list(self.hellos.items()):
            waiting.discard(ident)
            if waiting and t >= deadline:
                # Never joined: not waited for again until it shows life (any message).
                self.ledger.mark_silent(waiting)
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
        self.mark_fed(url)
        keys, task_ids = b.keys, b.task_ids
        try:
            entries = b"".join(map(self.entry_of.get, keys))  # the look-up: a dict get per task
        except TypeError:  # a key the table does not hold (None in the join)
            keys, task_ids, entries = self.answer_misses(t_server_in, b, url)
        stats = self.stats
        stats["batches"] += 1
        stats["tasks"] += len(b.keys)
        if keys:
            waits = list(map(self.wait_of.__getitem__, keys))
            cost = self.duration(waits) if any(waits) else 0.0
            t_enqueued = now()  # the t_enqueued stamp (comlab.schema): the work item exists
            token = self.seals.get(b.run, _NO_SEAL).token(
                b.batch_id, task_ids,
                P.entry_responses(entries) if self.sealed else bytes(len(task_ids)))
            self.ledger.submit(P.Work(b.run, b.batch_id, url, self.strategy, t_server_in,
                                      t_enqueued, 0, task_ids, entries, token, cost,
                                      len(keys)))

    @property
    def strategy(self) -> str:
        return self._strategy

    @strategy.setter
    def strategy(self, spec: str) -> None:
        self._strategy = spec
        strategies.lookup(spec)  # a bad spec is refused here, not at the first batch
        self.duration = lambda waits: strategies.duration(spec, waits)

    def answer_misses(self, t_server_in: int, b: P.Batch, url: str) -> tuple:
        """Answer tasks no worker can run (unknown key, unreachable address) at once; the
        keys, task ids and entries of the rest."""
        ids = np.frombuffer(b.task_ids, P.I64)
        known = [k in self.entry_of for k in b.keys]
        missed = [k for k, hit in zip(b.keys, known) if not hit]
        for key in missed:
            if not isinstance(key, str):
                raise P.ProtocolError(f"task key {P.preview(key)} is not a string")
        statuses = [self.lookup.status_of(key) for key in missed]
        for status in statuses:
            self.stats[P.STATUS_NAMES[status]] += 1
        hit = np.array(known, dtype=bool)
        t = now()
        n = len(missed)
        missed_ids = ids[~hit].tobytes()
        token = self.seals.get(b.run, _NO_SEAL).token(b.batch_id, missed_ids, bytes(8 * n))
        self.clients.send(url, P.results(
            b.run, "server", HOST, [(b.batch_id, 0, t_server_in, t, token, n)],
            ids[~hit], statuses, [0] * n, [t] * n, [t] * n).pack())
        keys = [k for k, h in zip(b.keys, known) if h]
        return keys, ids[hit].tobytes(), b"".join(map(self.entry_of.__getitem__, keys))

    def expire_clients(self) -> None:
        """Let go of clients idle for a minute with no work queued or running: a client that
        vanished without BYE and without a connection to lose (its URL never answered)."""
        active = self.ledger.active_runs()
        busy = {url for url, run in self.runs.items() if run in active}
        for url in self.clients.expire(in_use=busy):
            self.end_run(url, "idle, nothing in flight")

    def expire_unconnected(self) -> None:
        """End the runs whose URL nobody listens at (what waits for them is freed)."""
        for url in self.clients.unconnected(CONNECT_WAIT_S):
            self.end_run(url, "nobody listens at its URL")
            self.clients.release(url)

    def on_evicted(self, url: str, why: str) -> None:
        """The client sockets made room by closing this run's (see clients._make_room)."""
        self.stats["runs_reclaimed"] += 1
        self.end_run(url, why)

    def on_ack(self, ack: P.Ack) -> None:
        """The client's acknowledgements (comlab.system.acks), believed only from the client:
        the run current on its URL, and a tag under the run's secret. An ACK that crossed
        its run's end (the client's last ACK races its connection closing) has nothing left
        to acknowledge: it is stale, not hostile."""
        if ack.run in self.ended:
            self.stats["stale"] += 1
            return
        seal = self.seals.get(ack.run)
        if seal is None or self.runs.get(ack.reply_url or self.reply_url) != ack.run \
                or seal.ack_tag(ack.accepted, ack.forged) != ack.tag:
            raise P.ProtocolError("ACK that is not from the run's client")
        if len(ack.accepted) % 16:  # read in bulk later (comlab.system.acks)
            raise P.ProtocolError("ACK column of partial (batch_id, attempt) pairs")
        self.ledger.ack(ack.run, ack.accepted, P.pairs(ack.forged))

    def on_bye(self, bye: P.Bye) -> None:
        url = bye.reply_url or self.reply_url
        if self.runs.get(url) == bye.run:
            self.end_run(url, None)

    def end_run(self, url: str, why: str | None) -> None:
        """A client is done (why None) or gone: drop its queued work, let go of its sockets."""
        run = self.runs.pop(url, None)
        if run is None:
            return
        self.ended[run] = None
        self.seals.pop(run, None)
        if len(self.ended) > ENDED_RUNS_KEPT:
            self.ended.popitem(last=False)
        self.hellos.pop(url, None)
        self.connecting.pop(url, None)
        dropped = self.ledger.drop_run(run)
        self.stats["runs_ended"] += 1
        (log.warning if dropped else log.info)(
            "client %s: run ended (%s); %d queued tasks dropped", url, why or "BYE", dropped)
        self.clients.release(url)
        self.broadcast(P.Forget(url, run).pack())
        if url in self.deferred:  # a HELLO waited for this run to end
            try:
                self.on_hello(self.deferred.pop(url)[0])
            except P.ProtocolError as exc:
                log.warning("dropped a HELLO for %s: %s", url[:80], P.preview(str(exc)))

