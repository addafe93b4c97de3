"""The ideal-time model: the makespan of a perfect system with zero overhead.

The one place that says what "ideal" means, so efficiency = ideal_s / makespan_s is honest:

* Batches leave the client in order and a worker takes one batch at a time; a free worker takes
  the next batch at once. So the run is greedy list scheduling of batches, in order, on
  ``workers`` identical machines; with open-loop load a batch cannot start before its intended
  send time.
* How long a batch lasts depends on the strategy:
  thread-per-task -> the longest wait of the batch (all its tasks at once);
  sequential, faulty -> the sum of its waits;
  thread-pool:k -> greedy list scheduling of its waits, in order, on k threads (default 4);
  cpu-bound -> the sum of its waits (the GIL lets one thread of a process compute at a time),
  and at most ``cpus`` batches run at once across workers (one core each).
* Tasks no worker runs (unknown, unreachable) have wait 0 and so add nothing.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Sequence


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


def batch_duration(waits: Sequence[float], strategy: str) -> float:
    """How long a perfect worker takes for one batch under `strategy`."""
    if not len(waits):
        return 0.0
    name, _, param = strategy.partition(":")
    if name == "thread-per-task":
        return float(max(waits))
    if name in ("sequential", "faulty", "cpu-bound"):
        return float(sum(waits))
    if name == "thread-pool":
        return list_schedule(waits, int(param) if param else 4)
    raise ValueError(f"no ideal-time model for strategy {strategy!r}")


def ideal_makespan(batches: Sequence[Sequence[float]], workers: int, strategy: str, *,
                   releases: Sequence[float] | None = None, cpus: int | None = None) -> float:
    """Ideal makespan of a run: `batches` are the waits of each batch, in sending order."""
    machines = workers
    if strategy.partition(":")[0] == "cpu-bound":
        machines = min(workers, cpus or os.cpu_count() or 1)
    return list_schedule([batch_duration(b, strategy) for b in batches], machines, releases)
