"""Every default of a sweep, in one place: ``run_experiment``'s signature, the ``comlab run``
and ``comlab sweep`` flags (comlab/cli.py) and the docs' defaults table (docs/hooks.py) read
them here. Light on purpose: the command line imports it to build its parser."""

from __future__ import annotations

from ..system import dispatch, strategies

# The main job: the shipped seed with its waits scaled (wait_scale None: 10 ms tasks, same
# shape), 2 repeats, < 2 min. None means "worked out per sweep" (docs/reference: defaults).
DEFAULTS = dict(batch_sizes=(1, 4, 16, 64), workers=(1, 4, 16, 32), repeats=2,
                strategy=strategies.DEFAULT, transport="tcp", dispatch=dispatch.DEFAULT,
                wait_scale=None, timeout=None, rate=None, results_dir="results", name=None,
                server_address="127.0.0.1", client_address="127.0.0.1", remote_workers=0,
                on_host_loss="stop", secure=None, arrivals="constant", task=None,
                task_command=None, task_timeout=None)

# What a verb of the command line sets otherwise: `comlab run` is the main job under
# results/main; `comlab sweep` is for sweeps of your own, so its axes default to a smaller sweep.
VERBS = {"run": dict(name="main"), "sweep": dict(batch_sizes=(1, 4, 16), workers=(1, 4, 16))}


def of_verb(verb: str) -> dict:
    """DEFAULTS with ``verb``'s own, each axis as a list (the type its flag parses to)."""
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in {**DEFAULTS, **VERBS[verb]}.items()}
