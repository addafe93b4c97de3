"""Dispatch designs: how the server hands a batch to a worker. Chosen per server
(``run_server --dispatch NAME``), named like strategies (``name`` or ``name:param``).

``broker`` (default) and ``broker:K`` -- the ZeroMQ Guide's load-balancing broker. Workers
connect a DEALER to the server's ROUTER and ask for work (READY, then DONE after each batch);
the server knows which batch each worker holds. Credit-based prefetch (RabbitMQ's and Celery's
``prefetch``): with ``broker:K`` a worker may hold up to K batches beyond the one it runs
(``broker:0`` is strict load balancing: at batch 1 every task waits a DONE -> WORK round trip,
three messages per batch at the server). Plain ``broker`` is the adaptive policy: a busy worker
takes more while what it holds sums to at most 1 ms of expected work (at most 32 batches), so
tiny batches never wait for the round trip; and when no worker is free, a batch goes one ahead
to the worker expected to free first (start + the strategy's ideal time of what it runs), so
long batches do not wait for it either. Cost: with K > 0 a short batch can queue behind a long
one at one worker while another frees; the adaptive policy bets on the ideal times, and loses
that bet only when a batch runs far from its ideal time.

``queue`` -- the seed's design: the server puts each batch on a queue shared by its local
workers (comlab.system.takequeue: a pipe no worker's death can wedge or garble), and a free
worker takes the next one; no DONE message (two messages per batch at the server), no round
trip, but no knowledge of who holds what at dispatch time: each worker publishes the sequence
number of the batch it holds (and of the one it finished last) in shared memory, which the
server reads when that worker's sentinel fires (a dead worker's batch is retried once, then
failed, as with the broker; so is one it finished within FINISHED_GRACE_S, whose results may
not have left). A batch is never stranded behind a long one (only free workers take), but
every take is serialised by a short lock, every idle worker wakes for each batch, and the
server learns of progress only by reading the shared counters. Remote worker hosts keep joining
through the broker endpoint: an idle remote worker gets a batch before the queue does. The
queue carries bytes frames between a server and the workers it forked (never a peer's data).
"""

from __future__ import annotations

import logging
import time

from .protocol import assign
from .takequeue import NOTHING, TakeQueue

log = logging.getLogger("comlab.dispatch")

DEFAULT = "broker"
FINISHED_GRACE_S = 0.1  # a queue worker dying this soon after a batch: the batch runs again


class Broker:
    name = "broker"

    def __init__(self, param: str | None = None, **_) -> None:
        self.prefetch = None if param is None else _count(self.name, param)
        self.prefetch_s, self.prefetch_max = 0.001, 32

    def takes_more(self, w) -> bool:
        """May this busy worker hold one more batch?"""
        held = len(w.held)
        if self.prefetch is not None:
            return 0 < held <= self.prefetch
        return 0 < held < self.prefetch_max and w.held_cost <= self.prefetch_s

    def place(self, ledger, work) -> bool:
        if ledger.to_free_worker(work):
            return True
        if self.prefetch is None and not ledger.idle:
            # Adaptive: no worker is free, so the batch would wait anyway; it waits at the
            # worker expected to free first (its batch's start + ideal time), which then never
            # idles for the DONE -> WORK round trip. One batch ahead, no more.
            ahead = min(((w.held[0].since + w.held[0].work.cost_s, i) for i, w in
                         ledger.workers.items() if len(w.held) == 1 and ledger.brokered(i)
                         and ledger.may_take(i, work)),
                        default=None)
            if ahead is not None:
                return ledger.give(ahead[1], work)
        return False

    def brokers(self, ident: bytes, ledger) -> bool:
        """Does this worker get its batches through the broker (WORK/DONE)?"""
        return True

    def queued(self) -> int:
        return 0

    def busy(self) -> int:
        """Local workers holding a batch the ledger does not see (the queue design's)."""
        return 0

    def drop_run(self, run: int) -> int:
        return 0

    def local_pool_kwargs(self, ident: bytes) -> dict:
        return {}

    def lost_local(self, ident: bytes) -> list:
        return []

    def close(self) -> None:
        pass


