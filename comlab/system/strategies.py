"""How a worker runs a batch: the strategies the server can name in a work item.

A worker knows nothing of them beyond ``get(spec)``; the server picks the spec (``name`` or
``name:param``) per batch, so it can change between batches. Every strategy emulates a task the
same way: wait ``wait`` seconds (sleep, or busy work for cpu-bound), then answer ``response``.
A task with wait 0 completes inline without calling sleep (sleep(0) costs ~78 us here).
A server running a task of its own (comlab.system.usertask) has every strategy call it instead
(``use_task``): then no task is inline, a wait is only the task's input.

Each strategy class declares everything about itself, and the rest of comlab reads it from the
class (through the registry, ``lookup``): ``forms`` (how the command line names it, with help:
``comlab run --help``), ``parse(param)`` (its parameter), ``duration(waits, param)`` (its
ideal-time model: how long a perfect worker takes for one batch; comlab.lab.ideal, the server's
cost of a batch), ``cpu_limited`` (comlab.lab.ideal, comlab.lab.stability) and ``simulated_as``
(its counterpart in the model, comlab.sim.model). So a new strategy is one class, registered
with ``@register`` (the built-in ones at the end of this module), and one test; one defined
outside comlab reaches the lab's other processes through ``COMLAB_PLUGINS``
(comlab.system.plugins).

Threads: a worker's threaded strategies stay within its share of the machine (``THREADS``, set
by ``set_threads`` in the server and its workers from comlab.system.limits.thread_share); a
thread-per-task batch with more tasks runs in waves of that many, and its ideal time says so.

``run(responses, waits)`` returns columns (statuses, responses, t_started, t_finished, errors);
errors is None when every task succeeded, else one str-or-None per task. A task that raises is
``failed`` with the error text; the batch and the worker go on.
"""

from __future__ import annotations

import heapq
import threading
import time
from array import array as _array
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from . import plugins
from .gang import MAX_THREADS, Gang
from .protocol import FAILED, OK

now = time.monotonic_ns
THREADS = MAX_THREADS  # threads a worker's strategy may run at once (set_threads)


def set_threads(n: int) -> None:
    """This process's per-worker thread share: the waves of thread-per-task (ideal time and
    gang) and the largest thread-pool (``check``)."""
    global THREADS
    THREADS = max(1, min(int(n), MAX_THREADS))


def list_schedule(durations: Sequence[float], machines: int,
                  releases: Sequence[float] | None = None) -> float:
    """Makespan of jobs taken in order by the first free of `machines` identical machines."""
    if machines < 1:
        raise ValueError("need at least one machine")
    free = [0.0] * min(machines, max(len(durations), 1))
    heapq.heapify(free)
    end = 0.0
    for i, d in enumerate(durations):
        start = heapq.heappop(free)
        if releases is not None:
            start = max(start, releases[i])
        finish = start + d
        heapq.heappush(free, finish)
        end = max(end, finish)
    return end


def _positive_int(name: str, param: str | None, default: int) -> int:
    if param is None or param == "":
        return default
    if not param.isdigit() or int(param) < 1:
        raise ValueError(f"strategy {name}:{param}: parameter must be a positive integer")
    return int(param)


SIMULATED = ("sequential", "threads", "one-core")  # the model's counterparts (simulated_as)


