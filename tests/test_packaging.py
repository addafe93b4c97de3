"""environment.yml and pyproject.toml must name the same packages."""

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomllib is new in 3.11; tomli is the same parser (a dev dependency on 3.10)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"msgpack": "msgpack-python", "build": "python-build",
               "playwright": "playwright-python"}  # pip name -> conda-forge name


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"],
              *project["optional-dependencies"]["lab"]]
    conda = {_name(line.lstrip(" -")) for line in (ROOT / "environment.yml").read_text().splitlines()
             if re.match(r"^  - [A-Za-z]", line)}
    missing = {CONDA_NAMES.get(_name(r), _name(r)) for r in wanted} - conda
    assert not missing, f"environment.yml lacks {sorted(missing)}"
    assert "-e ." in (ROOT / "environment.yml").read_text()


def test_seed_data_shipped_as_package_data():
    import comlab.data
    for name in ("client_data.txt", "server_data.txt"):
        assert comlab.data.seed_path(name).read_bytes() == (ROOT / "data" / name).read_bytes()


def _pins(requirements) -> dict:
    return {_name(r): re.sub(r"\s|;.*", "", r)[len(_name(r)):] for r in requirements}


def test_environment_yml_pins_the_same_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip = _pins([*project["dependencies"], *project["optional-dependencies"]["dev"],
                 *project["optional-dependencies"]["lab"]])
    lines = [line.strip()[2:] for line in (ROOT / "environment.yml").read_text().splitlines()
             if re.match(r"^  - [A-Za-z]", line)]
    conda = {_name(r): r.replace(" ", "")[len(_name(r)):] for r in lines}
    differ = {n: (spec, conda[CONDA_NAMES.get(n, n)]) for n, spec in pip.items()
              if conda.get(CONDA_NAMES.get(n, n)) != spec}
    assert not differ, f"pyproject vs environment.yml: {differ}"


def test_lab_and_plot_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # plots.latency_ecdf draws with Axes.ecdf, new in matplotlib 3.8
    assert "matplotlib>=3.8" in project["dependencies"]
    import matplotlib.axes
    assert hasattr(matplotlib.axes.Axes, "ecdf")
    # tqdm.auto draws widget bars in a notebook only with ipywidgets
    lab = {_name(r) for r in project["optional-dependencies"]["lab"]}
    assert {"jupyterlab", "ipywidgets", "nbconvert"} <= lab


def test_py_typed_is_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in config["package-data"]["comlab"]
    assert (ROOT / "comlab" / "py.typed").is_file()


def test_provenance_records_every_dependency():
    from comlab.lab import provenance
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = provenance.environment()
    missing = {_name(r) for r in project["dependencies"]} - set(env)
    assert not missing, f"meta.json's environment lacks {sorted(missing)}"
    assert all(env[_name(r)] for r in project["dependencies"])
