"""Figures of comlab results, from the records (one row per task per run) or their summary.

Every function takes a DataFrame and an optional matplotlib ``ax`` and returns the Axes it drew
on; none calls ``plt.show()``. Only when ``ax`` is None does a function ask pyplot for a new
figure (so figures show up in a notebook as usual); ``write_figures`` never touches pyplot: it
draws on bare ``Figure`` objects with the Agg canvas, which is headless- and thread-safe. No
backend is chosen at import.

A *configuration* is a batch size and a worker count, plus the strategy, transport and rate when
a result sweeps them (those are added to the grouping automatically when they vary), so runs
of different strategies are never pooled by accident. Repeats of a configuration are pooled
(per-task figures) or reduced to their median (per-run figures).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.collections import PolyCollection
from matplotlib.colors import LogNorm, Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import (EngFormatter, FixedLocator, LogLocator, NullFormatter,
                               NullLocator)

# Swept axes that join the configuration whenever they take more than one value.
EXTRA_AXES = ("strategy", "transport", "dispatch", "rate", "arrivals")

# The stages of a task, in order: (label, from stamp, to stamp).
STAGES = (
    ("client → server (incl. backpressure)", "t_sent", "t_server_in"),
    ("server", "t_server_in", "t_enqueued"),
    ("queue wait (enqueued → started)", "t_enqueued", "t_started"),
    ("running", "t_started", "t_finished"),
    ("worker → client (incl. wait for batch's last task)", "t_finished", "t_received"),
)
STAGE_COLORS = ("tab:blue", "tab:orange", "tab:red", "tab:green", "tab:purple")

LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

VALUE_LABELS = {
    "efficiency": "efficiency = ideal / measured makespan",
    "makespan_s": "makespan (s)",
    "ideal_s": "ideal makespan (s)",
    "throughput_tps": "throughput (tasks/s)",
    "latency_p50_s": "median latency (s)",
    "latency_p99_s": "p99 latency (s)",
    "overhead_p50_s": "median overhead (s)",
    "overhead_p99_s": "p99 overhead (s)",
}


def _seconds():
    """Tick labels such as 10 ms, 1 s (a new formatter per axis: formatters hold axis state)."""
    return EngFormatter(unit="s", places=None, sep=" ")


def _unitless(label: str) -> str:
    """A label without its " (s)": where ticks carry the unit themselves (10 ms, 1 s)."""
    return label.replace(" (s)", "")


def fmt_s(v) -> str:
    """A duration in s, ms, µs or ns with 3 significant digits (for annotations)."""
    if v is None or not np.isfinite(v):
        return "–"
    a = abs(v)
    if a == 0:
        return "0 s"
    if a >= 1000:
        return f"{v:.0f} s"
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if a >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v / 1e-9:.3g} ns"


# --- helpers -----------------------------------------------------------------------------------

def _new_ax(figsize=(9, 5)):
    """A fresh Axes from pyplot (only used when the caller gave no ax)."""
    import matplotlib.pyplot as plt
    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _note(ax, text: str):
    """Say why a figure is empty instead of failing."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", wrap=True,
            fontsize="medium", color="0.3")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _is_records(df: pd.DataFrame) -> bool:
    return "task_id" in df.columns


def _as_summary(df: pd.DataFrame, cpus: int | None = None) -> pd.DataFrame:
    if _is_records(df):
        from .lab.records import summarize
        return summarize(df, cpus=cpus) if len(df) else pd.DataFrame()
    return df


def _varying(df: pd.DataFrame, cols) -> list[str]:
    return [c for c in cols if c in df.columns and df[c].nunique(dropna=False) > 1]


def _config_cols(df: pd.DataFrame, by=("batch_size", "workers"), auto: bool = True) -> list[str]:
    by = [by] if isinstance(by, str) else list(by)
    by = [c for c in by if c in df.columns]
    if auto:
        by = _varying(df, [c for c in EXTRA_AXES if c not in by]) + by
    return by


def _fmt_value(col: str, v) -> str:
    if col == "batch_size":
        return f"b={v}"
    if col == "workers":
        return f"w={v}"
    if col == "rate":
        return "closed loop" if pd.isna(v) else f"{v:g} tasks/s"
    if col == "repeat":
        return f"repeat {v}"
    if col == "run":
        return f"run {v}"
    return str(v)


def _label(cols, key) -> str:
    key = key if isinstance(key, tuple) else (key,)
    return ", ".join(_fmt_value(c, v) for c, v in zip(cols, key)) or "all"


def _legend_title(cols) -> str | None:
    parts = [p for c, p in (("batch_size", "b = batch size"), ("workers", "w = workers"))
             if c in cols]
    return ", ".join(parts) or None


def _groups(df: pd.DataFrame, cols: list[str]):
    """(key tuple, frame) per configuration, sorted, unused category levels skipped."""
    if not cols:
        if len(df):
            yield (), df
        return
    for key, g in df.groupby(cols, observed=True, dropna=False, sort=True):
        yield (key if isinstance(key, tuple) else (key,)), g


def _palette(n: int) -> list:
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    cmap = colormaps["viridis"]
    return [cmap(0.92 * i / max(n - 1, 1)) for i in range(n)]


def _styles(keys: list[tuple], cols: list[str]) -> list[tuple]:
    """(color, linestyle) per configuration: hue by everything but workers, dash by workers."""
    if "workers" in cols and len(cols) > 1:
        wi = cols.index("workers")
        hue_keys = sorted({k[:wi] + k[wi + 1:] for k in keys}, key=_sort_key)
        w_vals = sorted({k[wi] for k in keys}, key=_sort_key)
        if len(w_vals) <= len(LINESTYLES):
            colors = dict(zip(hue_keys, _palette(len(hue_keys))))
            return [(colors[k[:wi] + k[wi + 1:]], LINESTYLES[w_vals.index(k[wi])]) for k in keys]
    colors = _palette(len(keys))
    return [(c, "-") for c in colors]


