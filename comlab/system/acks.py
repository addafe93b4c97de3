"""End-to-end acknowledgement: which of the workers' DONEs were true.

A worker's DONE says "my results of these batches are sent"; only the client knows whether they
arrived. The client acknowledges the batches it took (an ACK per pass of its loop, on its PUSH to
the server: comlab.system.protocol.Ack), and the book here matches ACKs to DONEs. A batch DONE
``ACK_WAIT_S`` ago whose ACK has not come is judged:

* blamed on its worker when the client has since acknowledged a batch some worker finished
  ``ACK_MARGIN_S`` or more after it (the client is alive and taking results, and this one never
  came): retried, and the worker quarantined (or, if its results used to arrive, demoted: its
  next miss quarantines it);
* retried without blame after ``ACK_GIVE_UP_S`` with no such evidence (the client stalled or
  lags; a late duplicate costs nothing, a lost batch would);
* dropped when its run ended (the client is done or gone).

Evidence is the order of DONEs, not a clock race: ACKs travel behind the client's batches, so
under back-pressure they are late, but they are late for every worker alike; and the client
sends an ACK only once it has drained its socket, so a result that had reached it is in that
ACK or an earlier one, whichever worker's connection it came on. The margin covers the rest:
one worker's results taking longer to travel than another's. Only runs whose client said HELLO are tracked (``tracked``): a client that
never acknowledges can cost its own batches a retry, never a worker its standing.

An ACK that overtakes its DONE (the worker sends results, then DONE) is kept as ``early`` until
the DONE comes (``EARLY_MAX`` per run, so a client cannot grow the book without bound). The hot
path only appends; matching is done in bulk once a second (``settle``): per batch it costs the
server a fraction of a microsecond, not a dict entry made and removed per batch as it comes.
"""

from __future__ import annotations

import time

import numpy as np

ACK_WAIT_S = 2.0
ACK_MARGIN_S = 0.1
ACK_GIVE_UP_S = 30.0
EARLY_MAX = 65536  # acknowledgements kept per run for DONEs not seen yet
MAX_ACK_PAIRS = 65536  # per ACK message (a client sends one every 50 ms at most)


def keys_of(pairs) -> "np.ndarray":
    """(batch_id, attempt) pairs as one int64 key each (attempt < 256)."""
    return pairs[:, 0] * 256 + (pairs[:, 1] & 255)


class Unacked:
    __slots__ = ("ident", "work", "t")

    def __init__(self, ident: bytes, work, t: float) -> None:
        self.ident, self.work, self.t = ident, work, t


class AckBook:
    """The hot path only appends (a DONE's batches, an ACK's bytes); ``settle`` matches them,
    in bulk, from the server's once-a-second chores (and before a forged pair is looked up)."""

    def __init__(self, tracked, clock=time.monotonic) -> None:
        """``tracked``: the runs whose clients acknowledge at first; then ``track`` adds one,
        ``drop_run`` forgets one."""
        self.tracked, self.clock = set(tracked), clock
        self.dones: list[tuple] = []  # (t, ident, works) as they came, not yet settled
        self.acks: dict[int, list] = {}  # run -> ACK columns (bytes) not yet settled
        self.early: dict[int, set] = {}  # run -> keys acknowledged before their DONE
        self.waiting: dict[tuple, Unacked] = {}  # (run, key) -> entry, in DONE order
        self.latest: dict[int, float] = {}  # run -> the latest DONE among its acked batches

    def done(self, ident: bytes, works: list, t: float) -> None:
        self.dones.append((t, ident, works))

    def ack(self, run: int, accepted: bytes) -> None:
        if run in self.tracked and accepted:
            if len(accepted) > 16 * MAX_ACK_PAIRS:
                raise ValueError(f"ACK of {len(accepted) // 16} batches (at most "
                                 f"{MAX_ACK_PAIRS})")
            self.acks.setdefault(run, []).append(accepted)

    def settle(self) -> list[bytes]:
        """Match what came since the last call; the workers whose DONEs proved true."""
        early = self.early
        for run, parts in self.acks.items():
            got = keys_of(np.frombuffer(b"".join(parts), np.int64).reshape(-1, 2)).tolist()
            keys = early.setdefault(run, set())
            keys.update(got)
            if len(keys) > EARLY_MAX:  # a client acknowledging what no one said DONE
                early[run] = set(list(keys)[-EARLY_MAX:])
        self.acks = {}
        proven = set()
        tracked, waiting, latest = self.tracked, self.waiting, self.latest
        none = frozenset()
        for t, ident, works in self.dones:
            for w in works:
                run = w.run
                key = w.batch_id * 256 + (w.attempt & 255)
                keys = early.get(run, none)
                if key in keys:
                    keys.discard(key)
                    if t > latest.get(run, -1.0):
                        latest[run] = t
                    proven.add(ident)
                elif run in tracked:
                    waiting[(run, key)] = Unacked(ident, w, t)
        self.dones = []
        for run, keys in list(early.items()):  # acks of DONEs settled before
            for key in [k for k in keys if (run, k) in waiting]:
                e = waiting.pop((run, key))
                keys.discard(key)
                self._took(run, e.t)
                proven.add(e.ident)
        return list(proven)

    def forged(self, run: int, pairs: list) -> list[tuple]:
        """Pairs the client found forged: (worker that said DONE or None, work or None, pair);
        the entries leave the book (the client has its records of those tasks)."""
        self.settle()
        out = []
        for b, a in pairs:
            e = self.waiting.pop((run, b * 256 + (a & 255)), None)
            out.append((None, None, (b, a)) if e is None else (e.ident, e.work, (b, a)))
        return out

    def _took(self, run: int, t_done: float) -> None:
        if t_done > self.latest.get(run, -1.0):
            self.latest[run] = t_done

    def overdue(self) -> list[tuple[Unacked, bool]]:
        """Entries judged now: (entry, blamed); each leaves the book. Call ``settle`` first."""
        t = self.clock()
        out = []
        for key, e in list(self.waiting.items()):
            age = t - e.t
            if age < ACK_WAIT_S:
                break  # DONE order: the rest are younger
            run = key[0]
            if run not in self.tracked:
                del self.waiting[key]
            elif self.latest.get(run, -1.0) >= e.t + ACK_MARGIN_S:
                del self.waiting[key]
                out.append((e, True))
            elif age >= ACK_GIVE_UP_S:
                del self.waiting[key]
                out.append((e, False))
        for run in [r for r in self.early if r not in self.tracked]:
            del self.early[run]
        return out

    def of_worker(self, ident: bytes) -> list:
        """Take every entry a worker is waiting on (it is quarantined): their works."""
        self.settle()
        keys = [k for k, e in self.waiting.items() if e.ident == ident]
        return [self.waiting.pop(k).work for k in keys]

    def track(self, run: int) -> None:
        self.tracked.add(run)

    def drop_run(self, run: int) -> None:
        self.tracked.discard(run)
        for k in [k for k in self.waiting if k[0] == run]:
            del self.waiting[k]
        self.acks.pop(run, None)
        self.early.pop(run, None)
        self.latest.pop(run, None)
