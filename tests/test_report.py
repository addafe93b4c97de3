"""comlab report: one self-contained page that draws its own figures, leads with the verdicts
and the tasks that did not end ok, and fits the width of a screen. On saved results only: no
processes."""

import base64
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from comlab import cli
from comlab.lab import report
from comlab.lab.records import STATUS

from test_compare import TIGHT, save_result

EXAMPLE = Path(__file__).resolve().parents[1] / "results" / "example"
PAGE_PX = 1200  # the page's max-width: a 1400 px window less its 2em margins is wider
FIGURES = {"latency_ecdf", "efficiency_heatmap", "makespan_heatmap", "throughput_vs_workers",
           "stage_breakdown"}


@pytest.fixture
def unplotted(tmp_path) -> Path:
    """The example result as `comlab run --no-plots` leaves it: records and meta, no figures."""
    out = tmp_path / "unplotted"
    out.mkdir()
    for name in ("meta.json", "records.parquet"):
        shutil.copy(EXAMPLE / name, out / name)
    return out


def images(page: str) -> dict:
    return {alt: base64.b64decode(data) for alt, data in re.findall(
        r"alt='([^']*)' src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)}


def test_a_never_plotted_result_gets_its_figures_drawn_into_the_page(unplotted):
    out = report.write_report(unplotted)
    page = out.read_text()
    found = images(page)
    assert FIGURES <= set(found) and any(n.startswith("timeline") for n in found)
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000 for png in found.values())
    assert "Drawn from the records for this page" in page
    assert not (unplotted / "figures").exists()  # drawn in memory: nothing else written
    assert sorted(p.name for p in unplotted.iterdir()) == ["meta.json", "records.parquet",
                                                          "report.html"]


def test_saved_figures_are_used_as_they_are(tmp_path):
    out = report.write_report(EXAMPLE, out=tmp_path / "r.html")
    found = images(out.read_text())
    saved = {p.stem: p.read_bytes() for p in (EXAMPLE / "figures").glob("*.png")}
    assert found == saved


def test_the_compare_page_shows_the_verdicts_first_with_their_figure(tmp_path, capsys):
    a = save_result(tmp_path, "a", {1: TIGHT, 4: TIGHT})
    b = save_result(tmp_path, "b", {1: [1.3 * m for m in TIGHT], 4: TIGHT})
    assert cli.main(["report", str(b), "--compare", str(a)]) == 0
    page = (b / "report.html").read_text()
    assert "compare_ratios" in images(page)
    tables = Tables.of(page)
    verdicts = next(t for t in tables if t[0][0] == "verdict (b)")
    assert [row[:2] for row in verdicts[1:]] == [["slower", "U test"], ["same", "U test"]]
    assert "exact Mann-Whitney U test" in page


def test_the_compare_page_says_when_the_workloads_differ(tmp_path):
    a = save_result(tmp_path, "a", {4: TIGHT})
    b = save_result(tmp_path, "b", {4: [10 * m for m in TIGHT]}, wait_scale=0.1)
    page = report.report_html(report.load(b), report.load(a))
    assert "Not the same workload" in page and "wait_scale: a 0.01, b 0.1" in page
    verdicts = next(t for t in Tables.of(page) if t[0][0] == "verdict (b)")
    assert verdicts[1][0] == "workload differs"


def test_the_headline_counts_tasks_that_did_not_end_ok(tmp_path):
    from test_compare import experiment
    df = experiment("x", {4: [1.0, 1.1]})
    status = df["status"].astype(str).to_numpy()
    status[[0, 1, 2]] = "unknown"
    status[[3]] = "failed"
    status[[20, 21]] = "lost"
    df["status"] = pd.Categorical(status, dtype=STATUS)
    df.loc[[20, 21], "t_received"] = np.nan
    from comlab.lab.results import ResultStore
    with ResultStore(tmp_path, "x", {"wait_scale": 1.0}) as store:
        for run, g in df.groupby("run"):
            store.save_run(g, {"key": f"k{run}", "run": int(run), "experiment": "x"})
        store.finish()
    result = report.load(tmp_path / "x")
    line = "2 runs of 1 configurations, 40 tasks: 34 ok, 3 unknown, 0 unreachable, 1 failed, 2 lost"
    assert result.headline() == line
    page = report.report_html(result)
    assert f"<p class='bad'><b>{line}</b></p>" in page
    assert page.index(line) < page.index("<h2>")  # before anything else
    assert line in report.text(result)


def test_tables_fit_a_1400_px_window_or_scroll_inside_it(tmp_path):
    page = report.report_html(report.load(EXAMPLE), report.load(EXAMPLE))
    assert page.count("<table") == page.count("<div class='scroll'><table") + 3  # + facts
    for table in Tables.of(page)[:2]:  # the comparison and the summary: read, not scrolled
        assert estimated_width(table) < PAGE_PX, table[0]
    summary = Tables.of(page)[1]
    assert summary[0][:2] == ["batch", "workers"]  # strategy etc.: one value, said above it
    assert "In every configuration: strategy <code>thread-per-task</code>" in page


def estimated_width(table) -> float:
    """Pixels a table needs: per column its longest cell at ~7.5 px a character (90 % of a
    16 px sans-serif, digits and capitals included), plus 16 px of padding."""
    widths = [max(len(row[i]) for row in table if i < len(row)) for i in range(len(table[0]))]
    return sum(7.5 * w + 16 for w in widths)


class Tables(HTMLParser):
    """Every table of a page as rows of cell texts."""

    def __init__(self):
        super().__init__()
        self.tables, self.cell = [], None

    @classmethod
    def of(cls, page: str) -> list:
        parser = cls()
        parser.feed(page)
        return [t for t in parser.tables if t and len(t[0]) > 2]  # not the facts' key-values

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append(self.cell.strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def test_zero_wait_efficiency_is_not_applicable_in_the_summary():
    from test_compare import experiment
    import comlab
    configs = report.stability.summarize_configs(
        comlab.summarize(experiment("z", {1: [0.02, 0.021]})))
    table, _ = report.summary_table(configs)
    assert table["efficiency"].tolist() == ["n/a"]


def test_the_page_declares_a_viewport_for_phones(tmp_path):
    page = report.write_report(EXAMPLE, out=tmp_path / "r.html").read_text()
    assert "<meta name='viewport' content='width=device-width, initial-scale=1'>" in page
    assert "img{max-width:100%;height:auto}" in page  # a fixed-width figure shrinks to the screen


def saved_with(root: Path, name: str, makespans: dict, **columns) -> Path:
    """A saved result whose records carry these columns (e.g. dispatch="broker:0")."""
    from comlab.lab.results import ResultStore
    from test_compare import experiment
    df = experiment(name, makespans).assign(**columns)
    with ResultStore(root, name, {"wait_scale": 0.01, "n_tasks": 20}) as store:
        for run, g in df.groupby("run"):
            store.save_run(g, {"key": f"k{run}", "run": int(run), "experiment": name})
        store.finish()
    return root / name


def test_the_compare_page_says_first_what_differs_between_a_and_b(tmp_path):
    import html
    a = saved_with(tmp_path, "a", {1: TIGHT, 4: TIGHT}, dispatch="broker")
    b = saved_with(tmp_path, "b", {1: TIGHT, 4: TIGHT}, dispatch="broker:0")
    page = html.unescape(report.report_html(report.load(b), report.load(a)))
    head = page[:page.index("<h2>")]
    assert "What differs, a (a) -> b (b): dispatch: broker -> broker:0" in head
    same = html.unescape(report.report_html(report.load(a), report.load(a)))
    assert "nothing in the axes, code or machine (an A/A comparison)" in same[:same.index("<h2>")]


def test_what_differs_names_the_code_and_the_machine():
    from comlab.lab import compare
    cmp = pd.DataFrame()
    cmp.attrs.update(across={"strategy": ("sequential", "thread-pool:4")}, workload=["x"])
    found = compare.differences(cmp, {"git_commit": "a" * 40, "hostname": "vm", "comlab": "0.1"},
                                {"git_commit": "b" * 40, "hostname": "vm", "comlab": "0.1"})
    assert found == ["strategy: sequential -> thread-pool:4", "commit: aaaaaaaaaa -> bbbbbbbbbb",
                     "the workload (see below)"]