def _sort_key(v):
    if isinstance(v, tuple):
        return tuple(_sort_key(x) for x in v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return (0, float("inf") if pd.isna(v) else float(v), "")
    return (1, 0.0, str(v))


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(name))]


def _legend_outside(ax, handles=None, title=None, **kw):
    """A legend to the right of the axes, never over the data."""
    if handles is None:
        handles, _ = ax.get_legend_handles_labels()
    if not handles:
        return None
    kw.setdefault("fontsize", "small")
    return ax.legend(handles=handles, title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                     borderaxespad=0.0, frameon=False, title_fontsize="small", **kw)


def _log_ok(values, ratio: float) -> bool:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return len(v) > 1 and v.min() > 0 and v.max() / v.min() >= ratio


def _set_int_log_xaxis(ax, values, base=2):
    """Log x axis whose ticks are exactly the swept values (e.g. workers 1, 4, 16, 32)."""
    vals = sorted({float(v) for v in values if pd.notna(v)})
    ax.set_xscale("log", base=base)
    ax.xaxis.set_major_locator(FixedLocator(vals))
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:g}")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    lo, hi = vals[0], vals[-1]
    ax.set_xlim(lo / 1.25, hi * 1.25)


def _pack_lanes(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, int]:
    """Greedy interval packing (starts sorted): a lane per task, no overlap within a lane."""
    lanes_end: list[float] = []
    lane = np.zeros(len(start), dtype=int)
    for k, (a, b) in enumerate(zip(start, end)):
        for j, e in enumerate(lanes_end):
            if e <= a:
                lane[k] = j
                lanes_end[j] = b
                break
        else:
            lane[k] = len(lanes_end)
            lanes_end.append(b)
    return lane, max(len(lanes_end), 1)


def _busy_periods(start: np.ndarray, end: np.ndarray, pixel: float) -> list[tuple]:
    """(start, width) of the union of intervals (starts sorted), gaps under ``pixel`` closed,
    each at least ``pixel`` wide (a zero-wait task is still a mark)."""
    out: list[list[float]] = []
    for a, b in zip(start, np.maximum(end, start + pixel)):
        if out and a <= out[-1][1] + pixel:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b - a) for a, b in out]


def _text_color(rgba) -> str:
    r, g, b = to_rgb(rgba)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if "status" in df.columns else df


def _repeats_note(df: pd.DataFrame) -> str:
    if "repeat" not in df.columns:
        return ""
    n = df["repeat"].nunique()
    return f"{n} repeats pooled" if n > 1 else ""


# --- figures -----------------------------------------------------------------------------------

def latency_ecdf(df: pd.DataFrame, ax=None, by=("batch_size", "workers"), auto: bool = True,
                 facet: str | None = "auto", max_lines: int = 6):
    """ECDF of per-task latency (send -> reply) per configuration, log x, p50/p99 marked.

    Only ``ok`` tasks; repeats of a configuration are pooled. ``by`` names the columns of a
    configuration; with ``auto`` the swept strategy/transport/rate join it when they vary.

    Small multiples: with ``facet="auto"`` and more than ``max_lines`` configurations, one
    panel per worker count (colour: the rest of the configuration, e.g. batch size), all on
    one latency axis. ``facet`` may name another column, or be None for one panel. The panels
    take the place of ``ax`` in its figure (``ax`` becomes the first panel and is returned;
    all of them: ``ax.figure.axes``).
    """
    ok = _ok(df)
    ok = ok[np.isfinite(ok["latency_s"])] if "latency_s" in ok else ok.iloc[0:0]
    cols = _config_cols(df, by, auto)
    groups = [(k, g["latency_s"].to_numpy()) for k, g in _groups(ok, cols)]
    groups = [(k, v) for k, v in groups if len(v)]
    if facet == "auto":
        facet = "workers" if len(groups) > max_lines and "workers" in cols and len(cols) > 1 \
            else None
    if ax is None:
        rows = _facet_rows(ok[facet].nunique()) if facet in cols else 0
        ax = _new_ax((10.5, 1.2 + 3.3 * rows) if rows else (10, 5.5))
    if not groups:
        return _note(ax, "no ok tasks with a latency to plot")
    if facet is not None and facet in cols and ax.get_subplotspec() is not None:
        return _ecdf_facets(df, ok, ax, cols, facet)
    lat_all = np.concatenate([v for _, v in groups])
    _ecdf_panel(ax, groups, cols, _styles([k for k, _ in groups], cols), _log_ok(lat_all, 10))
    ax.set_ylabel("fraction of tasks with latency ≤ x")
    note = _repeats_note(df)
    ax.set_title("Latency distribution per configuration (ok tasks"
                 + (f", {note}" if note else "") + ")")
    _legend_outside(ax, _ecdf_handles(ax), title=_legend_title(cols))
    return ax


def _ecdf_panel(ax, groups, cols, styles, log: bool) -> None:
    for (key, lat), (color, ls) in zip(groups, styles):
        ax.ecdf(lat, color=color, linestyle=ls, linewidth=1.6, label=_label(cols, key))
        p50, p99 = np.quantile(lat, [0.5, 0.99])
        ax.scatter([p50], [0.5], marker="o", s=28, color=color, edgecolor="black",
                   linewidth=0.6, zorder=3)
        ax.scatter([p99], [0.99], marker="^", s=34, color=color, edgecolor="black",
                   linewidth=0.6, zorder=3)
    for y in (0.5, 0.99):
        ax.axhline(y, color="0.6", linewidth=0.8, linestyle=":", zorder=0)
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # LogFormatter's would print no unit
    ax.xaxis.set_major_formatter(_seconds())
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("latency: send → reply received" + (" (log scale)" if log else ""))
    ax.grid(True, which="major", alpha=0.3)


