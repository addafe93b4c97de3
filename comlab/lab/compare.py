"""A/B comparison of two results: is b faster than a, and is the difference real?

``compare(a, b)`` takes records (or per-run summaries) as DataFrames, or result directories, and
returns one row per configuration present in both (configuration: the axes present among
batch_size, workers, strategy, transport, rate, dispatch). For each metric m in ``METRICS``:

* ``{m}_a``, ``{m}_b``: the median over repeats;
* ``{m}_ratio``: b / a of those medians;
* ``{m}_ratio_lo``, ``{m}_ratio_hi``: a 95 % bootstrap interval of that ratio: the repeats of a
  and of b are resampled with replacement (``N_BOOT`` times, fixed seed, so the same inputs
  always give the same interval) and the ratio of medians taken each time;
* ``{m}_spread_a``, ``{m}_spread_b``: the relative range of the repeats, (max - min) / median;

An axis of how the system runs (strategy, transport, dispatch) that is constant in each but
differs between them (a is all thread-per-task, b all thread-pool) is the thing compared: it
leaves the configuration (``attrs["across"]``). Plus ``n_a``, ``n_b`` (repeats) and ``verdict`` from makespan's interval: "faster" (b is faster:
the interval lies below 1), "slower" (above 1), "no significant difference" (it contains 1), or
"too few repeats" when a side has fewer than ``MIN_REPEATS`` (5).

Why 5: with few repeats the bootstrap interval of a median is too narrow. Simulated A/A
comparisons (both sides the same normal noise, 400 pairs each) gave a verdict other than "no
significant difference" 30 % of the time with 2 repeats a side, 10 % with 3, 8 % with 4, 1-3 %
with 5, 6 and 8; a 10 % change with 2 % noise was found every time from 2 repeats up. Below 5
the interval is still given, but it is no test.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import records, results
from .stability import CONFIG_AXES, METRICS, spread

N_BOOT = 2000
SEED = 0
MIN_REPEATS = 5  # fewer: the bootstrap interval is too narrow (see above)


def as_summary(x) -> pd.DataFrame:
    """A per-run summary from a result directory, records, or a summary."""
    if isinstance(x, (str, os.PathLike)):
        x = results.load_results(Path(x))
    if "task_id" in x.columns:
        return records.summarize(x)
    if "makespan_s" in x.columns:
        return x
    raise ValueError("expected records, a per-run summary or a result directory")


def _configs(summary: pd.DataFrame, axes: list[str]) -> dict:
    """Configuration (a tuple, NaN as None) -> its runs."""
    out = {}
    for key, g in summary.groupby(axes, sort=False, observed=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        out[tuple(None if pd.isna(v) else v.item() if hasattr(v, "item") else v
                  for v in key)] = g
    return out


def ratio_interval(a, b, rng: np.random.Generator, n_boot: int = N_BOOT) -> tuple[float, float]:
    """95 % bootstrap interval of median(b) / median(a), resampling the repeats of each."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    med_a = np.median(a[rng.integers(0, len(a), (n_boot, len(a)))], axis=1)
    med_b = np.median(b[rng.integers(0, len(b), (n_boot, len(b)))], axis=1)
    lo, hi = np.percentile(med_b / med_a, [2.5, 97.5])
    return float(lo), float(hi)


def verdict(lo: float, hi: float, n_a: int, n_b: int) -> str:
    if min(n_a, n_b) < MIN_REPEATS:
        return "too few repeats"
    if hi < 1:
        return "faster"
    if lo > 1:
        return "slower"
    return "no significant difference"


def compare(a, b, *, n_boot: int = N_BOOT, seed: int = SEED) -> pd.DataFrame:
    """One row per configuration present in both a and b (see the module's docstring).

    An axis in ``ACROSS_AXES`` on which a and b each hold one value, but not the same one (a
    all thread-per-task, b all thread-pool), is what is being compared: it is left out of the
    configuration, and ``attrs["across"]`` says {axis: (a's value, b's value)}."""
    sa, sb = as_summary(a), as_summary(b)
    axes = [c for c in CONFIG_AXES if c in sa.columns and c in sb.columns]
    across = _across(sa, sb, axes)
    axes = [c for c in axes if c not in across]
    ca, cb = _configs(sa, axes), _configs(sb, axes)
    common = [k for k in ca if k in cb]
    if not common:
        raise ValueError(f"no configuration ({', '.join(axes)}) is in both: a has "
                         f"{len(ca)}, b has {len(cb)}")
    rng = np.random.default_rng(seed)
    rows = [_row(dict(zip(axes, key)), ca[key], cb[key], rng, n_boot) for key in common]
    out = pd.DataFrame(rows)
    out.attrs["across"] = across
    return out


ACROSS_AXES = ("strategy", "transport", "dispatch")  # how the system runs, not the workload


def _across(sa: pd.DataFrame, sb: pd.DataFrame, axes: list[str]) -> dict:
    out = {}
    for c in (c for c in axes if c in ACROSS_AXES):
        va, vb = sa[c].astype(object).unique(), sb[c].astype(object).unique()
        if len(va) == 1 and len(vb) == 1 and not (pd.isna(va[0]) and pd.isna(vb[0])) \
                and va[0] != vb[0]:
            out[c] = (va[0], vb[0])
    return out


def _row(config: dict, ga: pd.DataFrame, gb: pd.DataFrame, rng, n_boot: int) -> dict:
    row = {**config, "n_a": len(ga), "n_b": len(gb)}
    for m in METRICS:
        va, vb = ga[m].dropna().to_numpy(float), gb[m].dropna().to_numpy(float)
        ma = float(np.median(va)) if len(va) else np.nan
        mb = float(np.median(vb)) if len(vb) else np.nan
        lo, hi = ratio_interval(va, vb, rng, n_boot) if len(va) and len(vb) else (np.nan,) * 2
        row.update({f"{m}_a": ma, f"{m}_b": mb, f"{m}_ratio": mb / ma if ma else np.nan,
                    f"{m}_ratio_lo": lo, f"{m}_ratio_hi": hi,
                    f"{m}_spread_a": spread(va), f"{m}_spread_b": spread(vb)})
    row["verdict"] = verdict(row["makespan_s_ratio_lo"], row["makespan_s_ratio_hi"],
                             row["n_a"], row["n_b"])
    return row
