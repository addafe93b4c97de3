"""What a simulated run is given: when its batches are due (an arrival process) and its waits.

The same processes and distributions as the lab's: ``comlab.arrivals`` (``constant``,
``poisson``, ``bursty:ON,OFF``, ``ramp:R0,R1,S``, ``step:R1@T1,...``, ``trace:FILE``) with a
``Config``'s ``rate`` (tasks/s), and ``comlab.distributions``'s wait specs (``exponential``,
``lognormal[:SIGMA]``, ``pareto[:ALPHA]``, ``empirical:FILE``, ...) with ``wait_mean_s``.
Both are drawn from the run's seed before the simulated clock starts, so a prediction's
``seed`` column redraws them.
"""

from __future__ import annotations

import math
import numbers
import random

import numpy as np

from .. import arrivals as arrivals_mod
from .. import distributions

DEFAULT_WAIT_S = 0.01  # a calibration without waits (hand-made) runs 10 ms tasks


def check(cfg) -> None:
    """ValueError naming what is wrong with a Config's arrivals, rate or wait."""
    process = arrivals_mod.parse(cfg.arrivals)
    if cfg.rate is not None and (isinstance(cfg.rate, bool) or not isinstance(
            cfg.rate, numbers.Real) or not math.isfinite(cfg.rate) or cfg.rate <= 0):
        raise ValueError(f"rate must be a number of tasks/s > 0 (or None: closed loop), "
                         f"not {cfg.rate!r}")
    if cfg.rate is None and process.name != "constant" and process.needs_rate:
        raise ValueError(f"arrivals {cfg.arrivals!r} needs a rate (tasks/s)")
    if cfg.rate is not None and not process.needs_rate:
        raise ValueError(f"arrivals {cfg.arrivals!r} sets its own rate: leave rate unset")
    if cfg.arrivals_seed is not None and (isinstance(cfg.arrivals_seed, bool) or not
                                          isinstance(cfg.arrivals_seed, numbers.Integral)):
        raise ValueError(f"arrivals_seed must be an integer, not {cfg.arrivals_seed!r}")
    mean = cfg.wait_mean_s
    if mean is not None and (isinstance(mean, bool) or not isinstance(mean, numbers.Real)
                             or not math.isfinite(mean) or mean < 0):
        raise ValueError(f"wait_mean_s must be a number of seconds >= 0, not "
                         f"{cfg.wait_mean_s!r}")
    if cfg.wait is not None:
        distributions.wait_sampler(cfg.wait, 1.0, random.Random(0))


def open_loop(cfg) -> bool:
    """Whether the client keeps a schedule: a rate, or a process that sets its own (ramp,
    step, trace); constant without a rate is the closed loop, as in the lab."""
    return cfg.rate is not None or cfg.arrivals.partition(":")[0] != "constant"


def schedule(cfg, n_batches: int, seed: int) -> np.ndarray | None:
    """Each batch's intended send time (s from the start), or None in a closed loop; drawn
    from ``cfg.arrivals_seed`` when set (a measured run's, meta.json's ``arrivals_seed``: its
    very schedule), else from the run's seed."""
    if not open_loop(cfg):
        return None
    return arrivals_mod.parse(cfg.arrivals).offsets(
        n_batches, cfg.batch_size, cfg.rate,
        seed=seed if cfg.arrivals_seed is None else int(cfg.arrivals_seed))


def task_due(cfg, batch_due: np.ndarray | None, bounds: list) -> np.ndarray | None:
    """Each task's intended time: its batch's, but a trace names each task's own (the
    batch leaves when its last task is due), as the lab's client records them."""
    if batch_due is None:
        return None
    per_task = np.repeat(batch_due, [hi - lo for lo, hi in bounds])
    trace = arrivals_mod.parse(cfg.arrivals).trace
    if trace is not None:
        own = trace.offsets[np.minimum(np.arange(len(per_task)), len(trace.offsets) - 1)]
        per_task = np.minimum(own, per_task)
    return per_task


def waits(workload_s: np.ndarray, cfg, seed: int) -> np.ndarray:
    """The run's waits: drawn from ``cfg.wait`` (mean ``cfg.wait_mean_s``, default the
    calibration's mean wait), else the calibration's own cycled; ``cfg.tasks`` of them
    (default: the calibration's count, or a trace's length)."""
    base = workload_s if len(workload_s) else np.full(512, DEFAULT_WAIT_S)
    n = cfg.tasks
    if n is None:
        process = arrivals_mod.parse(cfg.arrivals)
        n = len(process.trace.keys) if process.trace is not None else len(base)
    if int(n) < 1:
        raise ValueError("tasks must be >= 1")
    if cfg.wait is None:
        return np.resize(base, int(n)).astype(float)
    mean = float(np.mean(base)) if cfg.wait_mean_s is None else cfg.wait_mean_s
    draw = distributions.wait_sampler(cfg.wait, mean, random.Random(seed))
    return np.fromiter((draw() for _ in range(int(n))), float, int(n))