def _ecdf_handles(ax) -> list:
    handles, _ = ax.get_legend_handles_labels()
    return handles + [
        Line2D([], [], linestyle="none", marker="o", color="0.5", markeredgecolor="black",
               label="p50 (median)"),
        Line2D([], [], linestyle="none", marker="^", color="0.5", markeredgecolor="black",
               label="p99")]


def _facet_cols(n: int) -> int:
    return n if n <= 3 else int(np.ceil(np.sqrt(n)))


def _facet_rows(n: int) -> int:
    return int(np.ceil(n / _facet_cols(n))) if n else 0


def _ecdf_facets(df, ok, ax, cols, facet):
    """One ECDF panel per value of ``facet`` in place of ``ax``; colours shared by all panels."""
    rest = [c for c in cols if c != facet]
    values = sorted(ok[facet].dropna().unique(), key=_sort_key)
    keys = sorted({k for k, _ in _groups(ok, rest)}, key=_sort_key)
    color_of = dict(zip(keys, _palette(len(keys))))
    n = len(values)
    ncols = _facet_cols(n)
    nrows = _facet_rows(n)
    fig = ax.figure
    grid = ax.get_subplotspec().subgridspec(nrows, ncols)
    ax.set_subplotspec(grid[0, 0])
    panels = [ax] + [fig.add_subplot(grid[i // ncols, i % ncols], sharex=ax, sharey=ax)
                     for i in range(1, n)]
    log = _log_ok(ok["latency_s"], 10)  # under a decade a log axis would show no labelled tick
    for i, (panel, value) in enumerate(zip(panels, values)):
        sub = ok[ok[facet] == value]
        groups = [(k, g["latency_s"].to_numpy()) for k, g in _groups(sub, rest)]
        groups = [(k, v) for k, v in groups if len(v)]
        _ecdf_panel(panel, groups, rest, [(color_of[k], "-") for k, _ in groups], log)
        panel.set_title(_fmt_value(facet, value).replace("w=", "workers = "),
                        fontsize="medium")
        if i % ncols:
            panel.tick_params(labelleft=False)
        else:
            panel.set_ylabel("fraction ≤ x")
        if i < n - ncols:
            panel.set_xlabel("")
    # only the figure's own panels? then the figure title says what all of them show
    if all(a in panels for a in fig.axes) and hasattr(fig, "suptitle"):
        note = _repeats_note(df)
        fig.suptitle("Latency distribution, one panel per "
                     + ("worker count" if facet == "workers" else facet)
                     + " (ok tasks" + (f", {note}" if note else "") + ")")
    handles = [Line2D([], [], color=color_of[k], linewidth=1.6, label=_label(rest, k))
               for k in keys]
    panels[ncols - 1].legend(handles=handles + _ecdf_handles(panels[0])[-2:],
                             title=_legend_title(rest), loc="upper left",
                             bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False,
                             fontsize="small", title_fontsize="small")
    return ax


def _heat_norm(value: str, finite: np.ndarray, is_time: bool):
    """Times on a log scale when they span 20x; efficiency from 0 to at least 1."""
    if is_time and _log_ok(finite, 20):
        return LogNorm(vmin=finite.min(), vmax=finite.max())
    if value == "efficiency":
        return Normalize(vmin=0.0, vmax=max(1.0, finite.max() if len(finite) else 1.0))
    lo, hi = (finite.min(), finite.max()) if len(finite) else (0.0, 1.0)
    return Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)


def _annotate_cells(ax, data: np.ndarray, no_ideal: np.ndarray, fmt, color_of) -> None:
    """Each cell's value, legible on its colour; n/a where the ideal is 0, – where none."""
    size = "medium" if data.size <= 36 else "small" if data.size <= 100 else "x-small"
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = data[i, j]
            if np.isfinite(v):
                ax.text(j, i, fmt(v), ha="center", va="center", fontsize=size,
                        color=_text_color(color_of(v)))
            else:
                ax.text(j, i, "n/a" if no_ideal[i, j] else "–", ha="center", va="center",
                        fontsize=size, color="0.3")


def efficiency_heatmap(summary_or_df: pd.DataFrame, ax=None, value: str = "efficiency",
                       cpus: int | None = None):
    """Batch size x workers heatmap of ``value`` (median over repeats), cells annotated.

    Takes the summary or the records (summarized first; ``cpus`` goes to ``summarize``). When
    strategy/transport/rate vary, each of their values gets its own block of rows.
    """
    s = _as_summary(summary_or_df, cpus)
    ax = ax if ax is not None else _new_ax((8, 5.5))
    if s.empty or value not in s.columns:
        return _note(ax, f"no {value!r} to plot")
    extras = _varying(s, EXTRA_AXES)
    rows = extras + ["batch_size"]
    tab = (s.groupby(rows + ["workers"], observed=True, dropna=False)[value].median()
           .unstack("workers"))
    tab = tab.sort_index(axis=1)
    tab = tab.iloc[sorted(range(len(tab)), key=lambda i: _sort_key(
        tab.index[i] if isinstance(tab.index[i], tuple) else (tab.index[i],)))]
    data = tab.to_numpy(dtype=float)
    no_ideal = np.zeros(data.shape, dtype=bool)
    if value == "efficiency" and "ideal_s" in s:  # zero-wait tasks: ideal 0, efficiency n/a
        ideal = (s.groupby(rows + ["workers"], observed=True, dropna=False)["ideal_s"].median()
                 .unstack("workers").reindex(index=tab.index, columns=tab.columns))
        no_ideal = ~(ideal.to_numpy(dtype=float) > 0)
        data = np.where(no_ideal, np.nan, data)
    finite = data[np.isfinite(data)]
    is_time = value.endswith("_s")
    norm = _heat_norm(value, finite, is_time)
    cmap = colormaps["viridis_r" if is_time else "viridis"].with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, norm=norm, aspect="auto",
                   interpolation="nearest")
    if is_time:
        fmt = fmt_s
    else:
        fmt = (lambda v: f"{v:.2f}") if value == "efficiency" else (lambda v: f"{v:.3g}")
    _annotate_cells(ax, data, no_ideal, fmt, lambda v: cmap(norm(v)))
    ax.set_xticks(range(data.shape[1]), [f"{w:g}" for w in tab.columns])
    labels = []
    for key in tab.index:
        key = key if isinstance(key, tuple) else (key,)
        parts = [_fmt_value(c, v) for c, v in zip(extras, key[:-1])]
        parts.append(f"b={key[-1]}" if extras else str(key[-1]))
        labels.append(" · ".join(parts))
    ax.set_yticks(range(data.shape[0]), labels)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("workers (processes)")
    ylabel = "batch size (tasks per batch)"
    if extras:
        ylabel = " · ".join(extras + [ylabel])
    ax.set_ylabel(ylabel)
    n_rep = s["repeat"].nunique() if "repeat" in s else 1
    what = VALUE_LABELS.get(value, value)
    what = _unitless(what) if is_time else what
    ax.set_title(f"{what[0].upper() + what[1:]}"
                 + (f"\nmedian of {n_rep} repeats" if n_rep > 1 else "")
                 + ("; brighter is better" if value in ("efficiency", "throughput_tps")
                    or is_time else "")
                 + ("\nn/a: zero-wait tasks (ideal makespan 0)" if no_ideal.any() else ""))
    cbar = ax.figure.colorbar(im, ax=ax, shrink=0.9)
    cbar.set_label(_unitless(what) if is_time else what)
    if is_time:
        cbar.ax.yaxis.set_major_formatter(_seconds())
        cbar.ax.yaxis.set_minor_formatter(NullFormatter())
    if value == "efficiency" and len(finite) and finite.max() > 1.0:
        cbar.ax.axhline(1.0, color="white", linewidth=1)
    return ax


