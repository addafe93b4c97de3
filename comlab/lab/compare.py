"""A/B comparison of two results: is b faster than a, and is the difference real?

``compare(a, b)`` takes records (or per-run summaries) as DataFrames, or result directories, and
returns one row per configuration present in both (configuration: the axes present among
batch_size, workers, strategy, transport, rate, dispatch). Runs are the independent unit: every
test and interval is over per-run values, never over pooled tasks. For each metric m in
``METRICS``:

* ``{m}_a``, ``{m}_b``: the median over repeats;
* ``{m}_ratio``: b / a of the geometric means over repeats (the ratio the interval is about);
* ``{m}_ratio_lo``, ``{m}_ratio_hi``: its 95 % interval from Welch's t on the logarithms of
  the per-run values (pyperf's t-test, criterion's interval of the relative change); honest
  with 2 repeats a side too (it is then wide: few degrees of freedom);
* ``{m}_spread_a``, ``{m}_spread_b``: the relative range of the repeats, (max - min) / median.

Plus ``n_a``, ``n_b`` (repeats), and from makespan: ``verdict``, ``rule`` (which rule gave it)
and ``p_value`` (of that rule's test). The rules (``RULES``; asv's, with pyperf's t-test where
asv has only its factor):

* ``U test`` when the repeats can reach it (the smallest two-sided p-value of an exact
  Mann-Whitney U test, 2 / C(n_a + n_b, n_a), is below ``ALPHA``: 4 repeats a side, or 3 and 5,
  or 2 and 8): ``faster`` / ``slower`` when it gives p < ``ALPHA``, Welch's t-test on the
  logarithms agrees (p < ``ALPHA``: an exact U test alone reaches its full 5 % false rate from
  6 repeats on), and b differs by more than ``NOISE`` (criterion's noise threshold); else
  ``same``. ``p_value`` is the larger of the two.
* ``factor`` otherwise (2 or 3 repeats a side): ``faster?`` / ``slower?`` (not confirmed) when
  the ratio is beyond ``FACTOR`` (asv's ``--factor``, 1.1) and Welch's t-test on the logarithms
  gives p < ``ALPHA``; else ``same``. The t-test keeps noisy repeats from passing the factor by
  chance; it assumes roughly log-normal noise, which 2 or 3 values cannot check: hence the ``?``.
* fewer than 2 repeats on a side: ``too few repeats``.

Simulated A/A comparisons (``tests/test_compare.py``: the same noise on both sides) give a false
verdict well under 5 % from 4 repeats a side and under 10 % (about 2-4 %) with the factor rule.

An axis of how the system runs (strategy, transport, dispatch) that is constant in each but
differs between them (a is all thread-per-task, b all thread-pool) is the thing compared: it
leaves the configuration (``attrs["across"]``). A different workload is not: when the
parameters that define it (``WORKLOAD_KEYS``: wait scale, data hash, task count, networks)
differ, or a configuration's task count or total wait (records only) does, every verdict is
``workload differs`` and ``attrs["workload"]`` lists what differs (the ratios are still given).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import records, results
from .stability import CONFIG_AXES, METRICS, spread

ALPHA = 0.05
FACTOR = 1.1   # asv's default --factor
NOISE = 0.02   # confirmed changes smaller than this are "same" (criterion: 0.01; drift here)
WORKLOAD_KEYS = ("wait_scale", "data_sha256", "n_tasks", "networks")
WORKLOAD_DIFFERS = "workload differs"


def rules_text(factor: float = FACTOR, alpha: float = ALPHA, noise: float = NOISE) -> str:
    """The header that says what each verdict means (lines)."""
    return "\n".join((
        "verdict from makespan, by the rule named in column 'rule':",
        f"  U test (4+ repeats a side, or 3 and 5+): faster / slower when an exact "
        f"Mann-Whitney U test and Welch's t-test on log values both give p < {alpha:g} and "
        f"the change exceeds {noise:.0%}",
        f"  factor (2-3 repeats): faster? / slower? (not confirmed: more repeats needed) "
        f"when the ratio is beyond {factor:g}x and Welch's t-test gives p < {alpha:g}",
        "  same otherwise; too few repeats: fewer than 2 a side"))


def as_summary(x) -> pd.DataFrame:
    """A per-run summary from a result directory, records, or a summary."""
    if isinstance(x, (str, os.PathLike)):
        x = results.load_results(Path(x))
    if "task_id" in x.columns:
        summary = records.summarize(x)
        keys = [k for k in ("experiment", "run") if k in x.columns]
        if "wait_s" in x.columns:  # the workload of each run, whatever the strategy's ideal
            waits = x.groupby(keys, observed=True)["wait_s"].sum().rename("wait_total_s")
            summary = summary.merge(waits.reset_index(), on=keys, how="left")
        summary.attrs["params"] = x.attrs.get("params")  # meta.json's, from load_results
        return summary
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


# -- the statistics ------------------------------------------------------------------------------
def _positive(values) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[np.isfinite(v) & (v > 0)]


def welch_log(a, b, alpha: float = ALPHA) -> tuple[float, float, float, float]:
    """(ratio, lo, hi, p): b / a of the geometric means, its 1 - alpha interval and the p-value
    of Welch's t-test on the logarithms. NaN where a side has fewer than 2 values."""
    from scipy import stats
    la, lb = np.log(_positive(a)), np.log(_positive(b))
    if not len(la) or not len(lb):
        return (np.nan,) * 4
    diff = float(lb.mean() - la.mean())
    if len(la) < 2 or len(lb) < 2:
        return math.exp(diff), np.nan, np.nan, np.nan
    va, vb = la.var(ddof=1) / len(la), lb.var(ddof=1) / len(lb)
    se = math.sqrt(va + vb)
    if se == 0:  # identical repeats on both sides: exact, no interval to draw
        return math.exp(diff), math.exp(diff), math.exp(diff), 1.0 if diff == 0 else 0.0
    df = (va + vb) ** 2 / (va ** 2 / (len(la) - 1) + vb ** 2 / (len(lb) - 1))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return math.exp(diff), math.exp(diff - half), math.exp(diff + half), p