class Strategy:
    """A way to run a batch; a subclass names itself and is registered (``register``)."""

    name = ""
    forms: dict[str, str] = {}  # how the command line names it -> its help (default: name)
    cpu_limited = False  # True: at most one batch per core runs at once (ideal model)
    inline_zero_waits = True  # a batch of zero-wait tasks runs inline (False: map sees it)
    # Its counterpart in the model (comlab.sim.model.run_batch), one of SIMULATED: tasks one
    # after another; on threads (at most ``threads(param)`` at once, 0: one per task); or on
    # threads that take turns on one core (the GIL). None: the model refuses it.
    simulated_as: str | None = None
    inline_below = 0.0  # map runs a task with a wait <= this inline, on the worker's thread

    @classmethod
    def parse(cls, param: str | None):
        """The parameter's value; ValueError for one this strategy does not take."""
        if param:
            raise ValueError(f"strategy {cls.name!r} takes no parameter")
        return None

    @classmethod
    def duration(cls, waits: Sequence[float], param: str | None = None,
                 threads: int | None = None) -> float:
        """Ideal time of one batch: the sum of its waits, one after another (override).
        ``threads``: the worker's thread share (default THREADS)."""
        return float(sum(waits))

    @classmethod
    def threads(cls, param: str | None = None) -> int:
        """Threads one batch needs at once beyond the worker's own (override); the model's
        threads counterpart runs at most this many tasks at once (0: one thread per task)."""
        return 0

    def __init__(self, param: str | None = None) -> None:
        self.param = param

    def task(self, response, wait):
        """The emulated task: what a strategy calls for each task."""
        if wait > 0:
            time.sleep(wait)
        return response

    def use_task(self, task) -> None:
        """Run ``task(response, wait)`` for every task instead of the emulation (the server's
        own task, comlab.system.usertask): a wait is then only the task's input, so no task
        runs inline, each on the strategy's threads."""
        self.task = task
        self.inline_zero_waits = False
        self.inline_below = -1.0

    def timed(self, response, wait) -> tuple:
        """The task with its t_started and t_finished stamps (comlab.schema), taken in the
        thread that runs it."""
        t_started = now()
        try:
            out = self.task(response, wait)
            err = None
        except Exception as exc:  # the task's failure is data, not the worker's
            out, err = None, f"{type(exc).__name__}: {exc}"
        t_finished = now()
        return out, t_started, t_finished, err

    def run(self, responses: list, waits: list) -> tuple:
        if self.inline_zero_waits and not any(waits):
            # Every task has wait 0: each runs inline, in order, and takes no time, so one
            # stamp per task is both its start and its finish (taken as it runs).
            stamps = [now() for _ in responses]
            return [OK] * len(stamps), list(responses), stamps, stamps, None
        return _columns(self.map(responses, waits))

    def map(self, responses: list, waits: list) -> list:
        raise NotImplementedError

    @staticmethod
    def inline_stamps(n: int) -> bytes:
        """The stamps (int64 column) of n zero-wait tasks run inline, in order: each takes no
        time, so one stamp per task is both its t_started and its t_finished (comlab.schema),
        taken as it runs (the worker's path for zero-wait batches, no per-task objects)."""
        return _array("q", [now() for _ in range(n)]).tobytes()

    def warm(self, n: int) -> None:
        """Get ready for batches of n tasks (threaded strategies start their threads)."""

    def close(self) -> None:
        pass


def _columns(rows: list) -> tuple:
    outs, starts, ends, errs = (list(col) for col in zip(*rows)) if rows else ([], [], [], [])
    if any(e is not None for e in errs):
        statuses = [OK if e is None else FAILED for e in errs]
        return statuses, outs, starts, ends, errs
    return [OK] * len(outs), outs, starts, ends, None


class Sequential(Strategy):
    name = "sequential"
    forms = {"sequential": "one task after another on the worker's main thread"}
    simulated_as = "sequential"

    def map(self, responses, waits):
        timed = self.timed
        return [timed(r, w) for r, w in zip(responses, waits)]


class ThreadPerTask(Strategy):
    """Every task of a batch on a thread of its own at once (the seed's design).

    The threads are a kept gang (comlab.gang): no task waits for a thread, none is started per
    task once warm (CONNECT warms the gang to the batch size before a client's clock starts),
    and a batch costs one wake-up per task plus one for the worker. Zero-wait tasks run inline.
    """

    name = "thread-per-task"
    forms = {"thread-per-task": "every task of a batch at once on its own (kept) thread"}
    simulated_as = "threads"

    @classmethod
    def duration(cls, waits, param=None, threads=None):
        """The longest wait; a batch larger than the worker's thread share runs in waves."""
        if not len(waits):
            return 0.0
        wave = threads or THREADS
        if len(waits) <= wave:
            return float(max(waits))
        return float(sum(max(waits[i:i + wave]) for i in range(0, len(waits), wave)))

    def __init__(self, param=None):
        super().__init__(param)
        self.gang = Gang(self.name, THREADS)

    def map(self, responses, waits):
        timed, below = self.timed, self.inline_below
        rows = [timed(r, w) if w <= below else None for r, w in zip(responses, waits)]
        slow = [i for i, row in enumerate(rows) if row is None]
        if slow:
            done = self.gang.map(timed, [(responses[i], waits[i]) for i in slow])
            for i, row in zip(slow, done):
                rows[i] = row if isinstance(row, tuple) else _crashed(row)
        return rows

    def warm(self, n):
        self.gang.warm(n)

    def close(self):
        self.gang.close()


