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

A design is a class implementing ``Design`` (what the ledger, the server and its pool ask of
it), registered with ``@register`` (the built-in ones at the end of this module); it names its
counterpart in the model (``simulated_as``, comlab.sim.model), and its ``forms`` are the
command line's help. No module outside this one tests a design's name: a new design is one
class and one test (one defined outside comlab: ``COMLAB_PLUGINS``, comlab.system.plugins).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod

from . import plugins
from .protocol import assign
from .takequeue import NOTHING, TakeQueue

log = logging.getLogger("comlab.dispatch")

DEFAULT = "broker"
FINISHED_GRACE_S = 0.1  # a queue worker dying this soon after a batch: the batch runs again
SIMULATED = ("ledger", "shared-queue")  # the model's counterparts (Design.simulated_as)


class Design(ABC):
    """A dispatch design, as comlab.system.ledger.Ledger (``policy``) and the server ask it.

    ``simulated_as`` names its counterpart in the model (comlab.sim.model), one of SIMULATED:
    ``ledger``: the model runs this class itself around its own ledger, every worker brokered
    (WORK / DONE); ``shared-queue``: local workers take from a FIFO behind one lock, with no
    DONE (the queue design; the calibration measures its take from such runs).
    """

    name = ""
    forms: dict[str, str] = {}  # how the command line names it -> its help (default: name)
    simulated_as = "ledger"

    def __init__(self, param: str | None = None, **resources) -> None:
        """``resources``: what a server gives it (``mp``: a multiprocessing context, ``slots``:
        local workers at most); a ledger without a server gives none."""

    @abstractmethod
    def takes_more(self, w) -> bool:
        """May this busy worker (comlab.system.ledger's Worker) hold one more batch?"""

    @abstractmethod
    def place(self, ledger, work) -> bool:
        """Put a new batch somewhere (``ledger.to_free_worker``, ``ledger.give``, or a queue
        of the design's own); False: it waits in the ledger's pending queue."""

    def brokers(self, ident: bytes, ledger) -> bool:
        """Does this worker get its batches through the broker (WORK/DONE)?"""
        return True

    def queued(self) -> int:
        """Batches the design holds that no worker has taken yet."""
        return 0

    def busy(self) -> int:
        """Local workers holding a batch the ledger does not see (the queue design's)."""
        return 0

    def drop_run(self, run: int) -> int:
        """Tasks of a run's batches the design still holds, now dropped (the run ended)."""
        return 0

    def local_pool_kwargs(self, ident: bytes) -> dict:
        """What a local worker process is started with (comlab.system.worker.Worker)."""
        return {}

    def lost_local(self, ident: bytes) -> list:
        """A local worker died: the batches it held that the ledger does not see."""
        return []

    def close(self) -> None:
        pass


class Broker(Design):
    name = "broker"
    forms = {"broker": "load balancing, adaptive prefetch", "broker:K": "prefetch K batches"}

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


class SharedQueue(Design):
    name = "queue"
    forms = {"queue": "the seed's shared queue"}
    simulated_as = "shared-queue"

    def __init__(self, param: str | None = None, *, mp=None, slots: int = 0) -> None:
        if param:
            raise ValueError(f"dispatch {self.name!r} takes no parameter")
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


DESIGNS: dict[str, type[Design]] = {}  # the registry: name -> class (``register``)


def register(cls: type[Design]) -> type[Design]:
    """Add a design class to the registry (a class decorator); TypeError for a class that is
    not one, ValueError for a name that is taken or a counterpart the model does not have."""
    if not (isinstance(cls, type) and issubclass(cls, Design)):
        raise TypeError(f"{cls!r} is not a subclass of comlab.system.dispatch.Design")
    plugins.check_name("dispatch design", cls, DESIGNS)
    if cls.simulated_as not in SIMULATED:
        raise ValueError(f"dispatch {cls.name!r}: simulated_as must be one of "
                         f"{', '.join(SIMULATED)}, not {cls.simulated_as!r}")
    DESIGNS[cls.name] = cls
    return cls


def unregister(cls: type[Design]) -> None:
    """Remove a class ``register`` added (a test's own design, when the test ends)."""
    if DESIGNS.get(cls.name) is cls:
        del DESIGNS[cls.name]


def known() -> dict[str, type[Design]]:
    """The registry, with the classes COMLAB_PLUGINS names (comlab.system.plugins) added."""
    for cls in plugins.classes(Design):
        if DESIGNS.get(cls.name) is not cls:
            register(cls)
    return DESIGNS


def usage() -> str:
    """Every design's forms with their help, for ``--help``."""
    try:
        classes = known().values()
    except ValueError:  # a bad COMLAB_PLUGINS: said when a name is looked up, not in --help
        classes = DESIGNS.values()
    return "; ".join(f"{form} ({text})" if text else form for cls in classes
                     for form, text in (cls.forms or {cls.name: ""}).items())


def lookup(spec: str) -> tuple[type[Design], str | None]:
    """(design class, parameter) of a spec ``name`` or ``name:param``; ValueError if bad."""
    if not isinstance(spec, str):
        raise ValueError(f"a dispatch design is named by a string, not {type(spec).__name__}")
    name, _, param = spec.partition(":")
    cls = DESIGNS.get(name) or known().get(name)
    if cls is None:
        raise ValueError(f"unknown dispatch {spec[:60]!r}; known: {', '.join(DESIGNS)} "
                         f"(one of your own: {plugins.HINT})")
    return cls, param or None


def simulated_as(spec: str) -> str | None:
    """The model's counterpart of ``spec``'s design; None for a name this process does not
    know (a result of a design defined elsewhere)."""
    try:
        return lookup(spec)[0].simulated_as
    except ValueError:
        return None


def _count(name: str, param: str) -> int:
    if not param.isdigit():
        raise ValueError(f"dispatch {name}:{param}: the prefetch must be an integer >= 0")
    return int(param)


def check(spec: str) -> str:
    """Validate a dispatch spec (``broker``, ``broker:K``, ``queue``); return it."""
    make(spec)
    return spec


def make(spec: str, **kwargs) -> Design:
    cls, param = lookup(spec)
    return cls(param, **kwargs)


for _cls in (Broker, SharedQueue):
    register(_cls)
