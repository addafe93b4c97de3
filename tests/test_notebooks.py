"""The notebooks run top to bottom in quick mode, and are committed without outputs."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
IDS = [p.stem for p in PATHS]


def test_there_are_notebooks():
    assert len(PATHS) >= 4


def _snapshot() -> set:
    """Files a notebook could leave behind in the repository."""
    found = set()
    for d in (NOTEBOOKS, REPO / "results"):
        if d.exists():
            found |= {p for p in d.rglob("*") if ".ipynb_checkpoints" not in p.parts}
    return found


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_notebook_runs_in_quick_mode(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    # results go to pytest's temp dir, so even a notebook failing half-way leaves nothing behind
    env = {**os.environ, "COMLAB_QUICK": "1", "PYTHONUNBUFFERED": "1",
           "COMLAB_RESULTS_DIR": str(tmp_path / "results")}
    env.pop("DISPLAY", None)
    env.pop("MPLBACKEND", None)  # the kernel's inline backend, headless, turns figures into PNGs
    before = _snapshot()
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}},
        allow_errors=False)
    # execute() starts the kernel with this environment and, owning its kernel manager, shuts
    # it down in a finally block (errors and timeouts included); the finally below makes sure
    try:
        client.execute(env=env, cwd=str(NOTEBOOKS))
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{path.name}: {exc}", pytrace=False)
    finally:
        km = client.km
        if km is not None and km.has_kernel:
            km.shutdown_kernel(now=True)
    errors = [o for cell in nb.cells if cell.cell_type == "code"
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    images = [o for cell in nb.cells if cell.cell_type == "code"
              for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no figure"
    assert _snapshot() == before, "the notebook left files in the repository"


def test_notebooks_have_parameters_cell_with_quick_flag():
    for path in PATHS:
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        assert "QUICK" in tagged[0].source, path.name


def test_committed_notebooks_have_no_outputs():
    for path in PATHS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{path.name}: a cell has outputs"
                assert cell.execution_count is None, f"{path.name}: execution_count is set"