def throughput_vs_workers(summary_or_df: pd.DataFrame, ax=None, cpus: int | None = None):
    """Throughput (tasks / makespan) against workers, one line per batch size; ideal dashed.

    Solid: median over repeats (band: min..max of the repeats). Dashed, same color: the ideal
    throughput n_tasks / ideal_s of that batch size (comlab.lab.ideal), drawn and listed only where
    there is one (zero-wait tasks have none). With a single worker count the x axis is the
    batch size instead (one line per worker count then), so that the figure still has lines.
    """
    s = _as_summary(summary_or_df, cpus)
    ax = ax if ax is not None else _new_ax((9, 5.5))
    if s.empty or "throughput_tps" not in s.columns:
        return _note(ax, "no throughput to plot")
    s = s.assign(ideal_tps=s["n_tasks"] / s["ideal_s"].where(s["ideal_s"] > 0))
    x_col, line_col = "workers", "batch_size"
    if s["workers"].nunique() == 1 and s["batch_size"].nunique() > 1:
        x_col, line_col = "batch_size", "workers"
    cols = _varying(s, EXTRA_AXES) + [line_col]
    agg = (s.groupby(cols + [x_col], observed=True, dropna=False)
           .agg(med=("throughput_tps", "median"), lo=("throughput_tps", "min"),
                hi=("throughput_tps", "max"), ideal=("ideal_tps", "median"))
           .reset_index())
    groups = list(_groups(agg, cols))
    if len(cols) > 1:  # e.g. strategies: hue by everything but the line's column, marker by it
        hues = sorted({k[:-1] for k, _ in groups}, key=_sort_key)
        sizes = sorted({k[-1] for k, _ in groups}, key=_sort_key)
        hue_of = dict(zip(hues, _palette(len(hues))))
        colors = [hue_of[k[:-1]] for k, _ in groups]
        marks = [MARKERS[sizes.index(k[-1]) % len(MARKERS)] for k, _ in groups]
    else:
        colors = _palette(len(groups))
        marks = ["o"] * len(groups)
    multi = s["repeat"].nunique() > 1 if "repeat" in s else False
    has_ideal = bool(np.isfinite(agg["ideal"].to_numpy(float)).any())
    for (key, g), color, mark in zip(groups, colors, marks):
        g = g.sort_values(x_col)
        x = g[x_col].to_numpy(dtype=float)
        ax.plot(x, g["med"], marker=mark, color=color, linewidth=1.8, label=_label(cols, key))
        if multi:
            ax.fill_between(x, g["lo"], g["hi"], color=color, alpha=0.15, linewidth=0)
        if has_ideal:
            ax.plot(x, g["ideal"], linestyle="--", marker="_", markersize=14, color=color,
                    linewidth=1.2, alpha=0.9, label=f"_ideal {_label(cols, key)}")
    xs = agg[x_col].to_numpy(dtype=float)
    if _log_ok(xs, 4):
        _set_int_log_xaxis(ax, xs)
    else:
        ax.set_xticks(sorted(set(xs)))
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:g}")
    ys = np.concatenate([agg["med"].to_numpy(float), agg["ideal"].to_numpy(float)])
    if _log_ok(ys, 20):
        ax.set_yscale("log")
    elif np.isfinite(ys).any():
        ax.set_ylim(0, 1.08 * np.nanmax(ys))
    ax.yaxis.set_major_formatter(EngFormatter(places=None, sep=""))
    ax.set_xlabel("workers (processes)" if x_col == "workers" else
                  "batch size (tasks per batch)")
    ax.set_ylabel("throughput (tasks/s)")
    title = "Throughput vs workers" if x_col == "workers" else \
        f"Throughput vs batch size ({_fmt_value('workers', s['workers'].iloc[0])}, the only " \
        f"worker count)"
    ax.set_title(title + (" (median of repeats, band = min..max)" if multi else "")
                 + ("" if has_ideal else "\nno ideal line: zero-wait tasks (ideal makespan 0)"))
    ax.grid(True, which="major", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    handles = [h for h in handles if not h.get_label().startswith("_")]
    if has_ideal:
        handles += [Line2D([], [], color="0.3", linewidth=1.8, marker="o", label="measured"),
                    Line2D([], [], color="0.3", linewidth=1.2, linestyle="--", marker="_",
                           markersize=14, label="ideal (n_tasks / ideal_s)")]
    names = {"batch_size": "b = batch size", "workers": "w = workers"}
    _legend_outside(ax, handles, title=", ".join(list(cols[:-1]) + [names[line_col]]))
    return ax


def stage_breakdown(df: pd.DataFrame, ax=None, stat: str = "median", normalize: bool = True,
                    by=("batch_size", "workers"), auto: bool = True):
    """Stacked bars per configuration: where a task's time goes (``median`` or ``mean`` per stage).

    Stages: client -> server, server, queue wait (enqueued -> a worker starts it), running,
    worker -> client. Results of a batch leave together when its last task ends, so the last
    stage includes waiting for the slowest task of the batch. Only ok tasks; repeats pooled.
    Bars are the ``stat`` of each stage, so their total need not equal the ``stat`` of the
    latency.

    ``normalize`` (default) draws each stage as a share of its bar, with the bar's total time
    printed at its right: every configuration is readable, however far apart their totals.
    ``normalize=False`` draws the times on one linear axis (comparable lengths, but the slowest
    configuration dominates when totals differ by orders of magnitude).
    """
    if stat not in ("median", "mean"):
        raise ValueError("stat must be 'median' or 'mean'")
    cols = _config_cols(df, by, auto)
    ok = _ok(df)
    n_configs = ok.groupby(cols, observed=True, dropna=False).ngroups if cols and len(ok) else 1
    ax = ax if ax is not None else _new_ax((10, 1.5 + 0.42 * n_configs))
    if not len(ok) or any(c not in ok for _, a, b in STAGES for c in (a, b)):
        return _note(ax, "no ok tasks with stage stamps")
    stages = pd.DataFrame({label: ok[b] - ok[a] for label, a, b in STAGES})
    for c in cols:
        stages[c] = ok[c]
    if cols:
        agg = stages.groupby(cols, observed=True, dropna=False, sort=True).agg(stat)
        agg = agg.iloc[sorted(range(len(agg)), key=lambda i: _sort_key(
            agg.index[i] if isinstance(agg.index[i], tuple) else (agg.index[i],)))]
        labels = [_label(cols, k) for k in agg.index]
    else:
        agg = stages.agg([stat])
        labels = ["all tasks"]
    agg = agg[[label for label, _, _ in STAGES]]
    values = agg.to_numpy(dtype=float)
    values = np.where(np.isfinite(values), values, 0.0)
    totals = values.sum(axis=1)
    if normalize:
        values = values / np.where(totals > 0, totals, 1.0)[:, None]
    y = np.arange(len(labels))
    left = np.zeros(len(labels))
    for (label, _, _), color, col in zip(STAGES, STAGE_COLORS, values.T):
        ax.barh(y, col, left=left, color=color, label=label, height=0.7,
                edgecolor="white", linewidth=0.5)
        left += col
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    if not normalize:
        ax.xaxis.set_major_formatter(_seconds())
        for yi, total in zip(y, totals):
            ax.text(total, yi, " " + fmt_s(total), va="center", ha="left", fontsize="small",
                    color="0.25")
        ax.set_xlim(0, totals.max() * 1.18 if totals.max() > 0 else 1)
        ax.set_xlabel(f"{stat} time per stage, stacked")
    else:
        # the totals get a column of their own right of the 100 % line
        ax.set_xlim(0, 1.13)
        ax.xaxis.set_major_locator(FixedLocator(np.linspace(0, 1, 6)))
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:.0%}")
        ax.axvline(1.0, color="0.5", linewidth=0.8)
        for yi, total in zip(y, totals):
            ax.text(1.012, yi, fmt_s(total), va="center", ha="left", fontsize="small",
                    color="0.2")
        ax.text(1.012, -0.5, "total", va="bottom", ha="left", fontsize="small",
                color="0.2", fontweight="bold")
        ax.set_xlabel(f"share of the stacked {stat} stage times; total at the right")
    ax.set_ylabel("configuration" + (f" ({_legend_title(cols)})" if _legend_title(cols)
                                       else ""))
    note = _repeats_note(df)
    what = f"share of each stage in the stacked {stat}s" if normalize else f"{stat} per stage"
    if not normalize and totals.min() > 0 and totals.max() / totals.min() > 10:
        what += " on one linear axis"
    ax.set_title(f"Where a task's time goes: {what} (ok tasks"
                 + (f", {note}" if note else "") + ")")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    _legend_outside(ax, title="stage")
    return ax


