"""Figures of results that used to mislead, looked at in issue 19: zero-wait runs, a single
worker count, a batch-1 run of 512 tasks. Synthetic records: no processes."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

import comlab
from comlab import plots

from test_compare import experiment, run_records


@pytest.fixture
def ax():
    return Figure(figsize=(12, 4), dpi=100, layout="constrained").add_subplot()


def cell_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_zero_wait_efficiency_is_not_applicable_not_zero(ax):
    s = comlab.summarize(experiment("z", {1: [0.02, 0.021], 16: [0.003, 0.0031]}))
    assert (s["ideal_s"] == 0).all() and s["efficiency"].isna().all()  # what summarize says
    plots.efficiency_heatmap(s, ax=ax)
    assert cell_texts(ax) == ["n/a", "n/a"]
    assert "n/a: zero-wait tasks (ideal makespan 0)" in ax.get_title()


def test_efficiency_with_waits_is_a_number(ax):
    df = experiment("w", {1: [1.0, 1.1]})
    df["wait_s"] = 0.05
    s = comlab.summarize(df)
    plots.efficiency_heatmap(s, ax=ax)
    (text,) = cell_texts(ax)
    assert text == f"{s['efficiency'].median():.2f}" and "n/a" not in ax.get_title()


def test_one_worker_count_puts_the_batch_size_on_x(ax):
    s = comlab.summarize(experiment("z", {1: [0.02, 0.021], 4: [0.01, 0.011],
                                          16: [0.003, 0.0031]}))
    plots.throughput_vs_workers(s, ax=ax)
    assert ax.get_xlabel() == "batch size (tasks per batch)"
    (line,) = [l for l in ax.get_lines() if not l.get_label().startswith("_")]
    assert list(line.get_xdata()) == [1, 4, 16] and line.get_label() == "w=2"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert not any("ideal" in t for t in labels)  # zero waits: no ideal drawn, none listed
    assert not [l for l in ax.get_lines() if l.get_label().startswith("_ideal")]


def test_ideal_line_is_listed_when_drawn(ax):
    df = pd.concat([run_records("w", r, 1.0 + 0.1 * r, repeat=0, workers=w)
                    for r, w in enumerate((1, 2, 4))], ignore_index=True)
    df["wait_s"] = 0.05
    plots.throughput_vs_workers(comlab.summarize(df), ax=ax)
    assert ax.get_xlabel() == "workers (processes)"
    ideal = [l for l in ax.get_lines() if l.get_label().startswith("_ideal")]
    assert len(ideal) == 1 and np.isfinite(ideal[0].get_ydata()).all()
    assert "ideal (n_tasks / ideal_s)" in [t.get_text() for t in ax.get_legend().get_texts()]


def batch_one_run(n: int = 512, gap: float = 0.001, task: float = 0.01) -> pd.DataFrame:
    """One worker running n batch-1 tasks back to back with a gap between them, one idle
    stretch of 1 s in the middle."""
    df = run_records("b1", 0, 1.0, n=n, batch_size=1, workers=1)
    start = np.arange(n) * (task + gap) + np.where(np.arange(n) >= n // 2, 1.0, 0.0)
    df["t_started"], df["t_finished"] = start, start + task
    df["t_received"] = df["t_finished"] + 0.0001
    return df


def test_a_batch_one_run_of_512_tasks_shows_busy_periods_not_a_barcode(ax):
    df = batch_one_run()
    plots.timeline(df, ax=ax)
    assert ax.get_title().startswith("Busy periods per worker (512 tasks")
    bars = [c for c in ax.collections if c.get_label() == "_busy"]
    assert len(bars) == 1 and len(bars[0].get_paths()) == 2  # before and after the idle second
    (label,) = [t.get_text() for t in ax.get_yticklabels()]
    busy = 512 * 0.01 / df["t_received"].max()
    assert label == f"w0 ({busy:.0%} busy)"


def test_a_timeline_of_few_wide_tasks_still_draws_each_task(ax):
    df = batch_one_run(n=16, gap=0.01, task=0.1)
    plots.timeline(df, ax=ax)
    assert ax.get_title().startswith("Tasks per worker")
    tasks = [c for c in ax.collections if isinstance(c, PolyCollection)
             and c.get_label() == "_tasks"]
    assert sum(len(c.get_paths()) for c in tasks) == 16
    plots.timeline(batch_one_run(), ax=Figure().add_subplot(), aggregate=False)  # on request


def test_zero_wait_tasks_are_visible_marks(ax):
    df = batch_one_run(n=64, gap=0.002, task=0.0)
    plots.timeline(df, ax=ax)
    (bars,) = [c for c in ax.collections if c.get_label() == "_busy"]
    widths = [p.get_extents().width for p in bars.get_paths()]
    assert len(widths) >= 2 and min(widths) > 0
