"""The clients' side of the server: runs per result URL, the HELLO handshake, the look-up.

Each task key ("ip:command") is looked up in one dict; tasks no worker can run (unknown key,
address outside ``networks``) are answered at once from here, the rest of a batch becomes one
work item for the ledger. A result URL has one current run: a new HELLO there ends the previous
run, so does BYE, the client's connection going away, or a minute idle with nothing in flight.
A run that ended has its queued batches dropped (counted, logged) and its late batches refused
as stale, so one client's departure can never cost another client time or results.

A client is welcomed once every idle worker has connected back to it and warmed its threads
(CONNECT -> JOINED), so neither connection set-up nor thread start-up lands in its clock; a
worker that never answers is not waited for again until it shows life.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict

import numpy as np
import zmq

from . import protocol as P, strategies
from .clients import TooManyClients
from .role import HOST

_NO_SEAL = P.Seal(b"")  # a run that never said HELLO: no secret, token 0
log = logging.getLogger("comlab.server")
now = time.monotonic_ns

HELLO_WAIT_S = 1.0  # a client is welcomed after this even if some worker never joined
MAX_WARM = 1024     # threads a HELLO may ask each worker to start
ENDED_RUNS_KEPT = 4096
CLIENT_TYPES = (P.Batch, P.Hello, P.Bye, P.Ack)


def _entry(key: str, response: int, wait: float) -> bytes:
    try:
        return np.array([(response, wait)], P.ENTRY).tobytes()
    except OverflowError:
        raise ValueError(f"{key}: response {response} is outside the signed 64-bit range "
                         f"{P.INT64_MIN}..{P.INT64_MAX}") from None


class Intake:
    def __init__(self, table: dict, networks, reply_url: str, strategy: str, stats: dict,
                 role) -> None:
        """``role`` is the server: its ``clients`` (sockets), ``ledger``, ``to_worker`` and
        ``info`` are used once it is set up; ``stats`` are its counters."""
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.reply_url, self.strategy, self.stats, self.role = reply_url, strategy, stats, role
        self.ip_status: dict[str, int] = {}
        if self.networks:
            # An address out of reach is unreachable even when the map knows it: drop such keys
            # from the table once, so the per-task look-up stays a single dict get.
            table = {k: v for k, v in table.items() if self.status_of(k) != P.UNREACHABLE}
        self.table = table
        # The look-up's two answers, ready to use: a task's ENTRY record (its response and
        # wait as the WORK column's bytes) and its wait (the batch's expected cost).
        self.entry_of = {k: _entry(k, r, w) for k, (r, w) in table.items()}
        self.wait_of = {k: float(w) for k, (_, w) in table.items()}
        self.runs: dict[str, int] = {}                 # reply URL -> its current run
        self.ended: OrderedDict[int, None] = OrderedDict()
        self.hellos: dict[str, tuple] = {}             # reply URL -> (workers not joined, deadline)
        self.silent: set[bytes] = set()                # workers that never answered a CONNECT
        self.seals: dict[int, P.Seal] = {}             # run -> its batch tokens (its secret)

    def attach(self) -> None:
        """The server is set up: its sockets and ledger exist."""
        self.clients, self.ledger = self.role.clients, self.role.ledger
        self.to_worker = self.role.to_worker
        self.silent = self.ledger.silent

    def broadcast(self, frame: bytes) -> None:
        for ident in list(self.ledger.workers):
            self.to_worker(ident, frame)

    def on_client_frame(self, frame: bytes) -> None:
        t_server_in = now()  # the t_server_in stamp (comlab.schema): before decoding
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
            self.end_run(url, "a new client said HELLO on its URL")
        try:
            self.clients.get(url)  # a bad URL is dropped here, before a worker sees it
        except TooManyClients as exc:
            self.stats["refused"] += 1
            self.refuse(url, h.run, str(exc))
            raise
        self.runs[url] = h.run
        self.seals[h.run] = P.Seal(h.secret)
        idle = set(self.ledger.idle) - self.silent
        connect = P.Connect(url, self.strategy, max(0, min(h.warm, MAX_WARM))).pack()
        self.broadcast(connect)
        waiting = idle & set(self.ledger.workers)
        if waiting:
            self.hellos[url] = (waiting, time.monotonic() + HELLO_WAIT_S)
        else:
            self.welcome(url)

    def refuse(self, url: str, run: int, why: str) -> None:
        """Answer a client there is no room for, on a socket of its own, closed at once."""
        sock = self.role.socket(zmq.PUSH, curve_server=False)
        try:
            sock.connect(url)
            sock.send(P.Welcome(run, {"refused": why}).pack(), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        finally:
            self.role.close_socket(sock, linger_ms=1000)

    def welcome(self, url: str) -> None:
        self.hellos.pop(url, None)
        self.clients.send(url, P.Welcome(self.runs.get(url, 0), self.role.info()).pack())

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
            token = self.seals.get(b.run, _NO_SEAL).token(b.batch_id, task_ids,
                                                          P.entry_responses(entries))
            self.ledger.submit(P.Work(b.run, b.batch_id, url, self.strategy, t_server_in,
                                      t_enqueued, 0, task_ids, entries, token, cost,
                                      len(keys)))

    @property
    def strategy(self) -> str:
        return self._strategy

    @strategy.setter
    def strategy(self, spec: str) -> None:
        self._strategy = spec
        cls, param = strategies.lookup(spec)
        self.duration = lambda waits: cls.duration(waits, param)

    def answer_misses(self, t_server_in: int, b: P.Batch, url: str) -> tuple:
        """Answer tasks no worker can run (unknown key, unreachable address) at once; the
        keys, task ids and entries of the rest."""
        ids = np.frombuffer(b.task_ids, P.I64)
        known = [k in self.entry_of for k in b.keys]
        missed = [k for k, hit in zip(b.keys, known) if not hit]
        for key in missed:
            if not isinstance(key, str):
                raise P.ProtocolError(f"task key {P.preview(key)} is not a string")
        statuses = [self.status_of(key) for key in missed]
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

    def on_ack(self, ack: P.Ack) -> None:
        """The client's acknowledgements (comlab.system.acks), believed only from the client:
        the run current on its URL, and a tag under the run's secret."""
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
        dropped = self.ledger.drop_run(run)
        self.stats["runs_ended"] += 1
        (log.warning if dropped else log.info)(
            "client %s: run ended (%s); %d queued tasks dropped", url, why or "BYE", dropped)
        self.clients.release(url)
        self.broadcast(P.Forget(url, run).pack())

