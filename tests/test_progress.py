"""The sweep's progress bar ends full after a sweep that measured everything (tqdm's notebook
widget paints a bar that closes short of its total red), and short after one cut off."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from comlab.lab.experiment import _Progress

REPO = Path(__file__).resolve().parents[1]


def _specs(n):
    return [SimpleNamespace(index=i, key=("k", i), repeat=0, label=lambda r: "run")
            for i in range(n)]


def test_a_finished_sweep_fills_the_bar_exactly():
    specs = _specs(72)
    weights = {s.index: 0.1 for s in specs}  # float sums: 7.1999... != 7.2
    with _Progress(specs, specs, weights, enabled=True) as bar:
        for s in specs:
            bar.done(s)
        assert bar.bar.n == bar.bar.total and isinstance(bar.bar.n, int)


def test_resumed_runs_count_and_an_interrupted_sweep_stays_short():
    specs = _specs(30)
    weights = {s.index: 1 / 3 for s in specs}
    with _Progress(specs, specs[10:], weights, enabled=True) as bar:
        for s in specs[10:20]:
            bar.done(s)
        assert 0 < bar.bar.n < bar.bar.total
        for s in specs[20:]:
            bar.done(s)
        assert bar.bar.n == bar.bar.total


# --- the bar as JupyterLab shows it: tqdm's notebook widget in a real kernel ----------------------

def _bars(nb) -> list[dict]:
    """The state of every progress widget the kernel made (nbclient keeps the widget models)."""
    state = nb.metadata.get("widgets", {}).get(
        "application/vnd.jupyter.widget-state+json", {}).get("state", {})
    return [m["state"] for m in state.values()
            if m["model_name"] in ("FloatProgressModel", "IntProgressModel")]


@pytest.mark.timeout(120)
def test_in_a_kernel_a_finished_sweep_ends_green_an_interrupted_one_red(make_data, tmp_path):
    """A kernel (ipykernel, as JupyterLab's) runs a sweep to its end, then another that the
    kernel interrupt stops mid-way (the stop button's SIGINT, sent by nbclient at the cell's
    timeout). tqdm.auto picks its notebook widget there; the widget's bar_style is what the
    page paints: 'success' is green, 'danger' red."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipywidgets")
    # zero waits: every run weighs the lab's 0.1 s, and ten float 0.1s sum to 0.9999999999999999
    # (the float weights' bar closed short of its total: red after a complete sweep)
    client_file, server_file = make_data(n=16, wait=0.0)
    common = (f"commands={str(client_file)!r}, server_map={str(server_file)!r}, "
              f"results_dir={str(tmp_path / 'results')!r}, batch_sizes=[4], workers=[1]")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"import comlab\ncomlab.run_experiment({common}, "
                                          "repeats=10, name='finished')"),
                nbformat.v4.new_code_cell(f"# INTERRUPTED\ncomlab.run_experiment({common}, "
                                          "repeats=2000, name='interrupted')")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
        timeout_func=lambda cell: 3 if "INTERRUPTED" in cell.source else 90,
        resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env, cwd=str(tmp_path))
    first, second = ([o for o in c.outputs if o.output_type == "error"] for c in nb.cells)
    assert not first, first
    assert [o.ename for o in second] == ["KeyboardInterrupt"]  # stopped mid-sweep, not ended
    finished, interrupted = _bars(nb)
    assert finished["bar_style"] == "success" and finished["value"] == finished["max"]
    assert interrupted["bar_style"] == "danger" and interrupted["value"] < interrupted["max"]
