"""ARCHITECTURE.md stays true: the code it names exists, and imports follow its layers."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "ARCHITECTURE.md").read_text()
CODE = re.findall(r"`([^`\n]+)`", TEXT)
DOTTED = re.compile(r"comlab(\.[A-Za-z_][A-Za-z0-9_]*)+")
PATH = re.compile(r"[\w.-]+(/[\w.-]*)+")

# ARCHITECTURE.md's layers, lowest first: a module may import its own layer and those before it.
LAYERS = ["base", "system", "lab", "sim", "plots", "cli"]
LAYER_OF = [("comlab.system", "system"), ("comlab.lab", "lab"), ("comlab.sim", "sim"),
            ("comlab.plots", "plots"), ("comlab.notebook", "plots"), ("comlab.cli", "cli"),
            ("comlab.run_client", "cli"), ("comlab.run_server", "cli"),
            ("comlab.__main__", "cli"), ("comlab", "base")]
# The exceptions ARCHITECTURE.md names: (importer, imported).
ALLOWED = {("comlab.system.worker_host", "comlab.lab.checks"),
           ("comlab.lab.report", "comlab.plots")}


def layer(module: str) -> str:
    return next(name for prefix, name in LAYER_OF
                if module == prefix or module.startswith(prefix + "."))


def resolves(dotted: str) -> bool:
    """A module, or an attribute path (class, function, method) inside one."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_the_architecture_names_code():
    assert CODE, "no code named in ARCHITECTURE.md"
    dotted = [c for c in CODE if DOTTED.fullmatch(c)]
    paths = [c for c in CODE if PATH.fullmatch(c) and not DOTTED.fullmatch(c)]
    assert len(dotted) > 20 and len(paths) > 10, (dotted, paths)
    missing = [d for d in dotted if not resolves(d)]
    missing += [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"ARCHITECTURE.md names what does not exist: {missing}"


def test_the_name_check_would_see_a_stale_name():
    assert not resolves("comlab.system.client.Client.loop_that_is_gone")
    assert not resolves("comlab.clocks")
    assert resolves("comlab.system.client.Client.send_and_collect")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """The comlab modules a file imports (``from .x import y``: y when it is a module)."""
    me = _module(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                is_module = (ROOT / sub.replace(".", "/")).with_suffix(".py").exists() or \
                    (ROOT / sub.replace(".", "/")).is_dir()
                yield sub if is_module else base


def test_imports_follow_the_layers():
    wrong = []
    for path in sorted((ROOT / "comlab").rglob("*.py")):
        me = _module(path)
        for target in set(_imports(path)):
            if not target.startswith("comlab") or (me, target) in ALLOWED:
                continue
            if LAYERS.index(layer(target)) > LAYERS.index(layer(me)):
                wrong.append(f"{me} ({layer(me)}) imports {target} ({layer(target)})")
    assert not wrong, wrong


@pytest.mark.parametrize("name", LAYERS)
def test_every_layer_is_in_the_architecture(name):
    assert f"| {name} |" in TEXT