def u_test_reachable(n_a: int, n_b: int, alpha: float = ALPHA) -> bool:
    """Can an exact two-sided U test on n_a and n_b values give p < alpha at all?"""
    return n_a >= 1 and n_b >= 1 and 2 / math.comb(n_a + n_b, n_a) < alpha


def u_test(a, b) -> float:
    """Two-sided p-value of the exact Mann-Whitney U test of a against b."""
    from scipy import stats
    with warnings.catch_warnings():  # ties (identical repeats): the p-value is then conservative
        warnings.simplefilter("ignore")
        return float(stats.mannwhitneyu(b, a, alternative="two-sided", method="exact").pvalue)


def judge(a, b, *, factor: float = FACTOR, alpha: float = ALPHA,
          noise: float = NOISE) -> tuple[str, str, float]:
    """(verdict, rule, p-value) for per-run values a and b (b / a > 1: b is slower)."""
    a, b = _positive(a), _positive(b)
    if min(len(a), len(b)) < 2:
        return "too few repeats", "-", np.nan
    ratio, _, _, p_t = welch_log(a, b, alpha)
    word = "slower" if ratio > 1 else "faster"
    if u_test_reachable(len(a), len(b), alpha):
        p = max(u_test(a, b), p_t)  # both must agree: the rank test and the t-test
        beyond_noise = abs(math.log(ratio)) > math.log1p(noise)
        return (word if p < alpha and beyond_noise else "same"), "U test", p
    beyond = ratio > factor or ratio < 1 / factor
    return (word + "?" if beyond and p_t < alpha else "same"), "factor", p_t


