"""A strategy and a dispatch design added by this module alone (issue 26): each is one class
here; registered, it is in ``comlab run --help``, a sweep, the ideal time, the stability check
and the model (``comlab predict``) with no other edit.

The classes are registered by a fixture (``register``, then ``unregister``), not with the
``@register`` decorator a user would write, so that the rest of the suite never sees them. The
lab's server and its workers are other processes: they import them by the names in
``COMLAB_PLUGINS`` (comlab.system.plugins), this module being importable there (PYTHONPATH).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import comlab
from comlab import cli
from comlab.lab import ideal, stability
from comlab.system import dispatch, plugins, strategies


class Doubled(strategies.Sequential):
    """Sequential, but each task lasts twice its wait: its records show that it ran."""

    name = "doubled"
    forms = {"doubled": "sequential, each task twice its wait: a test's own"}

    @classmethod
    def duration(cls, waits, param=None, threads=None):
        return 2.0 * float(sum(waits))

    def task(self, response, wait):
        return super().task(response, 2 * wait)


class Burner(strategies.CpuBound):
    """cpu-bound under another name: only its class says it computes."""

    name = "burner"
    forms = {"burner": "cpu-bound, renamed: a test's own"}


class Handed(dispatch.SharedQueue):
    """The shared queue under another name: only its class says what it is."""

    name = "handed"
    forms = {"handed": "the shared queue, renamed: a test's own"}


OURS = (Doubled, Burner, Handed)


@pytest.fixture
def ours(monkeypatch):
    for cls in OURS:
        (strategies if issubclass(cls, strategies.Strategy) else dispatch).register(cls)
    monkeypatch.setenv(plugins.ENV, ",".join(f"{__name__}:{c.__name__}" for c in OURS))
    here = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (here, os.environ.get("PYTHONPATH")) if p))
    yield
    for cls in OURS:
        (strategies if issubclass(cls, strategies.Strategy) else dispatch).unregister(cls)


def _help(verb: str) -> str:
    p = cli.build_parser()
    sub = next(a for a in p._actions if isinstance(a, cli.argparse._SubParsersAction))
    return " ".join(sub.choices[verb].format_help().split())


def test_help_names_what_a_module_registered(ours):
    text = _help("run")
    assert "doubled (sequential, each task twice its wait: a test's own)" in text
    assert "handed (the shared queue, renamed: a test's own)" in text
    assert "thread-pool:N (N threads per worker" in text and "broker:K" in text


def test_gone_when_unregistered(ours):
    os.environ.pop(plugins.ENV)  # (the fixture restores it)
    strategies.unregister(Doubled)
    dispatch.unregister(Handed)
    assert "doubled" not in _help("sweep") and "handed" not in _help("sweep")
    with pytest.raises(ValueError, match="unknown strategy 'doubled'"):
        strategies.check("doubled")
    with pytest.raises(ValueError, match="unknown dispatch 'handed'"):
        dispatch.check("handed")


def test_a_name_is_checked_when_registered():
    class Nameless(strategies.Sequential):
        name = "a:b"

    with pytest.raises(ValueError, match="without ':'"):
        strategies.register(Nameless)
    with pytest.raises(ValueError, match="taken by"):
        strategies.register(type("Again", (strategies.Sequential,), {"name": "sequential"}))
    with pytest.raises(TypeError, match="Design"):
        dispatch.register(Doubled)
    with pytest.raises(ValueError, match="simulated_as"):
        dispatch.register(type("Odd", (dispatch.Broker,), {"name": "odd", "simulated_as": "x"}))
    assert "a:b" not in strategies.STRATEGIES and "odd" not in dispatch.DESIGNS


def test_a_bad_plugin_entry_is_named(monkeypatch):
    monkeypatch.setenv(plugins.ENV, "no_such_module_here:Thing")
    with pytest.raises(ValueError, match="COMLAB_PLUGINS: cannot load 'no_such_module_here"):
        strategies.check("not-registered")
    assert "thread-per-task" in _help("run")  # --help still works; the look-up says why


def test_ideal_and_stability_read_the_class(ours):
    from test_compare import run_records  # (imported here: the lab's processes import us)
    assert ideal.batch_duration([0.01, 0.02], "doubled") == pytest.approx(0.06)
    batches = [[1.0]] * 4
    assert ideal.ideal_makespan(batches, 4, "burner", cpus=2) == \
        ideal.ideal_makespan(batches, 4, "cpu-bound", cpus=2) == 2.0
    df = run_records("x", 0, 1.0, workers=4, strategy="burner")
    found = stability.check(comlab.summarize(df), {"environment": {"cpu_count": 2}})
    assert len(found) == 1 and "burner" in found[0] and "4 workers" in found[0]


@pytest.mark.timeout(180)
def test_a_sweep_and_the_model_run_them(ours, make_data, tmp_path, capsys):
    """The server and its workers find both classes (COMLAB_PLUGINS); the records show the
    strategy's own tasks; ``comlab predict`` simulates both, and the calibration takes the
    queue take from the renamed queue design's runs."""
    client_file, server_file = make_data(n=32, wait=0.005)
    rec = comlab.run_experiment(
        batch_sizes=[4], workers=[2], repeats=1, strategy="doubled",
        dispatch=["broker", "handed"], commands=str(client_file), server_map=str(server_file),
        results_dir=tmp_path, name="ours", progress=False)
    assert (rec["status"] == "ok").all() and len(rec) == 64
    assert set(rec["strategy"].astype(str)) == {"doubled"}
    assert set(rec["dispatch"].astype(str)) == {"broker", "handed"}
    ran = rec["t_finished"] - rec["t_started"]
    assert (ran >= 1.9 * rec["wait_s"]).all(), ran.describe()  # a sleep never ends early

    import comlab.sim as sim
    cal = sim.calibrate(tmp_path / "ours", strategy="doubled", dispatch="handed")
    assert not any("no queue-design run" in note for note in cal.notes), cal.notes
    assert cli.main(["predict", str(tmp_path / "ours")]) == 0
    out = capsys.readouterr().out
    assert "doubled" in out and "handed" in out and "broker" in out
