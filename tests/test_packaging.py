"""environment.yml and pyproject.toml must name the same packages."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"msgpack": "msgpack-python"}  # pip name -> conda-forge name


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