# -- the comparison ------------------------------------------------------------------------------
def compare(a, b, *, factor: float = FACTOR, alpha: float = ALPHA,
            noise: float = NOISE) -> pd.DataFrame:
    """One row per configuration present in both a and b (see the module's docstring).

    An axis in ``ACROSS_AXES`` on which a and b each hold one value, but not the same one (a
    all thread-per-task, b all thread-pool), is what is being compared: it is left out of the
    configuration, and ``attrs["across"]`` says {axis: (a's value, b's value)}.
    ``attrs["workload"]``: what differs in the workload (empty: the same); ``attrs["rules"]``:
    the header line saying what the verdicts mean."""
    sa, sb = as_summary(a), as_summary(b)
    axes = [c for c in CONFIG_AXES if c in sa.columns and c in sb.columns]
    across = _across(sa, sb, axes)
    axes = [c for c in axes if c not in across]
    ca, cb = _configs(sa, axes), _configs(sb, axes)
    common = [k for k in ca if k in cb]
    if not common:
        raise ValueError(f"no configuration ({', '.join(axes)}) is in both: a has "
                         f"{len(ca)}, b has {len(cb)}")
    rows = [_row(dict(zip(axes, key)), ca[key], cb[key], factor, alpha, noise)
            for key in common]
    out = pd.DataFrame(rows)
    workload = _param_differences(sa.attrs.get("params"), sb.attrs.get("params"))
    workload += _config_differences(out, ca, cb, common, axes)
    if workload:
        out["verdict"] = WORKLOAD_DIFFERS
    out.attrs.update(across=across, workload=workload, rules=rules_text(factor, alpha, noise))
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


def _param_differences(pa: dict | None, pb: dict | None) -> list[str]:
    """The workload's parameters that differ between two results' meta.json."""
    if not pa or not pb:
        return []
    out = []
    for key in WORKLOAD_KEYS:
        va, vb = pa.get(key), pb.get(key)
        if key == "wait_scale":
            va, vb = (1.0 if v is None else float(v) for v in (va, vb))
        elif va is None or vb is None:  # format 1 saved no data hash: the per-run check remains
            continue
        if va != vb:
            what = "data (commands or server map contents)" if key == "data_sha256" else key
            show = (lambda v: str(v)[:12]) if key == "data_sha256" else str
            out.append(f"{what}: a {show(va)}, b {show(vb)}")
    return out


def _config_differences(out, ca, cb, common, axes) -> list[str]:
    """Configurations whose runs had another task count or total wait (other data)."""
    from .stability import describe
    found = []
    for (_, row), key in zip(out.iterrows(), common):
        for col, what in (("n_tasks", "tasks"), ("wait_total_s", "total wait (s)")):
            if col not in ca[key] or col not in cb[key]:
                continue
            va, vb = ca[key][col].median(), cb[key][col].median()
            if pd.notna(va) and pd.notna(vb) and not math.isclose(va, vb, rel_tol=1e-6,
                                                                  abs_tol=1e-9):
                name = describe(row, axes) or "the configuration"
                found.append(f"{name}: {what} a {va:.6g}, b {vb:.6g}")
                break
    if len(found) > 4:
        found = found[:4] + [f"... and {len(found) - 4} more configurations"]
    return found


def _row(config: dict, ga: pd.DataFrame, gb: pd.DataFrame, factor, alpha, noise) -> dict:
    row = {**config, "n_a": len(ga), "n_b": len(gb)}
    for m in METRICS:
        va, vb = ga[m].dropna().to_numpy(float), gb[m].dropna().to_numpy(float)
        ratio, lo, hi, _ = welch_log(va, vb, alpha)
        row.update({f"{m}_a": float(np.median(va)) if len(va) else np.nan,
                    f"{m}_b": float(np.median(vb)) if len(vb) else np.nan,
                    f"{m}_ratio": ratio, f"{m}_ratio_lo": lo, f"{m}_ratio_hi": hi,
                    f"{m}_spread_a": spread(va), f"{m}_spread_b": spread(vb)})
    row["verdict"], row["rule"], row["p_value"] = judge(
        ga["makespan_s"].dropna(), gb["makespan_s"].dropna(), factor=factor, alpha=alpha,
        noise=noise)
    return row


def failing(cmp: pd.DataFrame, slower_than: float) -> pd.DataFrame:
    """Configurations that fail a CI threshold: b slower (confirmed or marked) by a makespan
    ratio of at least ``slower_than``."""
    bad = cmp["verdict"].isin(("slower", "slower?")) & (cmp["makespan_s_ratio"] >= slower_than)
    return cmp[bad]


