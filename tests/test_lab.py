"""run_experiment, summarize, saved results: the lab's contract."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

import comlab
from conftest import descendants
from comlab.lab import ideal
from comlab.lab.records import STAMPS

COMMANDS = [f"10.0.0.{i}:foo" for i in range(64)]
MAP = {f"10.0.0.{i}": {"foo": (i, 0.01)} for i in range(64)}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    df = comlab.run_experiment(batch_sizes=[1, 8], workers=[1, 4], repeats=2, commands=COMMANDS,
                               server_map=MAP, progress=False, results_dir=out, name="sweep")
    return df, out / "sweep"


@pytest.mark.timeout(120)
def test_sweep_records(sweep):
    df, _ = sweep
    assert len(df) == 64 * 4 * 2
    assert (df["status"] == "ok").all()
    assert df.groupby("run").size().eq(64).all()
    assert df.groupby("run")["task_id"].apply(lambda s: sorted(s) == list(range(64))).all()
    assert (df["response"] == df["ip"].astype(str).str.rsplit(".", n=1).str[1].astype(int)).all()
    stamps = df[list(STAMPS)].to_numpy()
    assert (np.diff(stamps, axis=1) >= 0).all(), "stamps out of order"
    assert np.allclose(df["latency_s"], df["t_received"] - df["t_sent"])
    assert np.allclose(df["overhead_s"], df["latency_s"] - df["wait_s"])
    for col in ("strategy", "transport", "status", "worker", "ip", "command", "experiment"):
        assert str(df[col].dtype) == "category", col
    assert str(df["response"].dtype) == "Int64"
    assert not descendants(), "run_experiment left processes behind"


@pytest.mark.timeout(120)
def test_summary_matches_model(sweep):
    df, _ = sweep
    s = comlab.summarize(df)
    assert len(s) == 8
    assert s["efficiency"].between(0, 1, inclusive="right").all()
    assert (s["n_ok"] == 64).all()
    for row in s.itertuples():
        batches = [[0.01] * row.batch_size for _ in range(64 // row.batch_size)]
        assert row.ideal_s == pytest.approx(ideal.ideal_makespan(batches, row.workers,
                                                                 row.strategy))
    assert (s["makespan_s"] >= s["ideal_s"]).all()


@pytest.mark.timeout(120)
def test_saved_and_reloaded(sweep):
    df, path = sweep
    again = comlab.load_results(path)
    assert again.shape == df.shape
    assert (again.dtypes == df.dtypes).all()
    meta = comlab.load_meta(path)
    for key in ("comlab", "git_commit", "python", "pyzmq", "libzmq", "pandas", "hostname",
                "cpu_count", "clock"):
        assert key in meta["environment"]
    assert meta["params"]["batch_sizes"] == [1, 8]
    assert len(meta["runs"]) == 8
    assert meta["duration_s"] > 0
    assert meta["format_version"] == 2 and meta["complete"] is True
    assert isinstance(meta["warnings"], list) and len(meta["sessions"]) == 1
    for run in meta["runs"]:
        assert run["resumed"] is False and run["timeout_s"] > 0
        assert len(run["loadavg_start"]) == 3 and len(run["loadavg_end"]) == 3
        assert run["server"]["tasks"] == 64 and run["server"]["worker_deaths"] == 0


@pytest.mark.timeout(120)
def test_resume_skips_saved_runs(sweep, monkeypatch):
    df, path = sweep

    def no_server(*a, **k):
        raise AssertionError("a saved run was run again")

    monkeypatch.setattr(comlab.lab.session, "ServerProcess", no_server)
    again = comlab.run_experiment(batch_sizes=[1, 8], workers=[1, 4], repeats=2,
                                  commands=COMMANDS, server_map=MAP, progress=False,
                                  results_dir=path.parent, name="sweep")
    assert len(again) == len(df)


@pytest.mark.timeout(60)
def test_tasks_that_never_return_are_lost(tmp_path):
    slow = {ip: {"foo": (1, 30.0)} for ip in ("10.0.0.1", "10.0.0.2")}
    t0 = time.monotonic()
    df = comlab.run_experiment(batch_sizes=[1], workers=[1], repeats=1, progress=False,
                               commands=["10.0.0.1:foo", "10.0.0.2:foo", "10.0.0.3:foo"],
                               server_map=slow, timeout=1.0, results_dir=tmp_path)
    assert time.monotonic() - t0 < 20
    assert df.set_index("ip")["status"].astype(str).to_dict() == {
        "10.0.0.1": "lost", "10.0.0.2": "lost", "10.0.0.3": "unknown"}
    lost = df[df["status"] == "lost"]
    assert lost["t_received"].isna().all() and lost["t_sent"].notna().all()
    s = comlab.summarize(df)
    assert s.loc[0, "n_lost"] == 2 and s.loc[0, "n_unknown"] == 1


@pytest.mark.timeout(60)
def test_open_loop_measures_from_intended_time(tmp_path):
    df = comlab.run_experiment(batch_sizes=[1], workers=[2], repeats=1, commands=COMMANDS,
                               server_map={ip: {"foo": (1, 0.0)} for ip in MAP},
                               rate=500.0, progress=False, results_dir=tmp_path)
    assert (df["status"] == "ok").all()
    assert (df["t_sent"] >= df["t_intended"] - 1e-9).all()
    gaps = np.diff(np.sort(df["t_intended"].to_numpy()))
    assert gaps == pytest.approx(np.full(63, 1 / 500), abs=1e-6)
    assert np.allclose(df["latency_s"], df["t_received"] - df["t_intended"])


def test_bad_arguments_fail_before_starting(tmp_path):
    with pytest.raises(ValueError, match="transport"):
        comlab.run_experiment(transport="udp", results_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="strategy"):
        comlab.run_experiment(strategy="nonsense", results_dir=tmp_path, progress=False)
    with pytest.raises(comlab.DataError):
        comlab.run_experiment(commands=["not a task"], results_dir=tmp_path, progress=False)


def _running(p: psutil.Process) -> bool:
    """A zombie has exited; only init has yet to reap it."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


