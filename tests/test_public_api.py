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
