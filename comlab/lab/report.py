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
        summary = records.summarize(self.records) if len(self.records) else pd.DataFrame()
        summary.attrs["params"] = self.params  # compare checks the workloads are the same
        return summary

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

    @cached_property
    def images(self) -> list[tuple[str, bytes]]:
        """(name, PNG) of the saved figures, or, when none were saved (``comlab plot`` never
        ran), of every figure drawn now in memory from the records (nothing is written)."""
        if self.figures:
            return [(p.stem, p.read_bytes()) for p in self.figures]
        if not len(self.records):
            return []
        from .. import plots
        return list(plots.draw_figures(self.records))

    def counts(self) -> dict:
        """Tasks per final status over every run (``n_ok``, ``n_unknown``, ...)."""
        cols = [c for c in self.summary.columns if c.startswith("n_") and c not in
                ("n_tasks", "n_latency")] if len(self.summary) else []
        return {c: int(self.summary[c].sum()) for c in cols}

    def headline(self) -> str:
        """One line: runs, configurations, tasks and how many of them ended in each status."""
        counts = self.counts()
        tasks = sum(counts.values())
        parts = [f"{counts.get('n_ok', 0):,} ok"] + [
            f"{counts.get(f'n_{s}', 0):,} {s}" for s in ("unknown", "unreachable", "failed",
                                                        "lost")]
        return (f"{len(self.summary)} runs of {len(self.configs)} configurations, {tasks:,} "
                f"tasks: " + ", ".join(parts))

    def config_table(self) -> pd.DataFrame:
        axes = [a for a in stability.config_axes(self.configs) if a != "experiment"]
        cols = axes + [c for c in CONFIG_COLUMNS if c in self.configs]
        return self.configs[cols] if len(self.configs) else self.configs

    def _repr_html_(self) -> str:
        return (f"<div><h3>{_e(self.path)}</h3>{_headline_html(self)}{_facts_html(self)}"
                f"{_warnings_html(self.warnings)}"
                f"<h4>Summary (median over repeats)</h4>{_table_html(self.config_table())}"
                f"{_figures_html(self.images, width=220)}</div>")


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
             f"  {result.headline()}", "parameters:"]
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
    """A table that scrolls within the page instead of overflowing it."""
    if df is None or not len(df):
        return "<p>(nothing)</p>"
    return ("<div class='scroll'>"
            + df.to_html(index=False, float_format="{:.4g}".format, na_rep="", border=0)
            + "</div>")


def _headline_html(result: Result) -> str:
    counts = result.counts()
    bad = any(counts.get(f"n_{s}", 0) for s in BAD_STATUSES)
    style = " class='bad'" if bad else ""
    return f"<p{style}><b>{_e(result.headline())}</b></p>"


BAD_STATUSES = ("unknown", "unreachable", "failed", "lost")  # a task that did not run as asked


