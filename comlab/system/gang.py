"""A gang of kept threads: each job of a call gets a thread of its own, at once.

What thread-per-task needs, and no more. ThreadPoolExecutor pays, per task, a Future, a queue
hand-off and (waiting on futures in order) a wake-up of the caller for each result; here a job
costs one lock release to wake its parked thread, and the caller wakes once, when the last job
of the call is done. Threads are kept between calls, so none is started per job once warm, and
new ones are started only when a call has more jobs than threads are parked.

Bounded: a gang never has more than its ``limit`` threads (at most MAX_THREADS; a worker's is
its share of the machine, comlab.system.limits.thread_share: threads are processes to the
kernel, and pid_max is shared by everything on the machine). A call with more jobs runs them in
waves of ``limit``; a thread that cannot be started (RuntimeError: can't start new thread) fails
its job, never the caller, and the threads already started are kept.
"""

from __future__ import annotations

import threading

from .limits import GANG_MAX as MAX_THREADS


class _Call:
    __slots__ = ("results", "left", "lock", "done")

    def __init__(self, n: int) -> None:
        self.results = [None] * n
        self.left = n
        self.lock = threading.Lock()
        self.done = threading.Lock()
        self.done.acquire()


class _Slot:
    """One kept thread, parked on its own lock until it is given a job."""

    __slots__ = ("go", "job", "thread")

    def __init__(self, gang: Gang) -> None:
        self.go = threading.Lock()
        self.go.acquire()
        self.job = None
        self.thread = threading.Thread(target=gang._serve, args=(self,), daemon=True,
                                       name=f"{gang.name}-{len(gang._all)}")
        self.thread.start()


class Gang:
    def __init__(self, name: str = "gang", limit: int = MAX_THREADS) -> None:
        self.name = name
        self.limit = max(1, min(limit, MAX_THREADS))
        self._parked: list[_Slot] = []
        self._all: list[_Slot] = []
        self._lock = threading.Lock()

    def map(self, fn, args_list: list) -> list:
        """fn(*args) for every args, each on its own thread at once; results in order."""
        wave = self.limit
        if len(args_list) > wave:
            return [r for i in range(0, len(args_list), wave)
                    for r in self.map(fn, args_list[i:i + wave])]
        n = len(args_list)
        if not n:
            return []
        slots, error = self._take(n)
        call = _Call(len(slots))
        for i, slot in enumerate(slots):
            slot.job = (fn, args_list[i], i, call)
            slot.go.release()
        if slots:
            call.done.acquire()
        return call.results + [error] * (n - len(slots))

    def warm(self, n: int) -> int:
        """Have at least n threads parked (at most ``limit``), started now rather than during
        a call; how many are ready (fewer when threads ran out: that only costs speed)."""
        slots, _ = self._take(min(n, self.limit))
        self._park(slots)
        return len(slots)

    def close(self) -> None:
        """Let every parked thread end (daemon threads: a busy one ends with the process)."""
        with self._lock:
            parked, self._parked = self._parked, []
        for slot in parked:
            slot.job = None
            slot.go.release()

    def _take(self, n: int) -> tuple[list[_Slot], BaseException | None]:
        """n slots, or fewer and the error that stopped a thread from starting."""
        with self._lock:
            k = min(n, len(self._parked))
            slots = self._parked[len(self._parked) - k:]
            del self._parked[len(self._parked) - k:]
        while len(slots) < n:
            try:
                slot = _Slot(self)
            except RuntimeError as exc:  # can't start new thread
                return slots, exc
            self._all.append(slot)
            slots.append(slot)
        return slots, None

    def _park(self, slots: list[_Slot]) -> None:
        with self._lock:
            self._parked.extend(slots)

    def _serve(self, slot: _Slot) -> None:
        while True:
            slot.go.acquire()
            if slot.job is None:
                return
            fn, args, i, call = slot.job
            slot.job = None
            try:
                call.results[i] = fn(*args)
            except BaseException as exc:  # the caller decides; a job must not kill its thread
                call.results[i] = exc
            self._park([slot])
            with call.lock:
                call.left -= 1
                last = call.left == 0
            if last:
                call.done.release()
