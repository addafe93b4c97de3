"""The server's bookkeeping, apart from its sockets: who holds which batch, what waits, retries.

The ledger knows the workers (by routing id), the pending queue and every batch a worker holds,
in the order it got them. The dispatch design (comlab.system.dispatch: ``broker[:K]``,
``queue``) decides where a new batch goes and when a busy worker may take more; the ledger hands
work out through the ``send`` callable it is given, which answers False when the worker cannot
be reached; it never touches a socket itself, so every rule here
is unit-tested without processes (tests/test_ledger.py).

Trust: a worker is believed only about batches it holds. DONE for a batch it does not hold is
refused (counted, nothing changes), and so is READY from a worker that holds batches (a worker
that reconnected still runs them and will say DONE); a batch is retried once when its worker is
lost, and fails the second time (``fail`` answers its tasks). A batch held past its deadline
(a stopped or wedged worker) is reported by ``overdue`` so the server can act.

A DONE is believed only once the client acknowledges the results (comlab.system.acks): a worker
whose DONE proves false is quarantined (no more work; named in ``quarantined``) and its batches
are retried. A worker whose results were acknowledged is ``proven``; a retried batch goes to a
proven worker when there is one, so a flood of peers that hold or drop batches cannot spend a
batch's two attempts while honest workers exist.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from .acks import AckBook
from .dispatch import Broker
from .protocol import Work

MAX_ATTEMPTS = 2  # a batch runs at most twice: once, and once more if its worker was lost
QUARANTINE_KEPT = 4096  # routing ids remembered as quarantined (a peer that reconnects stays out)


class Held:
    """A batch a worker holds: ``since`` is when it was handed out (or, for one queued behind
    others, when the one before it finished); its expected run time is ``work.cost_s``."""

    __slots__ = ("work", "since")

    def __init__(self, work: Work, since: float) -> None:
        self.work, self.since = work, since


@dataclass
class WorkerState:
    name: str
    host: str
    pid: int
    local: bool = False
    held: deque = field(default_factory=deque)   # Held, in the order given
    progress: float = 0.0                        # last time it finished or got work while idle
    held_cost: float = 0.0                       # sum of the held batches' cost_s (O(1) rule)


class Ledger:
    def __init__(self, send, fail, *, policy=None, local=frozenset(),
                 max_pending: int = 64, clock=time.monotonic, tracked=frozenset()) -> None:
        """``send(ident, work) -> bool``; ``fail(work, worker_name, why)`` answers a batch's
        tasks as failed; a batch's expected run time is its ``cost_s``; ``policy`` a dispatch
        design; ``local`` the routing ids of the server's own workers (a set kept up to date);
        ``tracked`` the runs whose clients acknowledge results at first (comlab.system.acks;
        then ``track``)."""
        self.send, self.fail = send, fail
        self.policy = policy or Broker()
        self.local = local
        self.max_pending = max_pending
        self.clock = clock
        self.workers: dict[bytes, WorkerState] = {}
        self.pending: deque[Work] = deque()
        self.idle: deque[bytes] = deque()
        self.short: deque[bytes] = deque()   # busy workers that may take one more
        self.silent: set[bytes] = set()      # no work until they show life: ``mark_silent``,
                                             # ``heard_from`` (the ledger's alone to change)
        self.proven: set[bytes] = set()      # workers whose results the client acknowledged
        self.quarantined: dict[bytes, str] = {}  # routing id -> why: never given work again
        self.acks = AckBook(tracked, clock)
        self.counts = dict.fromkeys(("retried", "failed_batches", "refused_done",
                                     "refused_ready", "dropped_tasks", "quarantined",
                                     "unacked", "forged"), 0)

    # -- questions ---------------------------------------------------------------------------
    @property
    def full(self) -> bool:
        return len(self.pending) + self.policy.queued() >= self.max_pending

    def busy(self) -> int:
        return sum(1 for w in self.workers.values() if w.held)

    def holds(self, ident: bytes) -> bool:
        w = self.workers.get(ident)
        return w is not None and bool(w.held)

    def idle_answering(self) -> set[bytes]:
        """Idle workers known now that are not ``silent``."""
        return (set(self.idle) - self.silent) & self.workers.keys()

    def active_runs(self) -> set[int]:
        """Runs with work queued or held."""
        return {w.run for w in self.pending} \
            | {h.work.run for w in self.workers.values() for h in w.held}

    # -- who answers -----------------------------------------------------------------------------
    def mark_silent(self, idents) -> None:
        """Workers that did not answer (a CONNECT): no work until they show life."""
        self.silent |= set(idents)

    def heard_from(self, ident: bytes) -> None:
        """Any message from a worker: it answers again."""
        self.silent.discard(ident)

    def track(self, run: int) -> None:
        """This run's client acknowledges results (it said HELLO); until ``drop_run``."""
        self.acks.track(run)

    # -- events --------------------------------------------------------------------------------
    def submit(self, work: Work) -> None:
        """A new (or retried) batch: where the dispatch design puts it, or the pending queue."""
        if not self.policy.place(self, work):
            self.pending.append(work)

    def brokered(self, ident: bytes) -> bool:
        return self.policy.brokers(ident, self)

    def give(self, ident: bytes, work: Work) -> bool:
        """Hand ``work`` to a known worker (the design chose it)."""
        w = self.workers.get(ident)
        return w is not None and self._give(ident, w, work)

    def may_take(self, ident: bytes, work: Work) -> bool:
        """Not quarantined, and proven if ``work`` is a retry and a proven worker exists."""
        if ident in self.quarantined:
            return False
        return not work.attempt or ident in self.proven or not self.proven

    def to_free_worker(self, work: Work, remote_only: bool = False) -> bool:
        """Give ``work`` to an idle worker, failing that to one that may take more (the
        design's prefetch rule); False if there is none. A retry waits for a proven worker."""
        picky = work.attempt and self.proven
        for candidates in (self.idle, self.short):
            skipped = []
            while candidates:
                ident = candidates.popleft()
                w = self.workers.get(ident)
                if w is None or (candidates is self.short and not self.policy.takes_more(w)):
                    continue
                if candidates is self.idle and w.held:
                    continue  # stale entry
                if ident in self.quarantined:
                    continue
                if (remote_only and ident in self.local) or ident in self.silent \
                        or (picky and ident not in self.proven):
                    skipped.append(ident)
                    continue
                if self._give(ident, w, work):
                    candidates.extend(skipped)
                    return True
            candidates.extend(skipped)
        return False

    def ready(self, ident: bytes, name: str, host: str, pid: int, *, local: bool = False) -> bool:
        """A worker announced itself; False if refused: READY is believed only from a worker
        that holds nothing."""
        w = self.workers.get(ident)
        if w is not None:
            if w.held:  # a live worker that reconnected still runs its batches: they stay
                self.counts["refused_ready"] += 1
                return False
            return True  # idle, or about to be given work: nothing changes
        self.workers[ident] = WorkerState(name, host, pid, local=local, progress=self.clock())
        if ident not in self.quarantined:
            self._next(ident)
        return True

    def done(self, ident: bytes, run: int, batch_id: int) -> bool:
        """A worker finished its batches up to and including (run, batch_id): a worker runs
        them in the order given, and one DONE may cover several. False, and nothing changes,
        unless it holds that batch."""
        w = self.workers.get(ident)
        k = None if w is None else next(
            (i for i, h in enumerate(w.held) if h.work.batch_id == batch_id
             and h.work.run == run), None)
        if k is None:
            self.counts["refused_done"] += 1
            return False
        held = w.held
        finished = [held.popleft().work for _ in range(k + 1)]
        for work in finished:
            w.held_cost -= work.cost_s
        if not held:
            w.held_cost = 0.0  # no drift from the float sums
        w.progress = self.clock()
        self.acks.done(ident, finished, w.progress)
        if ident in self.quarantined:
            return True
        if not w.held:
            self._next(ident)
        else:
            if w.held[0].since < w.progress:
                w.held[0].since = w.progress  # its deadline runs from when it can start
            self._refill(ident, w)
        self._drain_pending()  # the design may place more now (the adaptive broker: one ahead)
        return True

    def _refill(self, ident: bytes, w: WorkerState) -> None:
        """Top a busy worker up to what the design lets it hold."""
        while self.pending and self.policy.takes_more(w):
            work = self._pop_for(ident)
            if work is None:
                break
            if not self._give(ident, w, work):
                self.pending.appendleft(work)
                return
        if self.policy.takes_more(w) and ident not in self.short:
            self.short.append(ident)

    def lose(self, ident: bytes) -> None:
        """A worker is gone: retry its batches once, or fail them; hand out what waits."""
        w = self.workers.pop(ident, None)
        if w is None:
            name = ident.decode(errors="replace")
            self.requeue(self.policy.lost_local(ident), name,
                         f"worker {name} died running this batch")
            return
        _discard(self.idle, ident)
        _discard(self.short, ident)
        self.proven.discard(ident)
        self.requeue([h.work for h in w.held] + self.policy.lost_local(ident), w.name,
                     f"worker {w.name} died running this batch")

    def undeliverable(self, ident: bytes, works: list) -> None:
        """Batches handed to a worker whose connection turned out to be gone when they were
        sent (the server sends what it gave in one message per pass): they never reached it, so
        they go back to the front of the queue as they were; the worker is lost."""
        w = self.workers.get(ident)
        if w is not None:
            mine = {id(x) for x in works}
            kept = deque(h for h in w.held if id(h.work) not in mine)
            w.held, w.held_cost = kept, sum(h.work.cost_s for h in kept)
        self.lose(ident)
        self.pending.extendleft(reversed(works))
        self._drain_pending()

    def release(self, ident: bytes) -> None:
        """A remote worker holds its batches far too long (wedged, partitioned, or keeping
        them): retry them elsewhere, and give it nothing until it shows life (``silent``). It
        stays known: once it answers again it takes work like any other."""
        w = self.workers.get(ident)
        if w is None:
            return
        held = [h.work for h in w.held]
        w.held.clear()
        w.held_cost = 0.0
        _discard(self.short, ident)
        self.silent.add(ident)
        self.proven.discard(ident)  # retries do not wait for it
        if ident not in self.idle and ident not in self.quarantined:
            self.idle.append(ident)
        self.requeue(held, w.name, f"held by worker {w.name} far past its ideal time")

    def requeue(self, works: list, name: str, why: str = "") -> None:
        """Batches a lost worker held: each retried once (ahead of the queue), or failed
        (``why``: the reason its tasks carry)."""
        for work in reversed(works):
            if work.attempt + 1 < MAX_ATTEMPTS:
                self.counts["retried"] += 1
                self.pending.appendleft(work._replace(attempt=work.attempt + 1))
            else:
                self.counts["failed_batches"] += 1
                self.fail(work, name, why or f"worker {name} died running this batch")
        self._drain_pending()

    # -- acknowledgements (comlab.system.acks) -------------------------------------------------
    def ack(self, run: int, accepted: bytes, forged: list) -> None:
        """The client took these (batch_id, attempt) pairs (an ACK column: settled in bulk,
        ``judge_unacked``), and found these forged (acted on at once)."""
        self.acks.ack(run, accepted)
        if not forged:
            return
        for ident, work, (b, a) in self.acks.forged(run, forged):
            if ident is None:  # not DONE yet: whoever holds that batch forged it (its tasks
                found = next(((i, w, h) for i, w in self.workers.items() for h in w.held
                              if (h.work.run, h.work.batch_id, h.work.attempt) == (run, b, a)),
                             None)  # have their records at the client: not retried)
                if found is not None:
                    ident, w, h = found
                    w.held.remove(h)
                    w.held_cost = sum(x.work.cost_s for x in w.held)
            if ident is not None:
                self.counts["forged"] += 1
                w = self.workers.get(ident)
                name = w.name if w is not None else ident.decode(errors="replace")
                self.quarantine(ident, f"worker {name} quarantined: its results of batch {b} "
                                       "failed their seal (forged)")

    def judge_unacked(self) -> None:
        """Batches DONE long ago whose results the client never acknowledged: retried (or
        failed); their worker quarantined when the evidence is against it (acks)."""
        self.proven.update(i for i in self.acks.settle() if i in self.workers)
        for e, blamed in self.acks.overdue():
            self.counts["unacked"] += 1
            w = self.workers.get(e.ident)
            name = w.name if w is not None else e.ident.decode(errors="replace")
            why = f"worker {name} said DONE, but the results of batch {e.work.batch_id} " \
                  "never arrived"
            if blamed and w is not None and not w.local:
                if e.ident in self.proven:
                    self.proven.discard(e.ident)  # its next miss quarantines it
                else:
                    why = f"worker {name} quarantined: results of batch " \
                          f"{e.work.batch_id} never arrived"
                    self.quarantine(e.ident, why)
            self.requeue([e.work], name, why)

    def quarantine(self, ident: bytes, why: str) -> None:
        """A worker that lied: no more work; what it holds or claimed is retried elsewhere.
        The last worker not quarantined is not: the word against it is a client's, and a
        hostile client must not leave a server with no one to run other clients' batches."""
        if ident in self.quarantined:
            return
        if not any(i != ident and i not in self.quarantined for i in self.workers):
            w = self.workers.get(ident)
            self.requeue(list(self.acks.of_worker(ident)), w.name if w else "?", why)
            return
        self.counts["quarantined"] += 1
        if len(self.quarantined) >= QUARANTINE_KEPT:
            self.quarantined.pop(next(iter(self.quarantined)))
        self.quarantined[ident] = why
        self.proven.discard(ident)
        _discard(self.idle, ident)
        _discard(self.short, ident)
        w = self.workers.get(ident)
        name = w.name if w is not None else ident.decode(errors="replace")
        claimed = self.acks.of_worker(ident)
        held = [h.work for h in w.held] if w is not None else []
        if w is not None:
            w.held.clear()
            w.held_cost = 0.0
        self.requeue(held + claimed, name, why)

    def drop_run(self, run: int) -> int:
        """Forget the queued (not yet handed out) batches of a run, and what waits for its
        acknowledgements; the number of tasks."""
        self.acks.drop_run(run)
        kept = deque(w for w in self.pending if w.run != run)
        n = sum(w.n for w in self.pending if w.run == run) + self.policy.drop_run(run)
        self.pending = kept
        self.counts["dropped_tasks"] += n
        return n

    def overdue(self, slack_s: float, factor: float, remote_slack_s: float | None = None,
                per_task_s: float = 0.0) -> list[bytes]:
        """Workers whose oldest batch has run longer than ``factor`` x (its cost + ``per_task_s``
        per task) + ``slack_s`` (``remote_slack_s`` for remote workers: no sentinel, no
        heartbeat can tell a wedged peer from a slow one, and a hostile one may simply keep its
        batch)."""
        t = self.clock()
        remote = slack_s if remote_slack_s is None else remote_slack_s
        return [i for i, w in self.workers.items()
                if w.held and t - w.held[0].since > factor * (w.held[0].work.cost_s
                                                              + per_task_s * w.held[0].work.n)
                + (slack_s if i in self.local else remote)]

    # -- internals -----------------------------------------------------------------------------
    def _next(self, ident: bytes) -> None:
        """An idle worker: give it the next pending batch, or mark it idle."""
        if ident in self.quarantined:
            return
        w = self.workers[ident]
        work = self._pop_for(ident) if self.policy.brokers(ident, self) else None
        if work is not None:
            if not self._give(ident, w, work):
                self.pending.appendleft(work)
                return
            self._refill(ident, w)
            return
        self.idle.append(ident)

    def _give(self, ident: bytes, w: WorkerState, work: Work) -> bool:
        """Hand ``work`` to a worker; False if it is unreachable (then it is lost, and the
        caller still owns ``work``)."""
        if not self.send(ident, work):
            self.lose(ident)
            return False
        t = self.clock()
        if not w.held:
            w.progress = t
        w.held.append(Held(work, t))
        w.held_cost += work.cost_s
        if self.policy.takes_more(w):
            self.short.append(ident)
        return True

    def _pop_for(self, ident: bytes) -> Work | None:
        """The next pending batch this worker may take (``may_take``): a retry waits for a
        proven worker, and the batches behind it go on."""
        pending = self.pending
        if not pending or ident in self.quarantined:
            return None
        if not pending[0].attempt or ident in self.proven or not self.proven:
            return pending.popleft()
        for i, work in enumerate(pending):
            if not work.attempt:
                del pending[i]
                return work
        return None

    def _drain_pending(self) -> None:
        """Hand out what waits: to idle workers, or (queue design) onto the queue. A retry no
        proven worker is free for stays at the front; the batches behind it go on."""
        waiting = []
        while self.pending:
            work = self.pending.popleft()
            if not self.policy.place(self, work):
                if work.attempt and self.proven:
                    waiting.append(work)
                    continue
                self.pending.appendleft(work)
                break
        self.pending.extendleft(reversed(waiting))


def _discard(q: deque, item) -> None:
    try:
        q.remove(item)
    except ValueError:
        pass
