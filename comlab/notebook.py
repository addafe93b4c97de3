"""What every comlab notebook needs before its first experiment, in one call; and executed HTML
copies of the notebooks, in one command.

In a notebook, after the parameters cell (``QUICK = False``, ``USE_EXAMPLE = False``)::

    from comlab.notebook import setup
    lab = setup(quick=QUICK, use_example=USE_EXAMPLE)

``lab.quick``: tiny experiments (also ``COMLAB_QUICK=1``); ``lab.use_example``: draw the committed
``results/example`` and run nothing (also ``COMLAB_USE_EXAMPLE=1``); ``lab.results_dir``: where
runs go (``<repo>/results``, or ``results/`` beside the notebook outside the repository, or
``setup(results_dir=...)``; a temporary folder in quick mode, removed by ``lab.cleanup()``;
``COMLAB_RESULTS_DIR`` overrides all of them); ``lab.root``: the repository, found from the notebook's
folder upwards. Matplotlib gets notebook-friendly defaults (size, resolution, constrained
layout); ``pick_run`` shows a run chosen with a dropdown when ipywidgets is there.

From a shell, executed copies that read without Jupyter::

    python -m comlab.notebook --html OUTDIR [--example | --quick] [NOTEBOOK ...]

This module belongs to the lab: nothing in comlab.system imports it, and it imports pandas,
matplotlib and the Jupyter libraries only when they are used.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

EXAMPLE = Path("results") / "example"

# rcParams for figures in a notebook: readable inline, never cut at the edges
MPL_DEFAULTS = {
    "figure.figsize": (9.0, 5.0),
    "figure.dpi": 100,
    "figure.constrained_layout.use": True,
    "savefig.dpi": 120,
    "axes.titlesize": "medium",
}


def _flag(value, env: str) -> bool:
    return bool(value) or os.environ.get(env, "") == "1"


def find_root(start=None) -> Path | None:
    """The nearest folder at or above ``start`` (default: cwd) holding pyproject.toml."""
    start = Path(start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "pyproject.toml").is_file() and (d / "comlab").is_dir():
            return d
    return None


@dataclass
class Lab:
    """A notebook's settings, as ``setup`` found them."""

    quick: bool
    use_example: bool
    root: Path | None
    results_dir: Path
    temporary: bool
    instead: bool = False  # use_example was asked of a notebook with nothing committed to draw

    @property
    def example_dir(self) -> Path:
        """The committed result (``results/example``) of the repository."""
        if self.root is None:
            raise FileNotFoundError("no comlab repository above this folder: "
                                    "results/example is in the repository, not the package")
        return self.root / EXAMPLE

    def load_example(self):
        """Records of the committed ``results/example`` (no run)."""
        from .lab.results import load_results
        return load_results(self.example_dir)

    def cleanup(self) -> None:
        """Remove the temporary results folder of a quick run (full runs keep theirs)."""
        if self.temporary:
            shutil.rmtree(self.results_dir, ignore_errors=True)

    def __str__(self) -> str:
        mode = ("drawing the committed results/example, running nothing" if self.use_example
                else "USE_EXAMPLE: nothing committed to draw here, so its quick experiments run "
                     "instead" if self.instead
                else "quick mode" if self.quick else "full mode")
        where = "" if self.use_example else f"; results in {self.results_dir}"
        return f"{mode}{where}; {os.cpu_count()} CPUs on this machine"


def setup(quick: bool = False, use_example: bool = False, start=None,
          style: bool = True, verbose: bool = True, example: bool = True,
          results_dir=None) -> Lab:
    """Settings for a notebook from its parameters and the environment; matplotlib defaults.

    ``quick`` or ``COMLAB_QUICK=1``: tiny experiments, results in a temporary folder.
    ``use_example`` or ``COMLAB_USE_EXAMPLE=1``: run nothing, draw ``results/example``.
    ``example=False``: the notebook has nothing committed to draw; ``use_example`` then means
    quick mode, and says so (never "running nothing" before experiments run).
    Full runs keep their results: in ``results_dir`` when given, else ``<repo>/results``, else
    ``results/`` beside the notebook (``start``, default the working folder: the notebook's).
    ``COMLAB_RESULTS_DIR`` overrides where results go (the tests point it at their temp dir).
    A temporary folder (quick mode only) is also removed when the kernel exits, if ``cleanup`` was never reached.
    """
    quick = _flag(quick, "COMLAB_QUICK")
    use_example = _flag(use_example, "COMLAB_USE_EXAMPLE")
    instead = use_example and not example
    if instead:
        quick, use_example = True, False
    root = find_root(start)
    temporary = False
    if os.environ.get("COMLAB_RESULTS_DIR"):
        results_dir = Path(os.environ["COMLAB_RESULTS_DIR"])
    elif results_dir is not None and not use_example:
        from .lab.checks import results_dir as writable
        results_dir = writable(results_dir)
    elif use_example and root is not None:
        results_dir = root / "results"  # read from, never written: nothing runs
    elif use_example:
        raise FileNotFoundError("use_example needs the repository's results/example "
                                f"(none above {Path(start or Path.cwd()).resolve()})")
    elif quick:
        results_dir, temporary = Path(tempfile.mkdtemp(prefix="comlab-nb-")), True
        # Removed when the kernel exits too: a notebook that stops early (an error, an
        # interrupt, no cleanup cell) must not leave folders behind in /tmp.
        atexit.register(shutil.rmtree, results_dir, ignore_errors=True)
    else:  # full runs keep their results, in the repository or beside the notebook
        results_dir = (root if root is not None else Path(start or Path.cwd()).resolve()) \
            / "results"
    if use_example and (root is None or not (root / EXAMPLE).is_dir()):
        raise FileNotFoundError("use_example needs the repository's results/example "
                                f"(none above {Path(start or Path.cwd()).resolve()})")
    if style:
        import matplotlib
        matplotlib.rcParams.update(MPL_DEFAULTS)
    lab = Lab(quick, use_example, root, results_dir, temporary, instead)
    if verbose:
        print(lab)
    return lab


