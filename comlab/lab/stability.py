"""Is a result stable enough to trust? pyperf's habit: record the conditions, warn when they look bad.

Per run (in its meta.json entry): the load average at its start and end, and the server's
counters over the run (``server``: what the control socket's ``stats`` counted during the run,
e.g. ``retried``, ``worker_deaths``, ``dropped``; plus ``pending`` / ``busy`` at its end). Per
sweep session: the load average before anything started. Per configuration
(``summarize_configs``): the number of repeats and their spread.

Warnings (``check``; printed by run_experiment as ``StabilityWarning`` and kept in meta.json):

* repeats disagree: a configuration's makespans differ by more than 10 % of their median
  ((max - min) / median, the spread used throughout);
* busy machine: the 1-min load average before the sweep started was above half the CPU count
  (the sweep itself then adds up to a core of client and server work; pyperf's rule of thumb);
* tasks not run: some were answered ``unknown`` (not in the server map), failed or lost;
* cpu-bound oversubscribed: a cpu-bound configuration runs more computing threads at once
  (one per busy worker: the GIL) than the machine has cores;
* schedule not kept: an open-loop run sent more than LATE_SHARE_LIMIT of its batches more than
  1 ms after their intended time (``late_share``, comlab.lab.records): the load offered was
  not the schedule's (k6 counts the same as dropped iterations).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import ComlabWarning

GAUGES = ("pending", "busy", "idle")  # the server's stats that are levels, not counters


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def counters(stats: dict) -> dict:
    """The numeric part of a server's ``stats`` answer (drops the workers list)."""
    return {k: v for k, v in stats.items() if isinstance(v, (int, float))
            and not isinstance(v, bool)}


@dataclass
class RunConditions:
    """The machine's and the server's state at the start of a run."""
    load_start: list | None
    stats_start: dict

    quarantined_start: tuple = ()

    @classmethod
    def start(cls, server) -> "RunConditions":
        stats = server.control("stats")
        return cls(loadavg(), counters(stats), tuple(stats.get("quarantined_workers", ())))

    def end(self, server) -> dict:
        """The run's entries for meta.json: load averages, the server's counters over it, and
        the workers it quarantined during the run (why, naming each: comlab.system.acks)."""
        full = server.control("stats")
        stats = counters(full)
        delta = {k: v if k in GAUGES else v - self.stats_start.get(k, 0)
                 for k, v in stats.items()}
        out = {"loadavg_start": self.load_start, "loadavg_end": loadavg(), "server": delta}
        quarantined = [w for w in full.get("quarantined_workers", ())
                       if w not in self.quarantined_start]
        if quarantined:
            out["quarantined_workers"] = quarantined
        return out


# -- per configuration ---------------------------------------------------------------------------
CONFIG_AXES = ("batch_size", "workers", "strategy", "transport", "rate", "dispatch",
               "arrivals")
METRICS = ("makespan_s", "throughput_tps", "latency_p50_s", "latency_p99_s")
SPREAD_LIMIT = 0.10   # repeats whose makespans differ by more than this fraction: a warning
BUSY_LOAD_PER_CPU = 0.5  # 1-min load average above half the CPUs at a sweep's start: busy
COUNTS = ("n_unknown", "n_failed", "n_lost")  # tasks that did not run as the map says
LATE_SHARE_LIMIT = 0.05  # an open-loop run that sent more of its batches late: a warning


class StabilityWarning(ComlabWarning):
    """A result whose figures may not be trustworthy (comlab.lab.stability)."""


def config_axes(summary) -> list[str]:
    """The configuration axes present (and ``experiment`` when there is one)."""
    return [a for a in ("experiment",) + CONFIG_AXES if a in summary.columns]


def spread(values) -> float:
    """Relative range of repeats: (max - min) / median; NaN with fewer than two."""
    import numpy as np
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return np.nan
    med = np.median(values)
    return float((values.max() - values.min()) / med) if med else np.nan


def summarize_configs(summary):
    """One row per configuration of a per-run summary: ``n_repeats``, the median of each
    metric in ``METRICS``, of ``efficiency``, ``ideal_s``, ``overhead_p99_s``, ``send_lag_p99_s``
    and ``late_share`` (open loop), ``{metric}_spread`` (the relative range of the
    repeats, (max - min) / median), and ``n_unknown``, ``n_failed``, ``n_lost`` (summed over
    all repeats)."""
    import pandas as pd
    axes = config_axes(summary)
    rows = []
    for key, g in summary.groupby(axes, sort=False, observed=True, dropna=False):
        row = dict(zip(axes, key if isinstance(key, tuple) else (key,)))
        row["n_repeats"] = len(g)
        for m in METRICS + ("efficiency", "ideal_s", "overhead_p99_s", "send_lag_p99_s",
                            "late_share"):
            if m in g:
                row[m] = g[m].median()
                if m in METRICS or m == "efficiency":
                    row[f"{m}_spread"] = spread(g[m])
        for count in COUNTS:
            row[count] = int(g[count].sum()) if count in g else 0
        rows.append(row)
    return pd.DataFrame(rows)