def _worker_rows(g: pd.DataFrame) -> tuple[list[str], int]:
    """Row names of a run's timeline and how many workers ran nothing.

    Workers that got no batch leave no record; when the seen names are the local pool's
    (w0, w1, ...) the missing ones are shown as empty rows, so idle workers are visible.
    """
    seen = sorted({str(w) for w in g["worker"].dropna().unique() if str(w) != "server"},
                  key=_natural)
    expected = int(g["workers"].iloc[0]) if "workers" in g and len(g) else len(seen)
    if len(seen) < expected and all(re.fullmatch(r"w\d+", n) and int(n[1:]) < expected
                                    for n in seen):
        return [f"w{i}" for i in range(expected)], expected - len(seen)
    return seen, 0


def _busy_row(ax, i: int, name: str, start, width, span: float, pixel: float) -> str:
    """A worker's busy periods as one bar row; its label with the share of time busy."""
    busy = _busy_periods(start, start + width, pixel)
    ax.broken_barh(busy, (i - 0.4, 0.8), facecolors="tab:blue", edgecolors="none",
                   label="_busy")
    share = sum(w for _, w in _busy_periods(start, start + width, 0.0)) / span
    return f"{name} ({share:.0%} busy)" if share >= 0.005 or not share else f"{name} (<1% busy)"