def _crashed(exc: BaseException) -> tuple:
    t = now()
    return None, t, t, f"{type(exc).__name__}: {exc}"


class ThreadPool(Strategy):
    """A bounded pool smaller than a batch: tasks queue for threads. Zero-wait tasks inline."""

    name = "thread-pool"
    forms = {"thread-pool:N": "N threads per worker, default 4; tasks queue for threads"}
    simulated_as = "threads"

    @classmethod
    def parse(cls, param):
        n = _positive_int(cls.name, param, 4)
        if n > MAX_THREADS:
            raise ValueError(f"strategy {cls.name}:{param}: at most {MAX_THREADS} threads")
        return n

    @classmethod
    def duration(cls, waits, param=None, threads=None):
        return list_schedule(waits, cls.parse(param))

    @classmethod
    def threads(cls, param=None):
        return cls.parse(param)

    def __init__(self, param=None):
        super().__init__(param)
        self.size = self.parse(param)
        self.pool = ThreadPoolExecutor(self.size, thread_name_prefix=self.name)

    def map(self, responses, waits):
        timed, below = self.timed, self.inline_below
        submit = self.pool.submit
        rows = [submit(timed, r, w) if w > below else timed(r, w)
                for r, w in zip(responses, waits)]
        return [row.result() if not isinstance(row, tuple) else row for row in rows]

    def warm(self, n):
        """Start the pool's threads now: tasks that wait for each other force one thread each."""
        n = min(n, self.size)
        if n < 2:
            return
        barrier = threading.Barrier(n)
        for f in [self.pool.submit(barrier.wait, 2.0) for _ in range(n)]:
            f.exception()

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


class CpuBound(ThreadPerTask):
    """Busy work worth ``wait`` seconds of one core's CPU time instead of a sleep, thread per task.

    A task computes until its own thread has used ``wait`` s of CPU (time.thread_time), so its
    length does not depend on a calibration taken under some other load. A thread waiting for
    the GIL uses no CPU time: threads of one process take turns, and a batch lasts the sum of
    its waits.
    """

    name = "cpu-bound"
    forms = {"cpu-bound": "busy work worth `wait` seconds of CPU per task, thread per task: "
                          "shows the GIL"}
    cpu_limited = True
    simulated_as = "one-core"

    @classmethod
    def duration(cls, waits, param=None, threads=None):
        """The sum of its waits: the GIL lets one thread of a process compute at a time."""
        return float(sum(waits))

    def task(self, response, wait):
        end = time.thread_time() + wait
        while time.thread_time() < end:
            _spin(500)
        return response


def _spin(n: int) -> None:
    x = 0
    for _ in range(n):
        x += 1


class Faulty(Sequential):
    """Fault injection: every Nth task of a batch (faulty:N, default 2) raises."""

    name = "faulty"
    forms = {"faulty:N": "every Nth task raises, default 2: for fault experiments"}
    inline_zero_waits = False
    simulated_as = None  # the model runs every task ok

    @classmethod
    def parse(cls, param):
        return _positive_int(cls.name, param, 2)

    def __init__(self, param=None):
        super().__init__(param)
        self.every = self.parse(param)

    def map(self, responses, waits):
        rows = []
        for i, (r, w) in enumerate(zip(responses, waits)):
            if (i + 1) % self.every == 0:
                t = now()
                rows.append((None, t, t, f"RuntimeError: injected fault in task {i} of the batch"))
            else:
                rows.append(self.timed(r, w))
        return rows


STRATEGIES: dict[str, type[Strategy]] = {}  # the registry: name -> class (``register``)
DEFAULT = ThreadPerTask.name