def summary_table(configs: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The per-configuration table for the page, without the axes that have one value
    throughout (returned apart, {axis: value}): it fits the page's width."""
    if not len(configs):
        return configs, {}
    axes = [a for a in stability.config_axes(configs) if a != "experiment"]
    fixed = {a: configs[a].iloc[0] for a in axes if a not in ("batch_size", "workers")
             and configs[a].nunique(dropna=False) == 1}
    cols = [a for a in axes if a not in fixed]
    out = configs[cols + [c for c in CONFIG_COLUMNS if c in configs]].copy()
    for c in ("makespan_s_spread", "latency_p99_s_spread"):
        if c in out:
            out[c] = out[c].map(lambda v: "" if pd.isna(v) else f"{v:.0%}")
    if "efficiency" in out and "ideal_s" in configs:  # zero-wait tasks: an ideal of 0
        out["efficiency"] = [f"{e:.3g}" if i > 0 else "n/a"
                             for e, i in zip(configs["efficiency"], configs["ideal_s"])]
    return out.rename(columns=SHORT_NAMES), fixed


SHORT_NAMES = {"batch_size": "batch", "n_repeats": "repeats", "makespan_s": "makespan (s)",
               "makespan_s_spread": "spread", "efficiency": "efficiency",
               "throughput_tps": "tasks/s", "latency_p50_s": "p50 (s)",
               "latency_p99_s": "p99 (s)", "latency_p99_s_spread": "p99 spread",
               "n_lost": "lost"}


def _fixed_html(fixed: dict, where: str) -> str:
    if not fixed:
        return ""
    return (f"<p>{_e(where)}: " + ", ".join(f"{_e(k)} <code>{_e(v)}</code>"
                                           for k, v in fixed.items()) + "</p>")


def _png_b64(path_or_bytes) -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return base64.b64encode(data).decode("ascii")


def _figures_html(images: list, width: int | None = None, drawn: bool = False) -> str:
    """``images``: (name, PNG bytes) pairs, or paths of PNG files."""
    if not images:
        return "<p>No figures: the result has no records.</p>"
    images = [(p.stem, p) if isinstance(p, Path) else p for p in images]
    style = f" width='{width}'" if width else " style='max-width:100%'"
    note = ("<p>Drawn from the records for this page (none were saved; <code>comlab plot "
            "DIR</code> saves them).</p>" if drawn else "")
    return note + "".join(
        f"<figure style='display:inline-block;margin:4px'><img{style} alt='{_e(name)}' "
        f"src='data:image/png;base64,{_png_b64(png)}'/><figcaption>{_e(name)}</figcaption>"
        f"</figure>" for name, png in images)


def _compare_html(result: Result, other: Result, cmp) -> str:
    from matplotlib.figure import Figure

    from .. import plots
    fig = Figure(figsize=(10, 1.6 + 0.35 * len(cmp)), layout="constrained")
    plots.compare_ratios(cmp, ax=fig.add_subplot())
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    workload = ""
    if cmp.attrs["workload"]:
        items = "".join(f"<li>{_e(w)}</li>" for w in cmp.attrs["workload"])
        workload = (f"<p class='bad'><b>Not the same workload</b>: the ratios measure the "
                    f"workloads too, so no verdict.</p><ul class='bad'>{items}</ul>")
    rules = "<br/>".join(_e(line) for line in cmp.attrs["rules"].splitlines())
    return (f"<h2>Compared with {_e(other.path)}</h2><p>a = {_e(other.path)}, "
            f"b = {_e(result.path)}: ratios are b / a of geometric means over repeats, with "
            f"95 % intervals (Welch's t on the runs).</p><p class='rules'>{rules}</p>"
            f"{workload}{_fixed_html(compare_mod.constant_axes(cmp), 'In every configuration')}"
            f"<img style='max-width:100%' alt='compare_ratios' src='data:image/png;base64,"
            f"{_png_b64(buf.getvalue())}'/>{_table_html(compare_mod.table(cmp))}")


def _differs_html(cmp, a: Result, b: Result) -> str:
    """The comparison's headline: what differs between a and b (a -> b)."""
    found = compare_mod.differences(cmp, a.environment, b.environment)
    said = "; ".join(found) if found else ("nothing in the axes, code or machine (an A/A "
                                           "comparison)")
    return (f"<p class='differs'><b>What differs, a ({_e(a.path.name)}) -> b "
            f"({_e(b.path.name)}): {_e(said)}</b></p>")


def report_html(result: Result, other: Result | None = None) -> str:
    """One self-contained HTML page: facts, warnings, tables, figures (and a comparison)."""
    table, fixed = summary_table(result.configs)
    body = [f"<h1>comlab result {_e(result.path.name)}</h1>"]
    if other is not None:  # the headline says first what the comparison is about
        cmp = compare_mod.compare(other.records, result.records)  # records: the waits checked
        body.append(_differs_html(cmp, other, result))
    body += [_headline_html(result), _warnings_html(result.warnings)]
    if other is not None:
        body.append(_compare_html(result, other, cmp))
    body += ["<h2>Summary per configuration</h2><p>Medians over repeats; spread = (max - min) "
             "/ median of the repeats.</p>", _fixed_html(fixed, "In every configuration"),
             _table_html(table), _facts_html(result),
             "<h2>Figures</h2>", _figures_html(result.images, drawn=not result.figures),
             "<h2>Every run</h2><details><summary>per-run summary</summary>",
             _table_html(result.summary), "</details>"]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>comlab {_e(result.path.name)}</title><style>{CSS}</style></head><body>"
            + "".join(body) + "</body></html>")


CSS = ("body{font-family:sans-serif;margin:2em;max-width:1200px;overflow-wrap:anywhere}"
       "img{max-width:100%;height:auto}figure{max-width:100%}"
       "@media (max-width:600px){body{margin:0.6em}h1{font-size:1.6em}h2{font-size:1.3em}}"
       # a wide table scrolls inside its box: squeezed to a phone's width, its numbers and
       # column names broke letter by letter (body's overflow-wrap:anywhere)
       ".scroll{overflow-x:auto;max-width:100%}.scroll td{white-space:nowrap}"
       "th{overflow-wrap:normal}"
       "table{border-collapse:collapse;font-size:90%}"
       "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
       ".bad{color:#a40}.rules{font-size:90%;color:#333}")


def write_report(path, compare=None, out=None) -> Path:
    """Write ``report.html`` (or ``out``) for the result at ``path``; ``compare``: another
    result directory to compare against (it is a, this result b)."""
    result = load(path)
    other = load(compare) if compare is not None else None
    out = Path(out) if out is not None else result.path / "report.html"
    from .atomic import write_text
    return write_text(out, report_html(result, other))
