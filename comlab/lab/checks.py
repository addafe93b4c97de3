"""Checks of ``run_experiment``'s arguments, before any file is written or process started: a
TypeError or ValueError that names the parameter, never a silent truncation (``repeats=2.5``)."""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

# Longest timeout accepted (s): libzmq's poll takes milliseconds in a C int (about 24 days).
MAX_TIMEOUT_S = 1e6


def count(value, name: str, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (bool and 2.5 refused; numpy integers accepted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return int(value)


def counts(values, name: str, minimum: int = 1) -> list[int]:
    """A value or a non-empty list of them, each checked by ``count``."""
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if not values:
        raise ValueError(f"{name} is empty: give at least one value")
    return [count(v, f"{name} value", minimum) for v in values]


def seconds(value, name: str, *, maximum: float = MAX_TIMEOUT_S, none_ok: bool = False):
    """A finite number of seconds > 0 and <= ``maximum`` (or None when ``none_ok``)."""
    if value is None and none_ok:
        return None
    positive(value, name)
    if value > maximum:
        raise ValueError(f"{name} must be at most {maximum:g} s, not {value!r}")
    return float(value)


def positive(value, name: str) -> float:
    """A finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, not {value!r}")
    return float(value)


def rates(values, name: str = "rate") -> list:
    """None (closed loop) or tasks/s > 0, a value or a list."""
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if not values:
        raise ValueError(f"{name} is empty: give at least one value (None: closed loop)")
    return [None if v is None else positive(v, f"{name} value") for v in values]


def names(values, name: str) -> list[str]:
    """A non-empty string or a non-empty list of them."""
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if not values:
        raise ValueError(f"{name} is empty: give at least one value")
    for v in values:
        if not isinstance(v, str) or not v:
            raise ValueError(f"{name} must be non-empty strings, not {v!r}")
    return values


def results_dir(path, name: str = "results_dir") -> Path:
    """A directory that exists and is writable, or can be made (its nearest existing parent
    is a writable directory)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{name} {str(p)!r} is a file, not a directory")
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{name} {str(p)!r}: {str(existing)!r} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {str(p)!r}: {str(existing)!r} is not writable")
    return p


def seconds_arg(text: str) -> float:
    """argparse type of a timeout in seconds: finite, > 0, at most MAX_TIMEOUT_S."""
    import argparse
    try:
        return seconds(float(text), "timeout")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("timeout ", "")) from None


def positive_arg(text: str) -> float:
    """argparse type of a finite number > 0."""
    import argparse
    try:
        return positive(float(text), "value")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("value ", "")) from None


def batch_size_arg(text: str) -> int:
    """argparse type of a batch size: an integer >= 1."""
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative(value, name: str) -> float:
    """A finite number >= 0 (a wait scale of 0: zero-wait tasks, the harness alone)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    return float(value)


def warm_threads(strategy: str, batch_size: int) -> int:
    """Threads a worker keeps for ``strategy`` after batches of ``batch_size`` tasks."""
    from ..system.gang import MAX_THREADS
    from ..system.strategies import ThreadPerTask, ThreadPool, lookup
    cls, param = lookup(strategy)
    if issubclass(cls, ThreadPerTask):
        return min(batch_size, MAX_THREADS)
    if issubclass(cls, ThreadPool):
        return min(batch_size, cls.parse(param))
    return 0


def machine_room(specs, n_tasks: int, host_workers: int = 0) -> None:
    """Before anything starts: the sweep's largest pool (plus the workers of worker hosts on
    this machine), each worker with the threads every strategy of the sweep keeps warm at its
    largest batch, fits this machine's processes/threads and memory (comlab.system.limits);
    a ValueError naming the workers and how many would fit."""
    from ..system import limits
    if not specs:
        return
    largest = max(s.workers for s in specs) + host_workers
    threads = limits.WORKER_THREADS + sum(
        warm_threads(st, min(n_tasks, max(s.batch_size for s in specs if s.strategy == st)))
        for st in {s.strategy for s in specs})
    where = f" (+{host_workers} on worker hosts here)" if host_workers else ""
    limits.check_workers(largest, threads,
                         f"workers {largest - host_workers}{where}")


def batch_sizes_for(batch_sizes, n_tasks: int) -> list[int]:
    """A batch larger than the tasks is all of them: sizes above ``n_tasks`` become
    ``n_tasks`` (said once, in a warning), so no memory follows a size beyond the tasks."""
    import warnings
    sizes = [int(b) for b in (batch_sizes if isinstance(batch_sizes, (list, tuple))
                              else [batch_sizes])]
    over = [b for b in sizes if b > n_tasks]
    if over:
        warnings.warn(f"batch sizes above the {n_tasks:,} tasks run as {n_tasks:,} (all tasks "
                      f"in one batch): {', '.join(f'{b:,}' for b in over)}", stacklevel=3)
    return list(dict.fromkeys(min(b, n_tasks) for b in sizes))