def _task_row(ax, i: int, start, width, batch, wide: bool, row_px: float) -> int:
    """A worker's tasks, each a rectangle in its own lane (concurrent tasks of a worker, e.g.
    a thread-per-task batch, stack instead of hiding each other); returns the lanes used."""
    cmap = colormaps["tab10"]  # no pale colors: thin lanes stay visible
    lane, n_lanes = _pack_lanes(start, start + width)
    h = 0.8 / n_lanes
    edge = (dict(edgecolors="white", linewidths=0.4) if wide and row_px * h > 4
            else dict(edgecolors="none"))
    colors = [cmap(int(b) % 10) for b in batch]
    verts = [[(x0, y0), (x0, y0 + h), (x0 + w, y0 + h), (x0 + w, y0)]
             for x0, w, y0 in zip(start, width, i - 0.4 + lane * h)]
    # one collection per worker
    ax.add_collection(PolyCollection(verts, facecolors=colors, label="_tasks", **edge),
                      autolim=True)
    return n_lanes


def _timeline_title(g: pd.DataFrame, run, n_rows: int, n_idle: int, ran: pd.DataFrame,
                    aggregate: bool, max_lanes: int) -> str:
    """What is drawn, the run's configuration and the tasks not drawn."""
    first = g.iloc[0]
    desc = [f"run {run}"]
    for col in ("batch_size", "workers", "strategy", "transport", "dispatch", "rate", "repeat"):
        if col not in g.columns or pd.isna(first[col]):
            continue
        v = first[col]
        if col == "batch_size":
            desc.append(f"batch size {v}")
        elif col == "workers":
            desc.append(f"{v} worker" + ("s" if v != 1 else ""))
        else:
            desc.append(_fmt_value(col, v))
    extra = []
    if n_idle:
        extra.append(f"{n_idle} of {n_rows} workers ran no task")
    n_server = int((g["worker"].astype(str) == "server").sum())
    n_missing = int(len(g) - len(ran) - n_server)
    if n_server:
        extra.append(f"{n_server} answered by the server, not shown")
    if n_missing:
        extra.append(f"{n_missing} never ran (lost/failed before start), not shown")
    lanes = f"; concurrent tasks in up to {max_lanes} lanes" if max_lanes > 1 else ""
    what = (f"Busy periods per worker ({len(ran)} tasks' t_started → t_finished merged: too "
            f"many or too short to draw one by one)" if aggregate else
            f"Tasks per worker, t_started → t_finished, color = batch (cycled){lanes}")
    return f"{what}\n" + ", ".join(desc) + ("; " + "; ".join(extra) if extra else "")


def timeline(df: pd.DataFrame, run=None, ax=None, color_by: str = "batch_id",
             aggregate: bool | None = None):
    """Gantt chart of one run (default: the first): a row per worker, a bar per task.

    Bars run from t_started to t_finished and are colored by batch (colors cycle), so idle
    gaps, stragglers and batches that queue are visible. Tasks the server answered itself and
    tasks that never ran (lost) are counted in the title, not drawn.

    ``aggregate`` (default: when the tasks would be narrower than ~3 pixels each, e.g. 512
    tasks of a batch-1 run, or zero-wait tasks): each worker's busy periods instead, the union
    of its tasks' t_started → t_finished, gaps under a pixel closed and every period at least
    a pixel wide; a barcode of cycled colours says nothing, idle gaps do.
    """
    if df.empty or "run" not in df.columns:
        return _note(ax if ax is not None else _new_ax(), "no runs to plot")
    run = df["run"].min() if run is None else run
    g = df[df["run"] == run]
    names, n_idle = _worker_rows(g)
    ax = ax if ax is not None else _new_ax((12, 1.6 + 0.32 * max(len(names), 1)))
    if g.empty:
        return _note(ax, f"no run {run!r} in these records")
    ran = g[np.isfinite(g["t_started"]) & np.isfinite(g["t_finished"])
            & (g["worker"].astype(str) != "server")]
    if ran.empty:
        return _note(ax, f"run {run}: no task ran on a worker")
    worker_str = ran["worker"].astype(str)
    span = max(float(np.nanmax(ran["t_finished"].to_numpy(float))),
               float(np.nanmax(g["t_received"].to_numpy(float))), 1e-9)
    px = ax.figure.get_figwidth() * ax.figure.dpi * 0.8
    task_px = px * float(np.median(ran["t_finished"] - ran["t_started"])) / span
    per_row = len(ran) / max(worker_str.nunique(), 1)
    if aggregate is None:  # too thin to tell apart: a bar under ~3 px, or too many in a row
        aggregate = task_px < 3 or per_row > px / 3
    row_px = ax.figure.get_figheight() * ax.figure.dpi * 0.75 / max(len(names), 1)
    labels, max_lanes = list(names), 1
    for i, name in enumerate(names):
        sub = ran[worker_str == name].sort_values("t_started")
        if sub.empty:
            continue
        start = sub["t_started"].to_numpy(float)
        width = np.maximum(sub["t_finished"].to_numpy(float) - start, 0.0)
        if aggregate:
            labels[i] = _busy_row(ax, i, name, start, width, span, span / px)
        else:  # white outlines separate back-to-back tasks of a batch, when wide enough
            max_lanes = max(max_lanes, _task_row(ax, i, start, width, sub[color_by],
                                                 task_px > 4, row_px))
    ax.autoscale_view()
    end = g["t_received"].max()
    if np.isfinite(end):
        ax.axvline(end, color="black", linestyle="--", linewidth=1, label="last reply received")
    ax.set_yticks(range(len(names)), labels)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlim(left=0)
    ax.xaxis.set_major_formatter(_seconds())
    ax.set_xlabel("time since run start")
    ax.set_ylabel("worker")
    ax.set_title(_timeline_title(g, run, len(names), n_idle, ran, aggregate, max_lanes),
                 fontsize="medium")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    _legend_outside(ax)
    return ax