class SharedQueue:
    name = "queue"

    def __init__(self, param: str | None = None, *, mp=None, slots: int = 0) -> None:
        if param:
            raise ValueError("dispatch 'queue' takes no parameter")
        self.mp = mp
        if mp is not None:
            self.queue = TakeQueue(mp, max(slots, 1))
            self.free = list(range(max(slots, 1)))[::-1]
            self.slot_of: dict[bytes, int] = {}
        self.outstanding: dict[int, object] = {}  # seq -> Work put on the queue, until done

    def takes_more(self, w) -> bool:
        return False  # remote workers (broker endpoint): strictly balanced

    def brokers(self, ident: bytes, ledger) -> bool:
        return ident not in ledger.local  # local workers take from the queue

    def place(self, ledger, work) -> bool:
        if ledger.to_free_worker(work, remote_only=True):
            return True
        if not ledger.local:  # a remote-only server: no one takes from the queue; keep it
            return False      # pending for the next remote worker that is free
        self.outstanding[self.queue.put(assign((work,)))] = work
        if len(self.outstanding) > 4 * len(self.slot_of) + 64:
            self._forget_done()
        return True

    def taken(self) -> int:
        return self.queue.taken()

    def queued(self) -> int:
        """Batches on the queue that no worker has taken yet."""
        return self.queue.seq - self.taken() if self.mp is not None else 0

    def busy(self) -> int:
        return sum(1 for i in self.slot_of.values() if self.queue.held(i) != NOTHING)

    def drop_run(self, run: int) -> int:
        """Tasks of a run's batches still on the queue: the workers skip them (FORGET)."""
        taken = self.taken()
        return sum(w.n for seq, w in self.outstanding.items()
                   if seq >= taken and w.run == run)

    def local_pool_kwargs(self, ident: bytes) -> dict:
        """What a local worker needs to take from the queue: the queue and its own slot."""
        slot = self.free.pop()
        self.slot_of[ident] = slot
        self.queue.reset(slot)
        return {"queue": self.queue, "slot": slot}

    def lost_local(self, ident: bytes) -> list:
        """A local worker died: the batch it held (read from its slot) or tore from the queue
        mid-take, to retry or fail."""
        slot = self.slot_of.pop(ident, None)
        if slot is None:
            return []
        torn = self.queue.recover(slot)
        seqs = {self.queue.held(slot), torn} - {NOTHING, None}
        # Its last batch's results may still have been in its socket's queue (a connection to
        # the client not yet up): a batch finished just before the death is run again; the
        # client keeps the first answer of each task.
        seq, at = self.queue.finished(slot)
        if seq != NOTHING and time.monotonic_ns() - at < FINISHED_GRACE_S * 1e9:
            seqs.add(seq)
        self.queue.reset(slot)
        self.free.append(slot)
        return [self.outstanding.pop(s) for s in sorted(seqs) if s in self.outstanding]

    def _forget_done(self) -> None:
        """Batches are taken in queue order: every seq below the takes is taken, and one that no
        slot holds (or finished last) is done."""
        taken = self.taken()
        held = {s for i in self.slot_of.values()
                for s in (self.queue.held(i), self.queue.finished(i)[0])}
        for seq in [s for s in self.outstanding if s < taken and s not in held]:
            del self.outstanding[seq]

    def close(self) -> None:
        if self.mp is not None:
            self.queue.close()  # never waits for batches nobody will take


DESIGNS = {cls.name: cls for cls in (Broker, SharedQueue)}


def _count(name: str, param: str) -> int:
    if not param.isdigit():
        raise ValueError(f"dispatch {name}:{param}: the prefetch must be an integer >= 0")
    return int(param)


def check(spec: str) -> str:
    """Validate a dispatch spec (``broker``, ``broker:K``, ``queue``); return it."""
    make(spec)
    return spec


def make(spec: str, **kwargs):
    if not isinstance(spec, str):
        raise ValueError(f"a dispatch design is named by a string, not {type(spec).__name__}")
    name, _, param = spec.partition(":")
    cls = DESIGNS.get(name)
    if cls is None:
        raise ValueError(f"unknown dispatch {spec[:60]!r}; known: {', '.join(DESIGNS)}")
    return cls(param or None, **kwargs)

