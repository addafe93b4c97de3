"""Show a saved result: ``load`` (a ``Result`` that displays itself in a notebook), ``text``
(``comlab show``) and ``write_report`` (``comlab report``: one self-contained HTML file, figures
embedded as base64 PNG, that can be mailed). Everything comes from the saved files alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
from functools import cached_property
from pathlib import Path

import pandas as pd

from . import compare as compare_mod
from . import records, results, stability

ENV_KEYS = ("comlab", "git_commit", "git_dirty", "python", "pyzmq", "libzmq", "msgpack",
            "numpy", "pandas", "pyarrow", "hostname", "platform", "cpu_count", "timer_slack_ns")
CONFIG_COLUMNS = ("n_repeats", "makespan_s", "makespan_s_spread", "efficiency",
                  "throughput_tps", "latency_p50_s", "latency_p99_s", "latency_p99_s_spread",
                  "n_lost")
COMPARE_COLUMNS = ("n_a", "n_b", "makespan_s_a", "makespan_s_b", "makespan_s_ratio",
                   "makespan_s_ratio_lo", "makespan_s_ratio_hi", "makespan_s_spread_a",
                   "makespan_s_spread_b", "latency_p99_s_ratio", "verdict")


class Result:
    """A saved result: ``records``, ``summary`` (per run), ``configs`` (per configuration),
    ``meta``; displays its parameters, environment, warnings, summary and figures in a
    notebook."""

    def __init__(self, path) -> None:
        self.path = Path(path)
        self.meta = results.load_meta(self.path)
        self.records = results.load_results(self.path)

    def __repr__(self) -> str:
        return (f"<comlab.Result {self.path}: {len(self.meta.get('runs', []))} runs, "
                f"{len(self.records)} records>")

    @cached_property
    def summary(self) -> pd.DataFrame:
        return records.summarize(self.records) if len(self.records) else pd.DataFrame()

    @cached_property
    def configs(self) -> pd.DataFrame:
        return stability.summarize_configs(self.summary) if len(self.summary) else pd.DataFrame()

    @property
    def params(self) -> dict:
        return self.meta.get("params", {})

    @property
    def environment(self) -> dict:
        return self.meta.get("environment", {})

    @cached_property
    def warnings(self) -> list[str]:
        """Saved ones (format 2), else checked now; plus an incomplete sweep."""
        found = list(self.meta["warnings"]) if "warnings" in self.meta else (
            stability.check(self.summary, self.meta) if len(self.summary) else [])
        if self.meta.get("complete") is False:
            found.insert(0, "incomplete: the sweep was interrupted; rerun it to resume")
        return found

    @property
    def figures(self) -> list[Path]:
        return sorted((self.path / "figures").glob("*.png"))

    def config_table(self) -> pd.DataFrame:
        axes = [a for a in stability.config_axes(self.configs) if a != "experiment"]
        cols = axes + [c for c in CONFIG_COLUMNS if c in self.configs]
        return self.configs[cols] if len(self.configs) else self.configs

    def _repr_html_(self) -> str:
        return (f"<div><h3>{_e(self.path)}</h3>{_facts_html(self)}"
                f"{_warnings_html(self.warnings)}"
                f"<h4>Summary (median over repeats)</h4>{_table_html(self.config_table())}"
                f"{_figures_html(self.figures, width=220)}</div>")


def load(path) -> Result:
    """A saved result (``comlab.load("results/main")``)."""
    return Result(path)


# -- text: comlab show ---------------------------------------------------------------------------
def text(result: Result) -> str:
    """Parameters, environment, warnings and the per-configuration summary, as plain text."""
    meta = result.meta
    lines = [f"result: {result.path}", f"  format {meta.get('format_version', 1)}, "
             f"{len(meta.get('runs', []))} runs, started {meta.get('started')}, "
             f"{meta.get('duration_s')} s, complete: {meta.get('complete', 'unknown')}",
             "parameters:"]
    lines += [f"  {k}: {json.dumps(v, default=str)}" for k, v in result.params.items()]
    lines.append("environment:")
    lines += [f"  {k}: {result.environment.get(k)}" for k in ENV_KEYS
              if k in result.environment]
    lines.append("warnings:" if result.warnings else "warnings: none")
    lines += [f"  - {w}" for w in result.warnings]
    lines.append("summary (median over repeats; spread = (max - min) / median):")
    with pd.option_context("display.width", 200, "display.max_rows", 500,
                           "display.max_columns", 50, "display.float_format", "{:.4g}".format):
        lines.append(result.config_table().to_string(index=False))
    return "\n".join(lines)


# -- HTML ----------------------------------------------------------------------------------------
def _e(value) -> str:
    return html.escape(str(value))


def _kv_html(title: str, items: dict) -> str:
    rows = "".join(f"<tr><th style='text-align:left'>{_e(k)}</th>"
                   f"<td style='text-align:left'>{_e(json.dumps(v, default=str))}</td></tr>"
                   for k, v in items.items())
    return f"<details open><summary><b>{_e(title)}</b></summary><table>{rows}</table></details>"


def _facts_html(result: Result) -> str:
    env = {k: result.environment.get(k) for k in ENV_KEYS if k in result.environment}
    run = {k: result.meta.get(k) for k in ("format_version", "started", "duration_s",
                                           "complete", "resumed_runs")}
    run["runs"] = len(result.meta.get("runs", []))
    return (_kv_html("Sweep", run) + _kv_html("Parameters", result.params)
            + _kv_html("Environment", env))


def _warnings_html(found: list[str]) -> str:
    if not found:
        return "<p><b>Warnings:</b> none</p>"
    items = "".join(f"<li>{_e(w)}</li>" for w in found)
    return f"<p><b>Warnings</b></p><ul style='color:#a40'>{items}</ul>"


def _table_html(df: pd.DataFrame) -> str:
    if df is None or not len(df):
        return "<p>(nothing)</p>"
    return df.to_html(index=False, float_format="{:.4g}".format, na_rep="", border=0)


def _png_b64(path_or_bytes) -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return base64.b64encode(data).decode("ascii")


def _figures_html(paths: list[Path], width: int | None = None) -> str:
    if not paths:
        return "<p>No figures (<code>comlab plot DIR</code> writes them).</p>"
    style = f" width='{width}'" if width else " style='max-width:100%'"
    return "".join(f"<figure style='display:inline-block;margin:4px'><img{style} "
                   f"alt='{_e(p.stem)}' src='data:image/png;base64,{_png_b64(p)}'/>"
                   f"<figcaption>{_e(p.stem)}</figcaption></figure>" for p in paths)


def _compare_html(result: Result, other: Result) -> str:
    from matplotlib.figure import Figure

    from .. import plots
    cmp = compare_mod.compare(other.records, result.records)
    fig = Figure(figsize=(9, 1.5 + 0.35 * len(cmp)), layout="constrained")
    plots.compare_ratios(cmp, ax=fig.add_subplot())
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    axes = [c for c in stability.CONFIG_AXES if c in cmp.columns]
    table = cmp[axes + [c for c in COMPARE_COLUMNS if c in cmp]]
    return (f"<h2>Compared with {_e(other.path)}</h2><p>a = {_e(other.path)}, "
            f"b = {_e(result.path)}: ratios are b / a (medians over repeats) with 95 % "
            f"bootstrap intervals; the verdict says whether b is faster (makespan).</p>"
            f"<img style='max-width:100%' src='data:image/png;base64,"
            f"{_png_b64(buf.getvalue())}'/>{_table_html(table)}")


def report_html(result: Result, other: Result | None = None) -> str:
    """One self-contained HTML page: facts, warnings, tables, figures (and a comparison)."""
    body = [f"<h1>comlab result {_e(result.path.name)}</h1>", _facts_html(result),
            _warnings_html(result.warnings),
            "<h2>Summary per configuration</h2><p>Medians over repeats; spread = (max - min) "
            "/ median of the repeats.</p>", _table_html(result.config_table())]
    if other is not None:
        body.append(_compare_html(result, other))
    body += ["<h2>Figures</h2>", _figures_html(result.figures),
             "<h2>Every run</h2><details><summary>per-run summary</summary>",
             _table_html(result.summary), "</details>"]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>comlab {_e(result.path.name)}</title><style>{CSS}</style></head><body>"
            + "".join(body) + "</body></html>")


CSS = ("body{font-family:sans-serif;margin:2em;max-width:1200px}"
       "table{border-collapse:collapse;font-size:90%}"
       "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}")


def write_report(path, compare=None, out=None) -> Path:
    """Write ``report.html`` (or ``out``) for the result at ``path``; ``compare``: another
    result directory to compare against (it is a, this result b)."""
    result = load(path)
    other = load(compare) if compare is not None else None
    out = Path(out) if out is not None else result.path / "report.html"
    out.write_text(report_html(result, other), encoding="utf-8")
    return out
