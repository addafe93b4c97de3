"""Tests for comlab.plots on one small real result (4 runs of 32 tasks)."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import comlab
from comlab import plots

pytestmark = pytest.mark.timeout(120)

N_TASKS = 32
BATCH_SIZES = [1, 8]
WORKERS = [1, 2]
N_CONFIGS = len(BATCH_SIZES) * len(WORKERS)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """(result dir, records) of one small closed-loop sweep."""
    root = tmp_path_factory.mktemp("results")
    commands = [f"192.168.1.{i}:foo" for i in range(N_TASKS)]
    smap = {f"192.168.1.{i}": {"foo": (1, 0.005)} for i in range(N_TASKS)}
    df = comlab.run_experiment(batch_sizes=BATCH_SIZES, workers=WORKERS, repeats=1,
                               commands=commands, server_map=smap, progress=False,
                               results_dir=root, name="plots")
    return root / "plots", df


@pytest.fixture
def records(result):
    return result[1].copy()


@pytest.fixture
def ax():
    """Axes on a bare Figure (Agg canvas, no pyplot state)."""
    return Figure(figsize=(9, 5), layout="constrained").add_subplot()


def labelled(axes) -> None:
    assert isinstance(axes, Axes)
    assert axes.get_xlabel().strip() and axes.get_ylabel().strip()
    assert axes.get_title().strip()


def legend_lines(axes):
    """Lines drawn for data (labels starting with "_" are helpers: refs, ideal lines)."""
    return [line for line in axes.get_lines() if not line.get_label().startswith("_")]


def test_result_is_as_expected(records):
    assert len(records) == N_TASKS * N_CONFIGS
    assert (records["status"] == "ok").all()


# --- latency_ecdf --------------------------------------------------------------------------------

def test_latency_ecdf_one_line_per_configuration(records, ax):
    out = plots.latency_ecdf(records, ax=ax)
    assert out is ax
    labelled(ax)
    assert len(legend_lines(ax)) == N_CONFIGS
    assert ax.get_xscale() == "log"
    # p50 and p99 marked on every curve
    assert len(ax.collections) == 2 * N_CONFIGS
    assert ax.get_legend() is not None


def test_latency_ecdf_many_configurations_in_small_multiples(records):
    # 4 worker counts x 2 batch sizes = 8 configurations: more than one panel should hold
    many = pd.concat([records.assign(workers=records["workers"] + 10 * k, run=records["run"] + 100 * k)
                      for k in range(2)], ignore_index=True)
    fig = Figure(figsize=(10, 7), layout="constrained")
    ax = fig.add_subplot()
    out = plots.latency_ecdf(many, ax=ax)
    assert out is ax
    panels = fig.axes
    assert len(panels) == many["workers"].nunique() == 4
    titles = sorted(p.get_title() for p in panels)
    assert titles == sorted(f"workers = {w}" for w in many["workers"].unique())
    # one curve per batch size in each panel, same colour for a batch size everywhere
    assert all(len(legend_lines(p)) == len(BATCH_SIZES) for p in panels)
    colors = {line.get_label(): line.get_color() for p in panels for line in legend_lines(p)}
    assert len(colors) == len(BATCH_SIZES)
    assert all(p.get_xscale() == "log" for p in panels)
    assert fig._suptitle is not None and "panel per worker count" in fig._suptitle.get_text()
    fig.savefig(io.BytesIO(), format="png")  # lays out and draws without error


def test_latency_ecdf_facet_none_keeps_one_panel(records, ax):
    many = pd.concat([records.assign(workers=records["workers"] + 10 * k, run=records["run"] + 100 * k)
                      for k in range(2)], ignore_index=True)
    plots.latency_ecdf(many, ax=ax, facet=None)
    assert len(ax.figure.axes) == 1
    assert len(legend_lines(ax)) == 8


def test_latency_ecdf_within_a_decade_is_linear_with_labelled_ticks(records, ax):
    # latencies from 20 to 60 ms: a log axis would have no major tick, so no label at all
    narrow = records.assign(latency_s=0.02 + 0.04 * (records["task_id"] % 8) / 7)
    plots.latency_ecdf(narrow, ax=ax)
    assert ax.get_xscale() == "linear"
    FigureCanvasAgg(ax.figure).draw()
    labels = [t.get_text() for t in ax.xaxis.get_ticklabels() if t.get_text()]
    assert len(labels) >= 3 and all(t.endswith("ms") for t in labels), labels


def test_latency_ecdf_by_one_column(records, ax):
    plots.latency_ecdf(records, ax=ax, by="workers")
    assert len(legend_lines(ax)) == len(WORKERS)


def test_latency_ecdf_without_ax_uses_a_new_figure(records):
    import matplotlib.pyplot as plt
    out = plots.latency_ecdf(records)
    try:
        assert isinstance(out, Axes)
        assert len(legend_lines(out)) == N_CONFIGS
    finally:
        plt.close(out.figure)


# --- efficiency_heatmap --------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["efficiency", "makespan_s"])
@pytest.mark.parametrize("source", ["records", "summary"])
def test_efficiency_heatmap(records, ax, value, source):
    data = records if source == "records" else comlab.summarize(records)
    out = plots.efficiency_heatmap(data, ax=ax, value=value)
    assert out is ax
    labelled(ax)
    assert len(ax.images) == 1
    assert ax.images[0].get_array().shape == (len(BATCH_SIZES), len(WORKERS))
    assert len(ax.texts) == N_CONFIGS  # one annotation per cell
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(w) for w in WORKERS]


def test_efficiency_heatmap_takes_the_median_over_repeats(records, ax):
    summary = comlab.summarize(records)
    twice = pd.concat([summary, summary.assign(repeat=1, efficiency=summary["efficiency"] + 0.1,
                                               run=summary["run"] + 100)])
    plots.efficiency_heatmap(twice, ax=ax)
    grid = ax.images[0].get_array()
    expected = (summary.set_index(["batch_size", "workers"])["efficiency"] + 0.05).unstack()
    np.testing.assert_allclose(np.asarray(grid), expected.to_numpy())


# --- throughput_vs_workers -----------------------------------------------------------------------

def test_throughput_vs_workers(records, ax):
    out = plots.throughput_vs_workers(comlab.summarize(records), ax=ax)
    assert out is ax
    labelled(ax)
    measured = legend_lines(ax)
    ideal = [line for line in ax.get_lines() if line.get_label().startswith("_ideal")]
    assert len(measured) == len(BATCH_SIZES)
    assert len(ideal) == len(BATCH_SIZES)
    assert all(line.get_linestyle() == "--" for line in ideal)
    assert all(len(line.get_xdata()) == len(WORKERS) for line in measured + ideal)


def test_throughput_vs_workers_accepts_records(records, ax):
    plots.throughput_vs_workers(records, ax=ax)
    assert len(legend_lines(ax)) == len(BATCH_SIZES)


# --- stage_breakdown -----------------------------------------------------------------------------

@pytest.mark.parametrize("normalize", [True, False])
def test_stage_breakdown(records, ax, normalize):
    out = plots.stage_breakdown(records, ax=ax, normalize=normalize)
    assert out is ax
    labelled(ax)
    assert len(ax.containers) == len(plots.STAGES)
    assert all(len(c) == N_CONFIGS for c in ax.containers)
    assert len(ax.get_yticklabels()) == N_CONFIGS


def test_stage_breakdown_shares_by_default_with_totals(records, ax):
    plots.stage_breakdown(records, ax=ax, stat="mean")
    widths = np.array([[bar.get_width() for bar in c] for c in ax.containers])
    np.testing.assert_allclose(widths.sum(axis=0), 1.0)  # every configuration fills its row
    # each row's total time is printed beside it (the shares alone would hide the scale)
    ok = records[records["status"] == "ok"]
    means = {k: sum((g[b] - g[a]).mean() for _, a, b in plots.STAGES)
             for k, g in ok.groupby(["batch_size", "workers"], observed=True)}
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("total") == 1
    assert sorted(texts[:-1]) == sorted(plots.fmt_s(v) for v in means.values())


# --- timeline ------------------------------------------------------------------------------------

def test_timeline_first_run_by_default(records, ax):
    out = plots.timeline(records, ax=ax)
    assert out is ax
    labelled(ax)
    first = records[records["run"] == records["run"].min()]
    n_workers = first["worker"].astype(str).nunique()
    assert len(ax.collections) == n_workers  # one row of bars per worker
    assert sum(len(c.get_paths()) for c in ax.collections) == len(first)  # a bar per task


def test_timeline_of_a_run_with_two_workers(records, ax):
    run = records.loc[records["workers"] == 2, "run"].iloc[0]
    plots.timeline(records, run=run, ax=ax)
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert names == ["w0", "w1"]
    assert len(ax.collections) == 2


def test_timeline_shows_idle_workers(records, ax):
    run = records.loc[records["workers"] == 2, "run"].iloc[0]
    df = records[records["run"] == run].assign(workers=4)  # as if two more workers idled
    plots.timeline(df, ax=ax)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["w0", "w1", "w2", "w3"]
    assert len(ax.collections) == 2
    assert "2 of 4 workers ran no task" in ax.get_title()


# --- overhead_percentiles ------------------------------------------------------------------------

def test_overhead_percentiles_without_rate_is_a_note(records, ax):
    out = plots.overhead_percentiles(records, ax=ax)
    assert out is ax
    assert not ax.get_lines()
    assert any("open-loop" in t.get_text() for t in ax.texts)


def test_overhead_percentiles_with_rate(records, ax):
    # stand-in for an open-loop sweep: two "rates" in every configuration
    df = records.assign(rate=np.where(records["task_id"] % 2 == 0, 100.0, 1000.0))
    out = plots.overhead_percentiles(df, ax=ax)
    assert out is ax
    labelled(ax)
    assert len(legend_lines(ax)) == 3 * N_CONFIGS  # p50, p99, p99.9 per configuration
    assert all(len(line.get_xdata()) == 2 for line in legend_lines(ax))


# --- edge cases ----------------------------------------------------------------------------------

ALL = [plots.latency_ecdf, plots.efficiency_heatmap, plots.throughput_vs_workers,
       plots.stage_breakdown, plots.timeline, plots.overhead_percentiles]


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
def test_single_configuration(records, ax, fn):
    one = records[records["run"] == records["run"].max()]
    assert isinstance(fn(one, ax=ax), Axes)


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
def test_lost_tasks_and_unused_categories(records, ax, fn):
    df = records.copy()
    lost = df.index[::5]
    for col in ("t_started", "t_finished", "t_received", "latency_s", "overhead_s"):
        df.loc[lost, col] = np.nan
    df.loc[lost, "status"] = "lost"
    df["strategy"] = df["strategy"].cat.add_categories(["sequential"])
    df["worker"] = df["worker"].cat.add_categories(["w99"])
    assert isinstance(fn(df, ax=ax), Axes)
    if fn is plots.latency_ecdf:
        assert len(legend_lines(ax)) == N_CONFIGS
    if fn is plots.timeline:
        assert "w99" not in [t.get_text() for t in ax.get_yticklabels()]


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
def test_empty_frame_gives_a_note(records, ax, fn):
    assert isinstance(fn(records.iloc[0:0], ax=ax), Axes)


def test_strategies_are_not_pooled(records, ax):
    other = records.assign(run=records["run"] + 100,
                           strategy=records["strategy"].astype(str).replace(
                               "thread-per-task", "sequential"))
    both = pd.concat([records.assign(strategy=records["strategy"].astype(str)), other],
                     ignore_index=True)
    plots.latency_ecdf(both, ax=ax)  # 8 configurations: one panel per worker count
    assert sum(len(legend_lines(a)) for a in ax.figure.axes) == 2 * N_CONFIGS
    labels = {line.get_label() for a in ax.figure.axes for line in legend_lines(a)}
    assert any("sequential" in x for x in labels) and any("thread-per-task" in x for x in labels)


def makespan_heatmap(df, ax):
    return plots.efficiency_heatmap(df, ax=ax, value="makespan_s")


@pytest.mark.parametrize("fn", ALL + [makespan_heatmap], ids=lambda f: f.__name__)
def test_units_in_labels_agree_with_ticks(records, fn):
    """An axis whose ticks say "10 ms" is not labelled "(s)", and the other way round."""
    df = records.assign(rate=np.where(records["task_id"] % 2 == 0, 100.0, 1000.0)) \
        if fn is plots.overhead_percentiles else records
    fig = Figure(figsize=(10, 6), layout="constrained")
    fn(df, ax=fig.add_subplot())
    FigureCanvasAgg(fig).draw()  # tick labels are set at draw time
    for axes in fig.axes:
        for axis in (axes.xaxis, axes.yaxis):
            label = axis.get_label().get_text()
            ticks = [t.get_text() for t in axis.get_ticklabels(which="both") if t.get_text()]
            with_unit = [t for t in ticks if re.search(r"\d\s*[mµn]?s$", t)]
            if "(s" in label or "s)" in label:
                assert not with_unit, f"{fn.__name__}: {label!r} with ticks {with_unit}"
            if with_unit:
                assert not re.search(r"\(s\b|\bs\)", label), f"{label!r}: {with_unit}"


# --- write_figures and the command line ----------------------------------------------------------

def check_pngs(paths, result_dir):
    assert paths
    for path in paths:
        path = Path(path)
        assert path.parent == Path(result_dir) / "figures"
        assert path.suffix == ".png"
        assert path.stat().st_size > 1000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_figures(result):
    result_dir, _ = result
    paths = plots.write_figures(result_dir)
    check_pngs(paths, result_dir)
    names = {p.stem for p in paths}
    assert {"latency_ecdf", "efficiency_heatmap", "makespan_heatmap", "throughput_vs_workers",
            "stage_breakdown"} <= names
    assert any(n.startswith("timeline") for n in names)
    assert "overhead_percentiles" not in names  # closed loop


def test_comlab_plot_command(result):
    result_dir, _ = result
    exe = Path(sys.executable).with_name("comlab")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "comlab.cli"]
    env = {**os.environ, "MPLBACKEND": ""}
    env.pop("MPLBACKEND")
    env.pop("DISPLAY", None)
    out = subprocess.run(cmd + ["plot", str(result_dir)], capture_output=True, text=True,
                         timeout=100, env=env)
    assert out.returncode == 0, out.stderr
    printed = [Path(line) for line in out.stdout.split()]
    check_pngs(printed, result_dir)


def test_import_chooses_no_backend():
    code = ("import sys, comlab.plots; "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
