"""The plan of a sweep: one ``RunSpec`` per run, pure (no processes, no files).

Repeats come outermost (every configuration once, then again: load drift on a shared machine
spreads over all configurations); within a repeat, runs with the same (transport, dispatch,
workers) are adjacent and share one server and pool (``groups``); a strategy change between them
is a control message. A run's ``key``
names it across sessions (resume).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field

from .. import arrivals as arrivals_mod
from ..system import dispatch as dispatch_mod, strategies
from . import checks, ideal

TRANSPORTS = ("tcp", "ipc")
RUN_OVERHEAD_S = 0.1  # the lab's own cost per run (about 0.06 s here): the progress bar's floor


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a fresh client against a server of ``workers`` local workers."""
    index: int
    transport: str
    workers: int
    strategy: str
    batch_size: int
    rate: float | None
    repeat: int
    dispatch: str = dispatch_mod.DEFAULT
    arrivals: arrivals_mod.Arrivals = field(default=arrivals_mod.CONSTANT, compare=False)

    @property
    def key(self) -> str:
        key = (f"{self.transport}|{self.workers}|{self.strategy}|{self.batch_size}|"
               f"{self.rate}|{self.repeat}|{self.dispatch}")
        return key if self.arrivals.name == "constant" else f"{key}|{self.arrivals.spec}"

    @property
    def open_loop(self) -> bool:
        return self.rate is not None or self.arrivals.name != "constant"

    @property
    def seed(self) -> int:
        """The schedule's seed: of the run's key, so a rerun (resume) draws the same one."""
        return int.from_bytes(hashlib.blake2b(self.key.encode(), digest_size=4).digest(),
                              "little")

    def schedule(self, n_tasks: int):
        """Each batch's send offset (s; comlab.arrivals), None in closed loop."""
        if not self.open_loop:
            return None
        return self.arrivals.offsets(-(-n_tasks // self.batch_size), self.batch_size,
                                     self.rate, self.seed)

    @property
    def server(self) -> tuple[str, str, int]:
        """Runs with the same (transport, dispatch, workers) share one server."""
        return self.transport, self.dispatch, self.workers

    def label(self, repeats: int | None = None) -> str:
        """Short description for a progress bar."""
        rate = f" {self.rate:g}/s" if self.rate else ""
        if self.arrivals.name != "constant":
            rate += f" {self.arrivals.spec}"
        of = f"/{repeats}" if repeats else ""
        return (f"{self.transport} {self.dispatch} w{self.workers} b{self.batch_size} "
                f"{self.strategy}{rate} r{self.repeat + 1}{of}")


def as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def plan(batch_sizes, workers, repeats: int, strategy=strategies.DEFAULT, transport="tcp",
         rate=None, *, remote_workers: int = 0,
         dispatch=dispatch_mod.DEFAULT, arrivals="constant") -> list[RunSpec]:
    """Every combination of the swept axes x repeats, checked, grouped by server. ``arrivals``
    (specs or comlab.arrivals.Arrivals) is swept within ``rate``."""
    sizes = [int(b) for b in as_list(batch_sizes)]
    pools = [int(w) for w in as_list(workers)]
    strats = [strategies.check(s) for s in as_list(strategy)]
    transports, rates = as_list(transport), as_list(rate)
    designs = [dispatch_mod.check(d) for d in as_list(dispatch)]
    processes = [a if isinstance(a, arrivals_mod.Arrivals) else arrivals_mod.parse(a)
                 for a in as_list(arrivals)]
    check_arrivals(processes, rates)
    for t in transports:
        if t not in TRANSPORTS:
            raise ValueError(f"unknown transport {t!r}; use one of {TRANSPORTS}")
    if not sizes or min(sizes) < 1:
        raise ValueError(f"batch_sizes must be at least 1, not {sizes}")
    if not pools or min(pools) < (0 if remote_workers else 1):
        raise ValueError(f"workers must be at least 1 (0 only with remote_workers), not {pools}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    # Repeats outermost: each repeat measures every configuration in turn, so a machine whose
    # load drifts during a sweep spreads that drift over all of them instead of biasing the
    # configurations that happened to run last (each repeat starts its own servers).
    combos = itertools.product(range(repeats), transports, designs, pools, strats, sizes, rates,
                               processes)
    return [RunSpec(i, t, w, s, b, None if r is None else float(r), k, d, a)
            for i, (k, t, d, w, s, b, r, a) in enumerate(combos)]


def check_arrivals(processes: list, rates: list) -> None:
    """Each arrival process with each rate: poisson and bursty need one, ramp, step and trace
    set their own (rate None); constant without a rate is the closed loop."""
    if not processes:
        raise ValueError("arrivals is empty: give at least one process (constant: as today)")
    traces = {a.spec for a in processes if a.name == "trace"}
    if len(traces) > 1:
        raise ValueError(f"arrivals: one trace per sweep (its tasks are the sweep's), not "
                         f"{len(traces)}")
    for a in processes:
        if a.needs_rate and a.name != "constant" and None in rates:
            raise ValueError(f"arrivals {a.spec!r} needs a rate (tasks/s)")
        if not a.needs_rate and any(r is not None for r in rates):
            raise ValueError(f"arrivals {a.spec!r} sets its own rate: leave rate unset")


def groups(specs: list[RunSpec]) -> list[tuple[tuple[str, str, int], list[RunSpec]]]:
    """Consecutive runs that share one server: [((transport, dispatch, workers), [spec, ...]),
    ...]."""
    return [(server, list(runs))
            for server, runs in itertools.groupby(specs, key=lambda s: s.server)]


def batches(waits, batch_size: int) -> list[list[float]]:
    """The waits of each batch, in sending order."""
    waits = list(waits)
    return [waits[b:b + batch_size] for b in range(0, len(waits), batch_size)]


def ideal_s(spec: RunSpec, waits, remote_workers: int = 0) -> float:
    """The run's ideal time (comlab.lab.ideal); open loop: at least the sending schedule."""
    waits = list(waits)
    t = ideal.ideal_makespan(batches(waits, spec.batch_size), spec.workers + remote_workers,
                             spec.strategy)
    schedule = spec.schedule(len(waits)) if spec.arrivals.name != "constant" else None
    if schedule is not None and len(schedule):
        return max(t, float(schedule[-1]))
    return max(t, len(waits) / spec.rate) if spec.rate else t


def default_timeout(spec: RunSpec, waits, remote_workers: int = 0) -> float:
    """Generous: the ideal time three times over, plus slack for zero-wait runs (at most
    checks.MAX_TIMEOUT_S: what a poll can wait)."""
    return min(checks.MAX_TIMEOUT_S,
               10.0 + 3.0 * ideal_s(spec, waits, remote_workers) + len(waits) * 20e-6)


def weight(spec: RunSpec, waits, remote_workers: int = 0) -> float:
    """A run's share of a progress bar: its ideal time plus the lab's cost per run."""
    return ideal_s(spec, waits, remote_workers) + RUN_OVERHEAD_S