def table(cmp: pd.DataFrame) -> pd.DataFrame:
    """The comparison as text columns for people: verdict and rule first, the configuration's
    axes that vary, repeats, makespans, ratios with their intervals, spreads."""
    axes = [c for c in CONFIG_AXES if c in cmp.columns and cmp[c].notna().any()
            and (c in ("batch_size", "workers") or cmp[c].nunique(dropna=False) > 1)]
    out = pd.DataFrame({"verdict (b)": cmp["verdict"], "rule": cmp["rule"]})
    out[[TABLE_NAMES.get(c, c) for c in axes] + ["n_a", "n_b"]] = cmp[axes + ["n_a", "n_b"]]
    out["makespan a"] = cmp["makespan_s_a"].map("{:.4g} s".format)
    out["makespan b"] = cmp["makespan_s_b"].map("{:.4g} s".format)
    for m, label in (("makespan_s", "makespan b/a"), ("latency_p50_s", "p50 b/a"),
                     ("latency_p99_s", "p99 b/a")):  # throughput's is 1 / makespan's
        out[label] = [_ratio_text(r, lo, hi) for r, lo, hi in
                      zip(cmp[f"{m}_ratio"], cmp[f"{m}_ratio_lo"], cmp[f"{m}_ratio_hi"])]
    out["spread a/b"] = [f"{a:.0%}/{b:.0%}" if pd.notna(a) and pd.notna(b) else "-"
                         for a, b in zip(cmp["makespan_s_spread_a"], cmp["makespan_s_spread_b"])]
    return out



CODE_KEYS = (("comlab", "comlab"), ("git_commit", "commit"),
             ("git_diff_sha256", "uncommitted diff"), ("hostname", "host"), ("cpu_count", "CPUs"))


def differences(cmp: pd.DataFrame, env_a: dict | None = None,
                env_b: dict | None = None) -> list[str]:
    """What differs between a and b, as "what: a's -> b's" lines for a headline: the axes
    compared across (``attrs["across"]``), then the code and machine that ran them (meta.json's
    environment), then a note when the workload differs (``attrs["workload"]`` says how)."""
    out = [f"{axis}: {va} -> {vb}" for axis, (va, vb) in cmp.attrs.get("across", {}).items()]
    env_a, env_b = env_a or {}, env_b or {}
    for key, what in CODE_KEYS:
        va, vb = env_a.get(key), env_b.get(key)
        if va is not None and vb is not None and va != vb:
            short = (lambda v: str(v)[:10]) if key.startswith("git_") else str
            out.append(f"{what}: {short(va)} -> {short(vb)}")
    if cmp.attrs.get("workload"):
        out.append("the workload (see below)")
    return out

TABLE_NAMES = {"batch_size": "batch"}


def constant_axes(cmp: pd.DataFrame) -> dict:
    """The configuration's axes that ``table`` leaves out: one value in every row."""
    return {c: cmp[c].iloc[0] for c in CONFIG_AXES if c in cmp.columns
            and c not in ("batch_size", "workers") and cmp[c].notna().any()
            and cmp[c].nunique(dropna=False) == 1}


def _ratio_text(r, lo, hi) -> str:
    if r != r:
        return "-"
    return f"{r:.3f} [{lo:.3f}, {hi:.3f}]" if lo == lo else f"{r:.3f} [-]"


def repeats_to_confirm(alpha: float = ALPHA) -> int:
    """The fewest repeats a side with which the U test can confirm a verdict (4 at 0.05)."""
    return next(n for n in range(2, 100) if u_test_reachable(n, n, alpha))


def how_to_compare(result_dir, repeats: int) -> str:
    """What ``comlab run`` prints after its table: how to compare with this result."""
    need = repeats_to_confirm()
    enough = (f"{repeats} repeats a side: enough for confirmed verdicts (faster / slower)"
              if repeats >= need else
              f"{repeats} repeat{'s' if repeats != 1 else ''} a side give"
              f"{'s' if repeats == 1 else ''} "
              + ("no verdict" if repeats < 2 else "only unconfirmed verdicts (faster? / "
                 f"slower?, beyond {FACTOR:g}x)")
              + f"; a confirmed one needs {need} a side (--repeats {need})")
    return (f"compare another result with this one: comlab compare {result_dir} OTHER "
            f"(ratios OTHER / this; --fail-slower {FACTOR:g} for CI)\n{enough}")
