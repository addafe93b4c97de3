"""The ideal-time model: the makespan of a perfect system with zero overhead.

The one place that says what "ideal" means for a run, so efficiency = ideal_s / makespan_s is
honest. How long one batch lasts is the strategy's own rule (``Strategy.duration`` in
comlab.system.strategies: thread-per-task the longest wait, sequential / faulty / cpu-bound the
sum, thread-pool:k a list schedule on k threads); this module schedules the batches:

* Batches leave the client in order and a worker takes one batch at a time; a free worker takes
  the next batch at once. So the run is greedy list scheduling of batches, in order, on
  ``workers`` identical machines; with open-loop load a batch cannot start before its intended
  send time.
* A cpu-limited strategy (``Strategy.cpu_limited``: cpu-bound) runs at most ``cpus`` batches at once (one core each).
* Tasks no worker runs (unknown, unreachable) have wait 0 and so add nothing.
* A worker runs at most its share of the machine's threads at once
  (comlab.system.limits.thread_share(workers), as the server gives its workers): a larger
  thread-per-task batch runs in waves.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..system.limits import thread_share
from ..system.strategies import duration, list_schedule, lookup

__all__ = ["batch_duration", "ideal_makespan", "list_schedule"]


def batch_duration(waits: Sequence[float], strategy: str, workers: int = 1) -> float:
    """How long a perfect worker (one of `workers`) takes for one batch under `strategy`."""
    return duration(strategy, waits, thread_share(workers))


def ideal_makespan(batches: Sequence[Sequence[float]], workers: int, strategy: str, *,
                   releases: Sequence[float] | None = None, cpus: int | None = None) -> float:
    """Ideal makespan of a run: `batches` are the waits of each batch, in sending order."""
    cls, _ = lookup(strategy)
    machines = min(workers, cpus or os.cpu_count() or 1) if cls.cpu_limited else workers
    threads = thread_share(workers)
    return list_schedule([duration(strategy, b, threads) for b in batches], machines, releases)