def register(cls: type[Strategy]) -> type[Strategy]:
    """Add a strategy class to the registry (a class decorator); TypeError for a class that is
    not one, ValueError for a name that is taken or cannot be written in a spec."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(f"{cls!r} is not a subclass of comlab.system.strategies.Strategy")
    plugins.check_name("strategy", cls, STRATEGIES)
    if cls.simulated_as is not None and cls.simulated_as not in SIMULATED:
        raise ValueError(f"strategy {cls.name!r}: simulated_as must be None or one of "
                         f"{', '.join(SIMULATED)}, not {cls.simulated_as!r}")
    STRATEGIES[cls.name] = cls
    _specs.clear()
    return cls


def unregister(cls: type[Strategy]) -> None:
    """Remove a class ``register`` added (a test's own strategy, when the test ends)."""
    if STRATEGIES.get(cls.name) is cls:
        del STRATEGIES[cls.name]
    _specs.clear()


def known() -> dict[str, type[Strategy]]:
    """The registry, with the classes COMLAB_PLUGINS names (comlab.system.plugins) added."""
    for cls in plugins.classes(Strategy):
        if STRATEGIES.get(cls.name) is not cls:
            register(cls)
    return STRATEGIES


def usage() -> str:
    """Every strategy's forms with their help, for ``--help``."""
    try:
        classes = known().values()
    except ValueError:  # a bad COMLAB_PLUGINS: said when a name is looked up, not in --help
        classes = STRATEGIES.values()
    return "; ".join(f"{form} ({text})" if text else form for cls in classes
                     for form, text in (cls.forms or {cls.name: ""}).items())


def lookup(spec: str) -> tuple[type[Strategy], str | None]:
    """(strategy class, parameter) of a spec ``name`` or ``name:param``; ValueError if bad."""
    found = _specs.get(spec) if isinstance(spec, str) else None
    if found is None:
        if not isinstance(spec, str):
            raise ValueError(f"a strategy is named by a string, not {type(spec).__name__}")
        name, _, param = spec.partition(":")
        cls = STRATEGIES.get(name) or known().get(name)
        if cls is None:
            raise ValueError(f"unknown strategy {spec[:60]!r}; known: {', '.join(STRATEGIES)}"
                             f" (one of your own: {plugins.HINT})")
        cls.parse(param or None)
        found = (cls, param or None)
        if len(_specs) < 1024:
            _specs[spec] = found
    return found


_specs: dict[str, tuple] = {}


def check(spec: str) -> str:
    """Validate a strategy spec early (server start), so a typo is not a worker's surprise;
    a thread pool larger than this process's thread share (THREADS) is refused."""
    cls, param = lookup(spec)
    if cls.threads(param) > THREADS:
        raise ValueError(f"strategy {spec}: {cls.threads(param)} threads per worker; this "
                         f"machine's share is {THREADS} per worker (comlab.system.limits)")
    return spec


def duration(spec: str, waits: Sequence[float], threads: int | None = None) -> float:
    """Ideal time of one batch under ``spec`` (the one place that asks the class: the server's
    cost of a batch, the lab's ideal time, the model)."""
    cls, param = lookup(spec)
    return cls.duration(waits, param, threads) if len(waits) else 0.0


def cpu_limited(spec: str) -> bool:
    """Does ``spec`` compute (at most one batch per core at once)? False for a name this
    process does not know (a result of a strategy defined elsewhere)."""
    try:
        return lookup(spec)[0].cpu_limited
    except ValueError:
        return False


class Cache:
    """One instance per spec for the life of a worker, so pools and threads are kept."""

    def __init__(self, task=None) -> None:
        """``task``: the server's own task for every strategy (``Strategy.use_task``)."""
        self._made: dict[str, Strategy] = {}
        self.task = task

    def get(self, spec: str) -> Strategy:
        strategy = self._made.get(spec)
        if strategy is None:
            cls, param = lookup(spec)
            strategy = self._made[spec] = cls(param)
            if self.task is not None:
                strategy.use_task(self.task)
        return strategy

    def close(self) -> None:
        for strategy in self._made.values():
            strategy.close()
        self._made.clear()


for _cls in (ThreadPerTask, ThreadPool, Sequential, CpuBound, Faulty):
    register(_cls)
