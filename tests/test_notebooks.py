"""The notebooks run top to bottom in quick mode, and are committed without outputs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
IDS = [p.stem for p in PATHS]


def test_there_are_notebooks():
    assert len(PATHS) >= 7


def _needs(path) -> None:
    """Skip a notebook whose library part is not in this tree yet (07: comlab.compare)."""
    import comlab
    if path.stem.startswith("07_") and not hasattr(comlab, "compare"):
        pytest.skip("07_before_and_after needs comlab.compare and plots.compare_ratios "
                    "(written on another branch)")


def _snapshot() -> set:
    """Files a notebook could leave behind in the repository."""
    found = set()
    for d in (NOTEBOOKS, REPO / "results"):
        if d.exists():
            found |= {p for p in d.rglob("*") if ".ipynb_checkpoints" not in p.parts}
    return found


def _execute(path, tmp_path, **flags):
    _needs(path)
    nb = nbformat.read(path, as_version=4)
    # results go to pytest's temp dir, so even a notebook failing half-way leaves nothing behind
    tmp = tmp_path / "tmp"  # the kernel's temporary folders: whatever it leaves is seen
    tmp.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COMLAB_QUICK": "", "COMLAB_USE_EXAMPLE": "",
           "COMLAB_RESULTS_DIR": str(tmp_path / "results"), "TMPDIR": str(tmp), **flags}
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
    left = sorted(p.name for p in tmp.iterdir() if p.name.startswith("comlab"))
    assert not left, f"{path.name} left temporary folders: {left}"
    return nb


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_notebook_runs_in_quick_mode(path, tmp_path):
    _execute(path, tmp_path, COMLAB_QUICK="1")


# 05 has no committed bench to draw (with USE_EXAMPLE and none saved it runs its quick bench),
# 08 no committed dispatch sweep, 10 no committed task sweep (they run their quick experiments)
EXAMPLE_PATHS = [p for p in PATHS if not p.stem.startswith(("05_", "08_", "10_"))]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=[p.stem for p in EXAMPLE_PATHS])
def test_notebook_draws_the_example_without_running(path, tmp_path):
    nb = _execute(path, tmp_path, COMLAB_USE_EXAMPLE="1", COMLAB_STATIC="1")
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
    assert "committed results/example" in text  # setup() said what it is doing
    assert not (tmp_path / "results").exists(), "a run was started"


def test_notebooks_have_parameters_cell_with_quick_flag():
    for path in PATHS:
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        assert "QUICK = False" in tagged[0].source, path.name
        assert "USE_EXAMPLE = False" in tagged[0].source, path.name
        # the set-up is comlab.notebook's, not a pasted copy
        assert any(re.search(r"setup\(quick=QUICK, use_example=USE_EXAMPLE[,)]", c.source)
                   for c in nb.cells if c.cell_type == "code"), path.name
        last = [c for c in nb.cells if c.cell_type == "code"][-1]
        assert "lab.cleanup()" in last.source, f"{path.name}: quick runs' folder not removed"


def test_every_cell_has_an_id():
    """nbformat 4.5 cell ids (a missing one is a future hard error), read from the raw JSON:
    nbformat's reader would fill them in and hide it."""
    import json
    for path in PATHS:
        raw = json.loads(path.read_text())
        assert (raw["nbformat"], raw["nbformat_minor"]) >= (4, 5), path.name
        missing = [i for i, cell in enumerate(raw["cells"]) if not cell.get("id")]
        assert not missing, f"{path.name}: cells {missing} have no id (nbformat.validator.normalize)"
        ids = [cell["id"] for cell in raw["cells"]]
        assert len(set(ids)) == len(ids), f"{path.name}: two cells share an id"


def test_committed_notebooks_have_no_outputs():
    for path in PATHS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{path.name}: a cell has outputs"
                assert cell.execution_count is None, f"{path.name}: execution_count is set"


# --- comlab.notebook -----------------------------------------------------------------------------