def describe(row, axes) -> str:
    names = {"batch_size": "b", "workers": "w"}
    parts = []
    for a in axes:
        v = row[a]
        if a == "experiment" or v is None or v != v:  # NaN rate: closed loop
            continue
        parts.append(f"{names[a]}{v}" if a in names else f"{v:g}/s" if a == "rate" else str(v))
    return " ".join(parts)


def check(summary, meta: dict) -> list[str]:
    """The warnings a result deserves (pyperf's ``check``), one line each."""
    out = []
    configs = summarize_configs(summary)
    axes = config_axes(summary)
    noisy = configs[configs["makespan_s_spread"] > SPREAD_LIMIT]
    if len(noisy):
        listed = ", ".join(f"{describe(r, axes)} ({r['makespan_s_spread']:.0%})"
                           for _, r in noisy.head(8).iterrows())
        out.append(f"repeats disagree: makespans differ by more than {SPREAD_LIMIT:.0%} of "
                   f"their median ((max - min) / median) in {len(noisy)} of {len(configs)} "
                   f"configurations: {listed}{' ...' if len(noisy) > 8 else ''}")
    out += _not_run(summary)
    cpus = meta.get("environment", {}).get("cpu_count") or os.cpu_count() or 1
    out += _busy_at_start(meta, cpus) + _cpu_bound_oversubscribed(summary, cpus, axes)
    return out + _schedule_not_kept(summary, axes)


def _schedule_not_kept(summary, axes) -> list[str]:
    """Open-loop runs whose client sent too many batches late: the server saw less (or
    burstier) load than the schedule's, so the latencies measured are those of a lighter load."""
    if "late_share" not in summary:
        return []
    late = summary[summary["late_share"] > LATE_SHARE_LIMIT]
    if late.empty:
        return []
    listed = ", ".join(f"{describe(r, axes)} (run {r.get('run')}: {r['late_share']:.0%} late, "
                       f"p99 lag {r['send_lag_p99_s'] * 1e3:.3g} ms)"
                       for _, r in late.head(4).iterrows())
    return [f"the client could not keep the schedule: its latency figures are a lower bound "
            f"({len(late)} of {int(summary['late_share'].notna().sum())} open-loop runs sent "
            f"more than {LATE_SHARE_LIMIT:.0%} of their batches over 1 ms late: {listed}"
            f"{' ...' if len(late) > 4 else ''})"]


def _not_run(summary) -> list[str]:
    """Tasks answered ``unknown`` were never run (the server answers them at once: they make a
    run look faster); failed and lost ones did not finish."""
    total = int(summary["n_tasks"].sum()) if "n_tasks" in summary else 0
    out = []
    for count, what in (("n_unknown", "answered unknown (command not in the server map): "
                                      "never run, they inflate throughput"),
                        ("n_failed", "failed (see the records' error column)"),
                        ("n_lost", "lost (never came back within the run's timeout)")):
        n = int(summary[count].sum()) if count in summary else 0
        if n:
            out.append(f"{n} of {total} tasks {what}")
    return out


def _busy_at_start(meta: dict, cpus: int) -> list[str]:
    busy = [s for s in meta.get("sessions", []) if s.get("runs", 1)  # it measured something
            and s.get("loadavg_start") and s["loadavg_start"][0] > BUSY_LOAD_PER_CPU * cpus]
    return [f"the machine was busy when the sweep started ({s['started']}): 1-min load "
            f"average {s['loadavg_start'][0]:g} on {cpus} CPUs (more than "
            f"{BUSY_LOAD_PER_CPU:g} per CPU); figures may be slower and noisier than an idle "
            f"machine's" for s in busy]


def _cpu_bound_oversubscribed(summary, cpus: int, axes) -> list[str]:
    """cpu-bound (a ``cpu_limited`` strategy): a worker's threads share one GIL, so each worker
    computes on at most one core at a time: min(workers, batches) threads compute at once."""
    if "strategy" not in summary:
        return []
    from ..system.strategies import cpu_limited
    cpu = summary[summary["strategy"].astype(str).map(cpu_limited)]
    out = []
    for _, r in cpu.drop_duplicates(subset=axes).iterrows():
        busy = min(int(r["workers"]), -(-int(r["n_tasks"]) // int(r["batch_size"])))
        if busy > cpus:
            out.append(f"cpu-bound {describe(r, axes)}: {busy} workers compute at once on "
                       f"{cpus} CPUs: they share the cores (the ideal counts {cpus} at a time)")
    return out
