"""The public API can be introspected: every name in comlab.__all__ and every public plot
function resolves its type hints (typing.get_type_hints, as IDEs, docs and pydantic do)."""

import inspect
import typing

import pytest

import comlab
import comlab.plots


def _public():
    for name in comlab.__all__:
        obj = getattr(comlab, name)
        if callable(obj):
            yield f"comlab.{name}", obj
    for name, obj in vars(comlab.plots).items():
        if inspect.isfunction(obj) and obj.__module__ == "comlab.plots" and not name.startswith("_"):
            yield f"comlab.plots.{name}", obj


@pytest.mark.parametrize("name,obj", list(_public()), ids=[n for n, _ in _public()])
def test_type_hints_resolve(name, obj):
    typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)


def test_warnings_have_a_comlab_category():
    """One category for every warning comlab gives, exported at the top level: a user filters
    comlab's warnings (or makes them errors) without catching everyone else's."""
    assert issubclass(comlab.ComlabWarning, UserWarning)
    assert issubclass(comlab.StabilityWarning, comlab.ComlabWarning)
    assert {"ComlabWarning", "StabilityWarning"} <= set(comlab.__all__)


def test_every_warning_call_names_a_comlab_category():
    """Read from the source: a warnings.warn without a category would be a bare UserWarning."""
    import ast
    from pathlib import Path
    bare = []
    for path in Path(comlab.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "warn"
                    and getattr(node.func.value, "id", None) == "warnings"):
                category = node.args[1] if len(node.args) > 1 else next(
                    (k.value for k in node.keywords if k.arg == "category"), None)
                name = getattr(category, "id", getattr(category, "attr", None))
                if name not in ("ComlabWarning", "StabilityWarning"):
                    bare.append(f"{path.name}:{node.lineno}")
    assert not bare, f"warnings without a comlab category: {bare}"