def test_setup_flags_and_folders(tmp_path, monkeypatch):
    from comlab import notebook
    for var in ("COMLAB_QUICK", "COMLAB_USE_EXAMPLE", "COMLAB_RESULTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    full = notebook.setup(start=NOTEBOOKS, style=False, verbose=False)
    assert (full.quick, full.use_example, full.temporary) == (False, False, False)
    assert full.root == REPO and full.results_dir == REPO / "results"
    monkeypatch.setenv("COMLAB_QUICK", "1")
    quick = notebook.setup(start=NOTEBOOKS, style=False, verbose=False)
    assert quick.quick and quick.temporary and quick.results_dir.is_dir()
    assert REPO not in quick.results_dir.parents  # quick runs leave nothing in the repository
    quick.cleanup()
    assert not quick.results_dir.exists()
    monkeypatch.setenv("COMLAB_RESULTS_DIR", str(tmp_path / "r"))
    assert notebook.setup(start=NOTEBOOKS, style=False, verbose=False).results_dir == tmp_path / "r"


def test_full_mode_outside_the_repository_keeps_its_results(tmp_path, monkeypatch):
    """Issue 25: a full run's results go beside the notebook (or where the user says), never
    to a temporary folder removed when the kernel exits."""
    from comlab import notebook
    for var in ("COMLAB_QUICK", "COMLAB_USE_EXAMPLE", "COMLAB_RESULTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    outside = tmp_path / "my-notebooks"
    outside.mkdir()
    lab = notebook.setup(start=outside, style=False, verbose=False)
    assert (lab.temporary, lab.results_dir) == (False, outside / "results")
    lab.cleanup()
    named = notebook.setup(start=outside, style=False, verbose=False,
                           results_dir=tmp_path / "mine")
    assert (named.temporary, named.results_dir) == (False, tmp_path / "mine")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="results_dir"):
        notebook.setup(start=outside, style=False, verbose=False,
                       results_dir=tmp_path / "a_file" / "x")


def test_setup_use_example_without_an_example_says_it_runs(monkeypatch, capsys):
    from comlab import notebook
    for var in ("COMLAB_QUICK", "COMLAB_USE_EXAMPLE", "COMLAB_RESULTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    lab = notebook.setup(use_example=True, start=NOTEBOOKS, style=False, example=False)
    try:
        assert (lab.quick, lab.use_example, lab.temporary) == (True, False, True)
        said = capsys.readouterr().out
        assert "quick experiments run instead" in said and "running nothing" not in said
    finally:
        lab.cleanup()
    assert not lab.results_dir.exists()


def test_setup_use_example(monkeypatch, tmp_path, capsys):
    from comlab import notebook
    monkeypatch.delenv("COMLAB_RESULTS_DIR", raising=False)
    lab = notebook.setup(use_example=True, start=NOTEBOOKS, style=False)
    assert lab.use_example and lab.example_dir == REPO / "results" / "example"
    assert "running nothing" in capsys.readouterr().out
    df = lab.load_example()
    assert len(df) and {"run", "latency_s"} <= set(df.columns)
    with pytest.raises(FileNotFoundError, match="results/example"):
        notebook.setup(use_example=True, start=tmp_path, style=False, verbose=False)


def _records():
    from comlab import notebook
    return notebook.Lab(False, True, REPO, REPO / "results", False).load_example()


def test_pick_run_static_draws_the_chosen_run(monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from comlab import notebook
    df = _records()
    run = sorted(df["run"].unique())[3]
    try:
        ax = notebook.pick_run(df, run=run, static=True)
        assert f"run {run}" in ax.get_title()
        monkeypatch.setenv("COMLAB_STATIC", "1")  # executed copies: no kernel to answer a widget
        assert f"run {df['run'].min()}" in notebook.pick_run(df).get_title()
    finally:
        plt.close("all")


def test_pick_run_widget_offers_every_run(monkeypatch):
    pytest.importorskip("ipywidgets")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from comlab import notebook
    monkeypatch.delenv("COMLAB_STATIC", raising=False)
    df = _records()
    seen = []

    def draw(df, run, ax=None):
        seen.append(run)
        return Figure().add_subplot()

    try:
        shown = notebook.pick_run(df, draw=draw)
        dropdown = shown.widget.children[0]
        assert [v for _, v in dropdown.options] == sorted(df["run"].unique())
        assert seen == [df["run"].min()]  # drawn once at first, then on each choice
        dropdown.value = dropdown.options[-1][1]
        assert seen[-1] == df["run"].max()
    finally:
        plt.close("all")


def test_notebook_module_imports_no_pandas_or_matplotlib():
    code = ("import sys, comlab.notebook; "
            "bad = {'pandas', 'matplotlib'} & set(sys.modules); assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.mark.timeout(180)
def test_html_command_writes_executed_copies(tmp_path):
    pytest.importorskip("nbconvert")
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("QUICK = False\nUSE_EXAMPLE = False")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# tiny"), params, nbformat.v4.new_code_cell(
        "import os\nfrom comlab.notebook import setup\n"
        "lab = setup(quick=QUICK, use_example=USE_EXAMPLE)\n"
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\n"
        "print('static', os.environ.get('COMLAB_STATIC'))")]
    src = tmp_path / "tiny.ipynb"
    nbformat.write(nb, src)
    # and one whose cell raises: named in one line at the end, exit 1, the other still written
    broken = nbformat.v4.new_notebook()
    broken.cells = [nbformat.v4.new_code_cell("raise ValueError('broken on purpose')")]
    nbformat.write(broken, tmp_path / "broken.ipynb")
    out_dir = tmp_path / "html"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MPLBACKEND", None)
    run = subprocess.run([sys.executable, "-m", "comlab.notebook", "--html", str(out_dir),
                          "--quick", str(tmp_path / "broken.ipynb"), str(src)],
                         capture_output=True, text=True, timeout=170, env=env, cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        "python -m comlab.notebook: broken.ipynb: a cell raised ValueError: broken on purpose")
    page = out_dir / "tiny.html"
    assert run.stdout.split() == [str(page)]
    assert not (out_dir / "broken.html").exists()
    text = page.read_text()
    assert "data:image/png;base64" in text  # the figure is embedded
    assert "quick mode" in text and "static 1" in text
    assert nbformat.read(src, as_version=4).cells[2].outputs == []  # the source is untouched


def test_html_command_bad_input_is_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "comlab.notebook", "--html", str(tmp_path),
                          str(tmp_path / "missing.ipynb")],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "missing.ipynb" in run.stderr