def overhead_percentiles(df: pd.DataFrame, ax=None, by: str = "rate",
                         quantiles=(0.5, 0.99, 0.999)):
    """Open-loop results: p50/p99/p99.9 of overhead (latency - wait) against offered rate.

    Without a rate column (closed-loop results) the axes only carry a note.
    """
    ax = ax if ax is not None else _new_ax((9, 5.5))
    if by not in df.columns or df[by].notna().sum() == 0:
        return _note(ax, f"no {by!r} column: overhead percentiles need open-loop runs "
                         "(run_experiment(rate=...))")
    ok = _ok(df)
    ok = ok[ok[by].notna() & np.isfinite(ok["overhead_s"])]
    if ok.empty:
        return _note(ax, "no ok open-loop tasks")
    cols = _config_cols(ok, ("batch_size", "workers"), auto=True)
    cols = [c for c in cols if c != by]
    cols = _varying(ok, cols)
    q = (ok.groupby(cols + [by], observed=True, dropna=False)["overhead_s"]
         .quantile(list(quantiles)).unstack())
    groups = list(_groups(q.reset_index(), cols))
    colors = _palette(len(groups)) if cols else None
    markers = ("o", "s", "^", "D")
    qlabel = {0.5: "p50", 0.99: "p99", 0.999: "p99.9"}
    for gi, (key, g) in enumerate(groups):
        g = g.sort_values(by)
        x = g[by].to_numpy(float)
        for qi, p in enumerate(quantiles):
            name = qlabel.get(p, f"p{p * 100:g}")
            color = colors[gi] if cols else _palette(len(quantiles))[qi]
            label = f"{_label(cols, key)} · {name}" if cols else name
            ax.plot(x, g[p].to_numpy(float), color=color, marker=markers[qi % len(markers)],
                    linestyle=LINESTYLES[qi % len(LINESTYLES)], label=label)
    xs = q.reset_index()[by].to_numpy(float)
    if _log_ok(xs, 4):
        _set_int_log_xaxis(ax, xs, base=10)
    else:
        ax.set_xticks(sorted(set(xs)))
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:g}")
    if _log_ok(q.to_numpy(float).ravel(), 10):
        ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_seconds())
    ax.set_xlabel("offered load (tasks/s)" if by == "rate" else by)
    ax.set_ylabel("overhead = latency − wait")
    ax.set_title("Overhead percentiles vs offered load (open loop, ok tasks)")
    ax.grid(True, which="major", alpha=0.3)
    _legend_outside(ax, title=_legend_title(cols) if cols else "percentile")
    return ax


# --- writing every figure of a saved result ----------------------------------------------------

def _figure(figsize) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def write_figures(result_dir, dpi: int = 120) -> list[Path]:
    """Write every applicable figure of a saved result as PNG into ``<result_dir>/figures``.

    Works from the saved files alone (records + meta.json); the ideal time of cpu-bound runs
    uses the CPU count recorded with the result. Returns the paths written.
    """
    from .lab import atomic
    from .lab.results import load_results
    result_dir = Path(result_dir)
    df = load_results(result_dir)
    out = result_dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, png in draw_figures(df, dpi=dpi):
        path = out / f"{name}.png"
        paths.append(atomic.write_bytes(path, png))
    return paths


def draw_figures(df: pd.DataFrame, cpus: int | None = None, dpi: int = 120):
    """(name, PNG bytes) of every applicable figure of these records, drawn in memory (what
    ``write_figures`` saves, and what ``comlab report`` embeds when none were saved).
    ``cpus``: for the cpu-bound ideal (default: the records' own, ``df.attrs``)."""
    import io
    for name, size, draw in _figure_jobs(df, cpus):
        fig = _figure(size)
        try:
            draw(fig.add_subplot())
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=dpi)
            yield name, buf.getvalue()
        finally:
            fig.clear()


