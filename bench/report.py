"""Rows of the bench table: a figure, its noise, a reference, their ratio and a target.

A row is a plain dict (it goes into bench.json as it is):

    section, config        what was measured, and how
    figure, value, unit    the figure's name and value (the median when repeated)
    spread                 {"n", "median", "min", "max", "mad"} of the repeats (n = 1: no spread)
    reference, ref_value   what it is compared with (same run), and that value (the median;
    ref_spread             its repeats as for spread)
    ratio                  value / ref_value
    target, met            the target in words and whether the ratio or value meets it (None:
                           no target on this row)
"""

from __future__ import annotations

import math

import numpy as np


def spread(values) -> dict:
    """Median, min, max and median absolute deviation of repeated measures."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return {"n": 0, "median": math.nan, "min": math.nan, "max": math.nan, "mad": math.nan}
    med = float(np.median(v))
    return {"n": int(len(v)), "median": med, "min": float(v.min()), "max": float(v.max()),
            "mad": float(np.median(np.abs(v - med)))}


def _many(values) -> list:
    return list(values) if isinstance(values, (list, tuple, np.ndarray)) else [values]


def row(section: str, config: str, figure: str, values, unit: str, *, reference: str = "",
        ref_values=None, ref_unit: str | None = None, target: str | None = None,
        check=None, note: str = "") -> dict:
    """One row; ``values`` and ``ref_values`` are a number or the repeats of one.

    ``check(value, ratio) -> bool`` decides ``met`` for a row with a ``target``.
    """
    s = spread(_many(values))
    ref = spread(_many(ref_values)) if ref_values is not None else None
    ref_value = ref["median"] if ref and ref["n"] else None
    ratio = (s["median"] / ref_value if ref_value and s["n"] and math.isfinite(s["median"])
             else None)
    met = None
    if target is not None and check is not None:
        met = bool(s["n"]) and bool(check(s["median"], ratio if ratio is not None else math.nan))
    return {"section": section, "config": config, "figure": figure, "value": s["median"],
            "unit": unit, "spread": s, "reference": reference, "ref_value": ref_value,
            "ref_spread": ref, "ref_unit": ref_unit or unit, "ratio": ratio, "target": target,
            "met": met, "note": note}


def fmt(value, unit: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if unit == "s":
        if abs(value) < 0.01:
            return f"{value * 1e3:.2f} ms"
        return f"{value:.3f} s"
    if unit == "us":
        return f"{value:,.0f} us" if value >= 100 else f"{value:.1f} us"
    if unit == "tasks/s":
        return f"{value:,.0f}/s"
    return f"{value:g} {unit}"


def _with_spread(name: str, s: dict | None, unit: str) -> str:
    if s is None:
        return name or ""
    text = f"{name} {fmt(s['median'], unit)}".strip()
    if s["n"] > 1:
        text += f" [{fmt(s['min'], unit)}..{fmt(s['max'], unit)} n={s['n']}]"
    return text


def fmt_figure(r: dict) -> str:
    return _with_spread(r["figure"], r["spread"], r["unit"])


def fmt_reference(r: dict) -> str:
    return _with_spread(r["reference"], r["ref_spread"], r["ref_unit"])


def fmt_target(r: dict) -> str:
    if r["target"] is None:
        return ""
    return f"{r['target']}: {'met' if r['met'] else 'MISSED'}"


def table(rows: list) -> str:
    """The rows as a fixed-width text table, grouped by section."""
    head = ("section", "configuration", "figure", "reference", "ratio", "target")
    cells = [(r["section"], r["config"], fmt_figure(r), fmt_reference(r),
              "" if r["ratio"] is None else f"{r['ratio']:.3f}", fmt_target(r)) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(head)]
    line = lambda c: "  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip()  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])]
    previous = None
    for r, c in zip(rows, cells):
        if previous is not None and r["section"] != previous:
            out.append("")
        previous = r["section"]
        out.append(line(c))
    return "\n".join(out)


def targets(rows: list) -> list:
    """(what, met) for every row that has a target."""
    return [(f"{r['section']} / {r['config']}: {r['target']}", bool(r["met"]))
            for r in rows if r["target"] is not None]
