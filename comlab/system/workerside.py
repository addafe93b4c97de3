"""The workers' side of the server: what they are sent, what they say, how they are lost.

``Outbox`` sends on the worker ROUTER; batches the ledger gives a worker wait in its outbox until
the end of the server's pass, then go out in one WORK message per worker and run (``flush``).
``FailedBatches`` answers the tasks of a batch lost twice (the ledger's ``fail``).
``WorkerSide`` takes the workers' messages (READY, DONE, JOINED, PONG) to the ledger, the intake
and the liveness part, and turns a lost worker (exited, unreachable, wedged) into the ledger's
retries. Each is built with what it needs; none holds the server.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

import zmq

from . import protocol as P
from .role import HOST

log = logging.getLogger("comlab.server")
SNDMORE = int(zmq.SNDMORE)  # a plain int: pyzmq's enum flags cost an enum operation per call
now = time.monotonic_ns
WORKER_TYPES = (P.Done, P.Ready, P.Joined, P.Pong)
FAILED_KEPT = 65536  # (run, batch) pairs remembered as counted failed


class Outbox(dict):
    """worker -> the batches given to it in this pass (a dict: its truth test is the hot
    loop's, at C speed)."""

    def __init__(self, router: zmq.Socket) -> None:
        super().__init__()
        self.router = router

    def send(self, ident: bytes, frame: bytes) -> bool:
        """Send to a worker now; False when its connection is gone (EHOSTUNREACH)."""
        try:
            self.router.send(ident, SNDMORE)
            self.router.send(frame)
            return True
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            return False

    def give(self, ident: bytes, work: P.Work) -> bool:
        """Batches given to a worker wait until the end of the server's pass: every
        batch a worker got in one pass goes in one WORK message, so at batch 1 a worker with a
        window of tiny batches costs one message, not one per batch (``WorkerSide.flush``)."""
        box = self.get(ident)
        if box is None:
            self[ident] = [work]
        else:
            box.append(work)
        return True


class FailedBatches:
    def __init__(self, clients, stats: dict) -> None:
        """``clients`` the sockets to result URLs; ``stats`` the server's counters."""
        self.clients, self.stats = clients, stats
        self.counted: OrderedDict[tuple, None] = OrderedDict()  # (run, batch) counted failed

    def fail(self, work: P.Work, name: str, why: str = "") -> None:
        """A batch lost twice: its tasks fail (counted once per batch, however it got here;
        their responses are the ones the batch was given, so its seal holds)."""
        key = (work.run, work.batch_id)
        if key not in self.counted:
            self.stats["failed"] += work.n
            self.counted[key] = None
            if len(self.counted) > FAILED_KEPT:
                self.counted.popitem(last=False)
        why = why or f"worker {name} died running this batch"
        log.error("batch %s lost twice (%s): its tasks fail", work.batch_id, why)
        t = now()
        n = work.n
        stamps = P.ids_bytes([t] * n)
        self.clients.send(work.reply_url, P.Results(
            work.run, name, HOST, P.heads_bytes([work.head()]), work.task_ids,
            bytes([P.FAILED]) * n, P.entry_responses(work.entries), stamps, stamps,
            [f"{why} (attempt {work.attempt + 1})"] * n).pack())


class WorkerSide:
    def __init__(self, outbox: Outbox, ledger, liveness, pool, stats: dict, *,
                 stop_waiting_for) -> None:
        """``ledger`` (comlab.system.ledger), ``liveness`` (comlab.system.liveness), ``pool``
        the local workers (comlab.system.pool); ``stop_waiting_for(ident)``: a worker joined a
        client or is gone (the intake's HELLOs stop waiting for it); ``stats`` the counters."""
        self.outbox, self.ledger, self.liveness, self.pool = outbox, ledger, liveness, pool
        self.stats, self.stop_waiting_for = stats, stop_waiting_for

    def on_frame(self, ident: bytes, frame: bytes = b"", *_) -> None:
        try:
            msg = P.decode(frame, WORKER_TYPES)
        except P.ProtocolError as exc:
            self.stats["dropped"] += 1
            log.warning("dropped a worker message from %s: %s", P.preview(ident), exc)
            return
        ledger = self.ledger
        if ledger.silent:
            ledger.heard_from(ident)
        kind = type(msg)
        if kind is P.Done:
            ledger.done(ident, msg.run, msg.batch_id)
        elif kind is P.Ready:
            ledger.ready(ident, msg.name, msg.host, msg.pid, local=ident in self.pool.idents())
        elif kind is P.Joined:
            self.stop_waiting_for(ident)
        else:
            w = ledger.workers.get(ident)
            if w is not None:
                self.liveness.pong(ident, w.host, msg.nonce, msg.t_worker)

    def flush(self) -> None:
        """Send every outbox: one WORK per worker and run (a worker's batches in the order the
        ledger gave them). A worker whose connection is gone gets its batches back in the queue
        untouched and is lost; what the ledger hands to others instead goes out in this call."""
        outbox, send = self.outbox, self.outbox.send
        while outbox:
            boxes = dict(outbox)
            outbox.clear()
            for ident, works in boxes.items():
                start = 0
                for i in range(1, len(works) + 1):
                    if i == len(works) or works[i].run != works[start].run \
                            or works[i].reply_url != works[start].reply_url \
                            or works[i].strategy != works[start].strategy:
                        if not send(ident, P.assign(works[start:i])):
                            self.pool.kill(ident)  # a local worker with no connection is
                            self.ledger.undeliverable(ident, works[start:])  # stopped (or wedged)
                            break
                        start = i

    def lost(self, ident: bytes, why: str) -> None:
        w = self.ledger.workers.get(ident)
        if w is None:
            return
        self.stats["workers_lost"] += 1
        log.warning("worker %s is lost (%s): its batches are retried", w.name, why)
        self.pool.kill(ident)
        self.forget(ident)

    def exited(self, sentinel: int) -> None:
        """A local worker's process ended."""
        _, ident = self.pool.exited(sentinel)
        self.stats["worker_deaths"] += 1
        self.forget(ident)

    def forget(self, ident: bytes) -> None:
        self.ledger.lose(ident)
        # What it was given in this pass is retried or failed by lose(): sending it on (and
        # re-queuing it when the send fails) would run or fail those batches twice.
        self.outbox.pop(ident, None)
        self.stop_waiting_for(ident)

    def disconnected(self, monitor: zmq.Socket) -> None:
        """A worker connection ended (killed, stopped, cut off): probe every worker."""
        while True:
            try:
                monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
        for ident in self.liveness.disconnected(list(self.ledger.workers)):
            self.lost(ident, "connection lost")

    def overdue(self, slack_s: float, factor: float, remote_slack_s: float,
                per_task_s: float) -> None:
        """Workers holding a batch far past its ideal time: a local one is lost (stopped or
        wedged); a remote one's batches are retried elsewhere (see ``Ledger.release``)."""
        for ident in self.ledger.overdue(slack_s, factor, remote_slack_s, per_task_s):
            self.stats["overdue"] += 1
            if ident in self.pool.local:
                self.lost(ident, "holding a batch far past its ideal time")
            else:
                log.warning("remote worker %s holds a batch far past its ideal time: its "
                            "batches are retried elsewhere", P.preview(ident))
                self.ledger.release(ident)