def _figure_jobs(df: pd.DataFrame, cpus: int | None) -> list:
    """(name, figure size, draw(ax)) of every figure that applies to these records."""
    if df.empty:
        return []
    from .lab.records import summarize
    summary = summarize(df, cpus=cpus)
    cols = _config_cols(df)
    n_conf = df.groupby(cols, observed=True, dropna=False).ngroups if cols else 1
    hm_rows = summary.groupby(_varying(summary, EXTRA_AXES) + ["batch_size"],
                              observed=True, dropna=False).ngroups
    hm_cols = summary["workers"].nunique()
    hm_size = (max(6.0, 2.8 + 1.1 * hm_cols), max(3.5, 1.6 + 0.55 * hm_rows))
    legend_h = 1.5 + 0.22 * n_conf
    ecdf_size = (10.5, max(5.5, legend_h))
    if n_conf > 6 and "workers" in cols and len(cols) > 1:  # latency_ecdf draws small multiples
        ecdf_size = (10.5, 1.2 + 3.3 * _facet_rows(df["workers"].nunique()))

    jobs = [
        ("latency_ecdf", ecdf_size, lambda ax: latency_ecdf(df, ax=ax)),
        ("efficiency_heatmap", hm_size,
         lambda ax: efficiency_heatmap(summary, ax=ax, value="efficiency")),
        ("makespan_heatmap", hm_size,
         lambda ax: efficiency_heatmap(summary, ax=ax, value="makespan_s")),
        ("throughput_vs_workers", (10, 5.5), lambda ax: throughput_vs_workers(summary, ax=ax)),
        ("stage_breakdown", (13, 1.8 + 0.42 * n_conf), lambda ax: stage_breakdown(df, ax=ax)),
    ]
    runs = [df["run"].min()]
    if summary["efficiency"].notna().any():
        worst = summary.loc[summary["efficiency"].idxmin(), "run"]
        if worst not in runs:
            runs.append(worst)
    for run in runs:
        n_workers = len(_worker_rows(df[df["run"] == run])[0])
        jobs.append((f"timeline_run{int(run):04d}", (12, 1.8 + 0.32 * n_workers),
                     lambda ax, run=run: timeline(df, run=run, ax=ax)))
    if "rate" in df.columns and df["rate"].notna().any():
        jobs.append(("overhead_percentiles", (10, 5.5),
                     lambda ax: overhead_percentiles(df, ax=ax)))
    return jobs


__all__ = ["latency_ecdf", "efficiency_heatmap", "throughput_vs_workers", "stage_breakdown",
           "timeline", "overhead_percentiles", "write_figures", "draw_figures", "STAGES"]


# --- compare_ratios (comlab.compare) ------------------------------------------------------------
# Confirmed verdicts in full colour, marked ("?": too few repeats to confirm) in a light one.
VERDICT_STYLES = (("faster", "b faster", "tab:green", "o"),
                  ("slower", "b slower", "tab:red", "o"),
                  ("faster?", "b faster? (not confirmed)", "#8fd48f", "D"),
                  ("slower?", "b slower? (not confirmed)", "#f4a3a3", "D"),
                  ("same", "same", "0.45", "o"),
                  ("too few repeats", "too few repeats", "0.7", "x"),
                  ("workload differs", "workload differs: no verdict", "tab:orange", "s"))


def compare_ratios(cmp: pd.DataFrame, metric: str = "makespan_s", ax=None):
    """The ratio b / a of ``metric`` per configuration of ``comlab.compare(a, b)``, with its 95 %
    interval; a line at 1 (no change). Colour and marker: makespan's verdict (green: b faster,
    red: b slower, light and a diamond: not confirmed, grey: same)."""
    from .lab.stability import CONFIG_AXES
    ax = ax if ax is not None else _new_ax((9, 1.5 + 0.35 * max(len(cmp), 1)))
    if cmp is None or not len(cmp):
        return _note(ax, "nothing to compare")
    cols = [c for c in CONFIG_AXES if c in cmp.columns]
    shown = [c for c in cols if cmp[c].nunique(dropna=False) > 1] or cols
    ratio = cmp[f"{metric}_ratio"].to_numpy(float)
    lo = cmp[f"{metric}_ratio_lo"].to_numpy(float)
    hi = cmp[f"{metric}_ratio_hi"].to_numpy(float)
    style = {v: (c, m) for v, _, c, m in VERDICT_STYLES}
    y = np.arange(len(cmp))
    for yi, r, l, h, v in zip(y, ratio, lo, hi, cmp["verdict"]):
        color, marker = style.get(v, ("0.45", "o"))
        err = [[max(r - l, 0)], [max(h - r, 0)]] if np.isfinite(l) and np.isfinite(h) else None
        ax.errorbar([r], [yi], xerr=err, fmt=marker, color=color, capsize=3,
                    markeredgecolor="0.2" if marker == "D" else color)
    ax.axvline(1.0, color="0.2", linestyle="--", linewidth=1)
    ax.set_yticks(y, [_label(shown, tuple(row)) for row in cmp[shown].itertuples(index=False)])
    if not ax.yaxis_inverted():  # first row on top; idempotent, so panels may share y
        ax.invert_yaxis()
    if _log_ok(np.concatenate([ratio, lo, hi]), 3):  # 0.1 and 10 equally far from 1
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:g}")
        ax.xaxis.set_minor_formatter(NullFormatter())
    label = VALUE_LABELS.get(metric, metric).replace(" (s)", "")
    ax.set_xlabel(f"{label}: ratio b / a (95 % interval over runs; < 1: b lower)")
    present = set(cmp["verdict"])
    handles = [Line2D([], [], marker=m, linestyle="", color=c,
                      markeredgecolor="0.2" if m == "D" else c, label=text)
               for v, text, c, m in VERDICT_STYLES if v in present]
    ax.legend(handles=handles, title="verdict (makespan)", loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize="small", title_fontsize="small",
              borderaxespad=0.0)  # beside the plot: never on top of a ratio
    return ax


__all__ += ["compare_ratios"]
