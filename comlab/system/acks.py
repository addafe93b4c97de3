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
the DONE comes (``EARLY_MAX`` per run, so a client cannot grow the book without bound).
"""

from __future__ import annotations

import time

ACK_WAIT_S = 2.0
ACK_MARGIN_S = 0.1
ACK_GIVE_UP_S = 30.0
EARLY_MAX = 4096


class Unacked:
    __slots__ = ("ident", "work", "t")

    def __init__(self, ident: bytes, work, t: float) -> None:
        self.ident, self.work, self.t = ident, work, t


class AckBook:
    def __init__(self, tracked, clock=time.monotonic) -> None:
        """``tracked``: the runs whose clients acknowledge (a container, kept up to date)."""
        self.tracked, self.clock = tracked, clock
        self.waiting: dict[tuple, Unacked] = {}  # (run, batch_id, attempt), in DONE order
        self.early: dict[int, dict[tuple, float]] = {}  # run -> {(batch_id, attempt): t}
        self.latest: dict[int, float] = {}  # run -> the latest DONE among its acked batches

    def done(self, ident: bytes, works, t: float) -> list[bytes]:
        """Batches a worker said DONE; the worker if one was already acknowledged (proven)."""
        proven = []
        tracked, waiting = self.tracked, self.waiting
        for w in works:
            run = w.run
            if run not in tracked:
                continue
            key = (w.batch_id, w.attempt)
            early = self.early.get(run)
            if early is not None and early.pop(key, None) is not None:
                self._took(run, t)
                proven = [ident]
            else:
                waiting[(run, *key)] = Unacked(ident, w, t)
        return proven

    def ack(self, run: int, pairs: list) -> list[bytes]:
        """The client took these (batch_id, attempt) pairs; the workers whose DONE they prove."""
        if run not in self.tracked:
            return []
        proven = []
        t = self.clock()
        for b, a in pairs:
            e = self.waiting.pop((run, b, a), None)
            if e is not None:
                self._took(run, e.t)
                proven.append(e.ident)
                continue
            early = self.early.setdefault(run, {})
            if len(early) < EARLY_MAX:
                early[(b, a)] = t
        return proven

    def forged(self, run: int, pairs: list) -> list[tuple]:
        """Pairs the client found forged: (worker that said DONE or None, work or None, pair);
        the entries leave the book (the client has its records of those tasks)."""
        out = []
        for b, a in pairs:
            e = self.waiting.pop((run, b, a), None)
            out.append((None, None, (b, a)) if e is None else (e.ident, e.work, (b, a)))
        return out

    def _took(self, run: int, t_done: float) -> None:
        if t_done > self.latest.get(run, -1.0):
            self.latest[run] = t_done

    def overdue(self) -> list[tuple[Unacked, bool]]:
        """Entries judged now: (entry, blamed); each leaves the book."""
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
        for run, early in list(self.early.items()):
            for key, t_ack in list(early.items()):
                if t - t_ack > ACK_GIVE_UP_S:
                    del early[key]
            if not early:
                del self.early[run]
        return out

    def of_worker(self, ident: bytes) -> list:
        """Take every entry a worker is waiting on (it is quarantined): their works."""
        keys = [k for k, e in self.waiting.items() if e.ident == ident]
        return [self.waiting.pop(k).work for k in keys]

    def drop_run(self, run: int) -> None:
        for k in [k for k in self.waiting if k[0] == run]:
            del self.waiting[k]
        self.early.pop(run, None)
        self.latest.pop(run, None)