def _run_label(first) -> str:
    parts = [f"run {first['run']}", f"b={first['batch_size']}", f"w={first['workers']}"]
    for col in ("strategy", "transport", "rate", "repeat"):
        v = first.get(col)
        if v is not None and v == v:  # NaN: a closed-loop rate
            parts.append(f"repeat {v}" if col == "repeat" else f"{v}")
    return ", ".join(str(p) for p in parts)


def pick_run(df, draw=None, run=None, static: bool | None = None):
    """A dropdown of the runs of ``df`` redrawing ``draw(df, run=..., ax=...)`` (default: the
    timeline) for the chosen run; without ipywidgets (or with ``static=True``, or
    ``COMLAB_STATIC=1``: executed copies, where no kernel answers a widget) the one ``run``
    (default: the first) is drawn as a plain figure. Returns the widget, or the Axes.
    """
    from . import plots
    draw = draw or plots.timeline
    firsts = df.groupby("run", observed=True, sort=True).head(1).set_index("run", drop=False)
    runs = list(firsts.index)
    run = runs[0] if run is None else run
    if static is None:
        static = os.environ.get("COMLAB_STATIC", "") == "1"
    widgets = None
    if not static:
        try:
            import ipywidgets as widgets
        except ImportError:
            print("(pip install ipywidgets for a run picker; showing one run)")
    import matplotlib.pyplot as plt

    def show(run):
        ax = draw(df, run=run)
        plt.show()
        return ax

    if widgets is None:
        return show(run)
    options = [(_run_label(firsts.loc[r]), r) for r in runs]
    return widgets.interact(show, run=widgets.Dropdown(options=options, value=run,
                                                       description="run"))


# --- executed HTML copies ----------------------------------------------------------------------

def notebooks_dir() -> Path:
    root = find_root(Path(__file__).parent)
    if root is None:
        raise FileNotFoundError("the notebooks are in the comlab repository, not the package")
    return root / "notebooks"


class NotebookFailed(RuntimeError):
    """A cell of a notebook being executed raised (``args[1]``: the pages written anyway)."""

    def __str__(self) -> str:
        return str(self.args[0])


def write_html(paths, out_dir, mode: str = "example", timeout: int = 600,
               log=print) -> list[Path]:
    """Execute each notebook (``mode``: "example" draws results/example, "quick" runs tiny
    experiments, "full" runs them as written) and write ``<out_dir>/<name>.html``. A notebook
    that fails is skipped and named, at the end, in ``NotebookFailed``.

    Figures are embedded; the run pickers are drawn as plain figures (COMLAB_STATIC=1). Results
    of quick runs go to a temporary folder, so nothing is left in the repository.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "COMLAB_STATIC": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MPLBACKEND", None)  # the kernel's inline backend turns figures into PNGs
    env["COMLAB_USE_EXAMPLE"] = "1" if mode == "example" else ""
    env["COMLAB_QUICK"] = "1" if mode == "quick" else ""
    exporter = HTMLExporter()
    written, failed = [], []
    for path in map(Path, paths):
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        log(f"{path.name}: executing ({mode})")
        try:
            client.execute(env=env, cwd=str(path.parent))
        except CellExecutionError as exc:  # one line: which notebook, which error; go on
            failed.append(f"{path.name}: a cell raised {exc.ename}: {exc.evalue}")
            continue
        finally:
            km = client.km
            if km is not None and km.has_kernel:
                km.shutdown_kernel(now=True)
        body, _ = exporter.from_notebook_node(nb)
        target = out_dir / f"{path.stem}.html"
        target.write_text(body, encoding="utf-8")
        written.append(target)
        log(f"{path.name}: {target}")
    if failed:
        raise NotebookFailed("; ".join(failed), written)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m comlab.notebook",
        description="Execute the comlab notebooks and write HTML copies that read without "
                    "Jupyter (figures embedded).")
    parser.add_argument("--html", metavar="OUTDIR", required=True,
                        help="folder for the HTML files (created)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--example", dest="mode", action="store_const", const="example",
                      help="draw the committed results/example, run nothing (default; "
                           "seconds per notebook)")
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="run each notebook's tiny experiments (about a minute in all)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="run the notebooks as written (many minutes)")
    parser.add_argument("--timeout", type=int, default=600, metavar="S",
                        help="seconds a cell may take (default 600)")
    parser.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                        help="notebooks to execute (default: every notebooks/*.ipynb)")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or sorted(notebooks_dir().glob("*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        parser.exit(2, f"python -m comlab.notebook: no such notebook: {', '.join(missing)}\n")
    try:
        import nbclient  # noqa: F401
        import nbconvert  # noqa: F401
    except ImportError as exc:
        parser.exit(2, f"python -m comlab.notebook: {exc.name} is missing "
                       "(pip install -e '.[lab]')\n")
    try:
        for path in write_html(paths, args.html, mode=args.mode or "example",
                               timeout=args.timeout, log=lambda m: print(m, file=sys.stderr)):
            print(path)
    except NotebookFailed as exc:
        for path in exc.args[1]:
            print(path)
        parser.exit(1, f"python -m comlab.notebook: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
