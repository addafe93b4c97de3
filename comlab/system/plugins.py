"""Strategies and dispatch designs defined outside comlab: ``COMLAB_PLUGINS``.

A strategy (comlab.system.strategies) or a dispatch design (comlab.system.dispatch) is one
class, registered by name with its module's ``register`` decorator. The lab's server, workers
and worker hosts are other processes (``python -m``, or forked from a fresh forkserver): a
class defined in a notebook, a script or a test module is not registered there. So every
process that meets a name it does not know imports the classes that ``COMLAB_PLUGINS`` names,
comma-separated ``module:Class`` (the entry-point syntax), and registers each (a Strategy as a
strategy, a Design as a dispatch design).

The lab's processes inherit its environment: set ``COMLAB_PLUGINS`` (and, if the module is not
installed, ``PYTHONPATH``) before the sweep starts. A worker host reached over ssh does not:
set both in that host's environment. Nothing is imported until a name is not found, so
comlab's own strategies and designs never import a plugin.
"""

from __future__ import annotations

import importlib
import os

ENV = "COMLAB_PLUGINS"
HINT = f"register it, and name it in {ENV}=module:Class for the lab's other processes"


def entries() -> list[str]:
    return [e.strip() for e in os.environ.get(ENV, "").split(",") if e.strip()]


def classes(base: type) -> list[type]:
    """The classes COMLAB_PLUGINS names that are subclasses of ``base``; ValueError naming
    the entry at fault when one cannot be imported."""
    out = []
    for entry in entries():
        module, sep, attr = entry.partition(":")
        if not (sep and module and attr):
            raise ValueError(f"{ENV}: {entry!r} is not module:Class")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except Exception as exc:  # a plugin's own error: one line that names it
            raise ValueError(f"{ENV}: cannot load {entry!r}: {type(exc).__name__}: "
                             f"{exc}") from None
        if isinstance(cls, type) and issubclass(cls, base):
            out.append(cls)
    return out


def check_name(what: str, cls: type, registry: dict) -> None:
    """A class's name can be written in a spec and is not another class's."""
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name or any(c in name for c in ":, \t\n"):
        raise ValueError(f"{what} class {cls.__qualname__} needs a name without ':', ',' or "
                         f"spaces, not {name!r}")
    taken = registry.get(name)
    if taken is not None and taken is not cls:
        raise ValueError(f"{what} {name!r} is taken by {taken.__module__}.{taken.__qualname__}")
