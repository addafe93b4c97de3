"""An installed comlab works: the sdist and the wheel build cleanly and pass `twine check
--strict`; the wheel, installed into a fresh venv, works from a folder outside the repository
(`comlab --version`, `python -m comlab`, a tiny sweep, every module imported, notebook 01
executed); the sdist's own tests collect.

What an editable install hides (a subpackage or a data file missing from the wheel) fails here.
The venv finds the dependencies in this environment's site-packages (no download in the test)
through a plain path file, which runs none of their .pth files: the editable comlab's import
hook is never installed there, so every comlab module must come from the wheel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)



def _run(cmd, cwd, timeout=300, env=None):
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (f"{' '.join(map(str, cmd))} exited {done.returncode}\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    # From a copy without the editable install's comlab.egg-info: setuptools adds the files an
    # old SOURCES.txt lists to the sdist, which would hide a package missing from the config.
    source = tmp_path_factory.mktemp("source") / "comlab"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        "*.egg-info", "build", "dist", ".git", "__pycache__", ".pytest_cache", ".venv"))
    out = tmp_path_factory.mktemp("dist")
    build = _run([sys.executable, "-m", "build", "--outdir", str(out), str(source)], cwd=out)
    wheel, = out.glob("comlab-*.whl")
    sdist, = out.glob("comlab-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist, "log": build.stdout + build.stderr}


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory):
    where = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", str(where)], cwd=where)
    python = where / "bin" / "python"
    site_dir = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=where).stdout.strip()
    Path(site_dir, "zz-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
          str(dist["wheel"])], cwd=where)
    outside = tmp_path_factory.mktemp("outside")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COMLAB_RESULTS_DIR")}
    env["PATH"] = f"{where / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return {"python": str(python), "bin": where / "bin", "cwd": outside, "env": env,
            "prefix": where}


def test_build_is_clean_and_twine_strict_passes(dist):
    # byte-compiling is skipped under PYTHONDONTWRITEBYTECODE: the environment's, not ours
    warnings = [line for line in dist["log"].lower().splitlines()
                if "warn" in line and "byte-compiling is disabled" not in line]
    assert not warnings, dist["log"][-3000:]
    _run([sys.executable, "-m", "twine", "check", "--strict", str(dist["wheel"]),
          str(dist["sdist"])], cwd=dist["wheel"].parent)


def test_wheel_holds_every_package_and_the_seed_data(dist):
    import zipfile
    names = set(zipfile.ZipFile(dist["wheel"]).namelist())
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "comlab").rglob("__init__.py")}
    missing = {p for p in packages if f"{p}/__init__.py" not in names}
    assert not missing, f"the wheel lacks {sorted(missing)}"
    assert {"comlab/seed/client_data.txt", "comlab/seed/server_data.txt",
            "comlab/py.typed"} <= names
    meta = next(n for n in names if n.endswith("dist-info/METADATA"))
    text = zipfile.ZipFile(dist["wheel"]).read(meta).decode()
    import comlab
    assert f"Version: {comlab.__version__}" in text
    assert "License-Expression: MIT" in text and "Operating System :: POSIX :: Linux" in text


def test_installed_cli_and_module_work_outside_the_repository(venv):
    import comlab
    where = _run([venv["python"], "-c", "import comlab; print(comlab.__file__)"],
                 cwd=venv["cwd"], env=venv["env"]).stdout.strip()
    assert where.startswith(str(venv["prefix"])), f"comlab imported from {where}"
    for cmd in ([str(venv["bin"] / "comlab"), "--version"],
                [venv["python"], "-m", "comlab", "--version"]):
        out = _run(cmd, cwd=venv["cwd"], env=venv["env"]).stdout
        assert out.strip() == f"comlab {comlab.__version__}"
    # every verb's --help in one interpreter of the venv (seven starts cost seconds)
    code = textwrap.dedent("""\
        import contextlib, io, sys
        from comlab.cli import main
        for verb in ("run", "sweep", "show", "compare", "report", "predict", "gen-data"):
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    main([verb, "--help"])
            except SystemExit as exc:
                assert exc.code == 0, (verb, exc.code)
            assert out.getvalue().startswith(f"usage: comlab {verb}"), (verb, out.getvalue())
        print("ok")
    """)
    out = _run([venv["python"], "-c", code], cwd=venv["cwd"], env=venv["env"]).stdout
    assert out.split() == ["ok"]


def test_installed_wheel_imports_every_module(venv):
    code = textwrap.dedent("""\
        import importlib, json, pkgutil, comlab
        names = sorted(m.name for m in pkgutil.walk_packages(comlab.__path__, "comlab.")
                       if not m.name.endswith("__main__"))  # runs the CLI when imported
        for name in names:
            importlib.import_module(name)
        print(json.dumps(names))
    """)
    names = json.loads(_run([venv["python"], "-c", code], cwd=venv["cwd"],
                            env=venv["env"]).stdout)
    in_repo = {".".join(p.relative_to(ROOT).with_suffix("").parts).replace(".__init__", "")
               for p in (ROOT / "comlab").rglob("*.py")} - {"comlab", "comlab.__main__"}
    assert set(names) == in_repo


def test_installed_wheel_runs_a_tiny_sweep(venv):
    results = venv["cwd"] / "results"
    _run([str(venv["bin"] / "comlab"), "sweep", "--batch-sizes", "4", "--workers", "2",
          "--repeats", "1", "--name", "tiny", "--results-dir", str(results)],
         cwd=venv["cwd"], env=venv["env"])
    assert (results / "tiny" / "records.parquet").is_file()
    meta = json.loads((results / "tiny" / "meta.json").read_text())
    assert meta["complete"] is True


def test_installed_wheel_executes_notebook_01(venv):
    notebook = venv["cwd"] / "01_quickstart.ipynb"
    notebook.write_bytes((ROOT / "notebooks" / "01_quickstart.ipynb").read_bytes())
    code = textwrap.dedent(f"""\
        import nbclient, nbformat
        nb = nbformat.read({str(notebook)!r}, as_version=4)
        nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                resources={{"metadata": {{"path": {str(venv["cwd"])!r}}}}}
                                ).execute()
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, errors
        print("ok", sum(1 for c in nb.cells if c.cell_type == "code"))
    """)
    env = {**venv["env"], "COMLAB_QUICK": "1", "COMLAB_RESULTS_DIR": str(venv["cwd"] / "nb")}
    out = _run([venv["python"], "-c", code], cwd=venv["cwd"], env=env, timeout=400).stdout
    assert out.startswith("ok")


def test_sdist_tests_collect(dist, tmp_path):
    with tarfile.open(dist["sdist"]) as tar:
        tar.extractall(tmp_path, filter="data") if hasattr(tarfile, "data_filter") \
            else tar.extractall(tmp_path)
    tree, = tmp_path.glob("comlab-*")
    for needed in ("tests/conftest.py", "tests/sshd.py", "bench/__init__.py", "LICENSE",
                   "notebooks/01_quickstart.ipynb", "results/example/meta.json"):
        assert (tree / needed).exists(), f"the sdist lacks {needed}"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = _run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
               cwd=tree, env=env).stdout
    last = out.strip().splitlines()[-1]
    # "985/986 tests collected (1 deselected)": the validations are deselected by default
    assert re.fullmatch(r"(\d+/)?\d+ tests collected( \(\d+ deselected\))? in [\d.]+s", last), \
        out[-3000:]