SCRIPT = """
import signal
import comlab
# A job started in the background of a shell inherits SIGINT ignored: be the user at a terminal.
signal.signal(signal.SIGINT, signal.default_int_handler)
comlab.run_experiment(batch_sizes=[1], workers=[2, 3, 4], repeats=3, progress=False,
                      commands=[f"10.0.0.{i}:foo" for i in range(20)],
                      server_map={f"10.0.0.{i}": {"foo": (1, 0.05)} for i in range(20)},
                      results_dir=%r, name="interrupted")
"""


@pytest.mark.timeout(90)
def test_keyboard_interrupt_tears_everything_down(tmp_path):
    # A script with no __main__ guard, as a user would write it.
    script = tmp_path / "sweep.py"
    script.write_text(textwrap.dedent(SCRIPT % str(tmp_path)))
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE)
    parent = psutil.Process(proc.pid)
    parts = tmp_path / "interrupted" / "parts"
    deadline = time.monotonic() + 60
    while not (parts.exists() and any(parts.iterdir())):
        assert time.monotonic() < deadline, "no run finished"
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    family = parent.children(recursive=True)
    assert family, "the lab should have background processes"
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    proc.wait(10)
    _, alive = psutil.wait_procs(family, timeout=max(0.1, 2 - (time.monotonic() - t0)))
    assert not [p for p in alive if _running(p)], f"left behind: {alive}"
    assert b"KeyboardInterrupt" in proc.stderr.read()
    meta = json.loads((tmp_path / "interrupted" / "meta.json").read_text())
    assert meta["runs"], "finished runs were not saved"
    assert meta["complete"] is False
    saved = comlab.load_results(tmp_path / "interrupted")
    assert len(saved) == 20 * len(meta["runs"])


# -- the plan: pure, no processes ----------------------------------------------------------------
def test_plan_groups_runs_by_server():
    from comlab.lab import plan
    specs = plan.plan([1, 8], [1, 4], 2, strategy=["sequential", "thread-per-task"],
                      transport=["tcp", "ipc"], rate=[None, 100], dispatch=["broker", "queue"])
    assert len(specs) == 2 * 2 * 2 * 2 * 2 * 2 * 2
    assert [s.index for s in specs] == list(range(len(specs)))
    assert len({s.key for s in specs}) == len(specs)
    groups = plan.groups(specs)
    servers = [("tcp", "broker", 1), ("tcp", "broker", 4), ("tcp", "queue", 1),
               ("tcp", "queue", 4), ("ipc", "broker", 1), ("ipc", "broker", 4),
               ("ipc", "queue", 1), ("ipc", "queue", 4)]
    assert [g for g, _ in groups] == servers * 2  # repeats outermost: every server twice
    for i, ((transport, design, workers), runs) in enumerate(groups):
        assert {(s.transport, s.dispatch, s.workers, s.repeat) for s in runs} == \
            {(transport, design, workers, i // len(servers))}
        assert len(runs) == 8
    assert specs[0].repeat == 0 and specs[-1].repeat == 1
    assert specs[0].rate is None and specs[1].rate == 100.0
    assert "broker w1 b1 sequential r1/2" in specs[0].label(2)
    with pytest.raises(ValueError, match="dispatch"):
        plan.plan([1], [1], 1, dispatch="nope")


def test_plan_checks_its_axes():
    from comlab.lab import plan
    with pytest.raises(ValueError, match="transport"):
        plan.plan([1], [1], 1, transport="udp")
    with pytest.raises(ValueError, match="strategy"):
        plan.plan([1], [1], 1, strategy="nonsense")
    with pytest.raises(ValueError, match="at least 1"):
        plan.plan([0], [1], 1)
    with pytest.raises(ValueError, match="at least 1"):
        plan.plan([1], [0], 1)
    assert plan.plan([1], [0], 1, remote_workers=2)[0].workers == 0


def test_plan_weights_follow_the_ideal_time():
    from comlab.lab import plan
    waits = [0.5] * 8
    one, four = plan.plan([1], [1, 4], 1)
    assert plan.ideal_s(one, waits) == pytest.approx(4.0)
    assert plan.ideal_s(four, waits) == pytest.approx(1.0)
    assert plan.weight(one, waits) > plan.weight(four, waits) > plan.RUN_OVERHEAD_S
    open_loop = plan.plan([8], [4], 1, rate=1.0)[0]
    assert plan.ideal_s(open_loop, waits) == pytest.approx(8.0)  # the schedule, not the work
    assert plan.default_timeout(one, waits) > 3 * 4.0


def test_a_sweep_longer_than_ten_minutes_warns_before_it_starts():
    from comlab.lab import experiment, plan
    inputs = experiment.Inputs(keys=["10.0.0.1:foo"] * 100, waits=np.full(100, 10.0), smap={},
                               commands_source="x", map_source="y")
    long_runs = plan.plan([1], [1], 1)  # 100 tasks of 10 s on one worker: 1000 s ideal
    with pytest.warns(comlab.ComlabWarning, match="ideal time alone is 16.7 min"):
        experiment._confirm_if_long(long_runs, inputs, 0, None)
    short = plan.plan([100], [1], 1)  # one batch, thread-per-task: 10 s
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        experiment._confirm_if_long(short, inputs, 0, None)


def test_progress_is_weighted_by_ideal_time_and_shows_the_run():
    from comlab.lab import experiment, plan
    specs = plan.plan([1, 4], [2], 1)
    waits = [0.1] * 8
    weights = {s.index: plan.weight(s, waits) for s in specs}
    assert weights[0] == pytest.approx(0.4 + plan.RUN_OVERHEAD_S)  # 8 batches on 2 workers
    with experiment._Progress(specs, specs[1:], weights, True) as bar:
        # whole milliseconds (tests/test_progress.py: a finished bar is exactly full)
        assert bar.bar.total == pytest.approx(1000 * sum(weights.values()), abs=len(specs))
        assert bar.bar.n == pytest.approx(1000 * weights[0], abs=1)  # saved already: counted
        bar.show(specs[1])
        assert "b4" in bar.bar.postfix and "thread-per-task" in bar.bar.postfix
        bar.done(specs[1])
        assert bar.bar.n == bar.bar.total
