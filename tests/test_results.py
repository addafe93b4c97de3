"""Saved results: format versions, refusal to resume on any mismatch, lock, names, meta.json."""

import errno
import json
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import comlab
from comlab.lab import experiment, provenance, results
from comlab.lab.records import STATUS
from comlab.lab.results import ResultLocked, ResultStore, ResumeRefused

EXAMPLE = Path(__file__).resolve().parents[1] / "results" / "example"
# runs 0 and 1 of the example as comlab wrote it before meta.json had a format_version
FORMAT_1 = Path(__file__).resolve().parent / "data" / "format1"
PARAMS = {"batch_sizes": [1, 4], "workers": [2], "repeats": 2, "data_sha256": "abc"}


def fake_run(run: int, n: int = 4, experiment_name: str = "x") -> pd.DataFrame:
    """Records shaped like a run's: categoricals, nullable ints, floats, NaN stamps."""
    df = pd.DataFrame({
        "experiment": experiment_name, "run": run, "repeat": run % 2, "batch_size": 1,
        "workers": 2, "strategy": "sequential", "transport": "tcp",
        "task_id": np.arange(n), "ip": [f"10.0.0.{i}" for i in range(n)],
        "response": pd.array([1] * (n - 1) + [None], dtype="Int64"),
        "status": pd.Categorical(["ok"] * (n - 1) + ["lost"], dtype=STATUS),
        "t_sent": np.linspace(0, 1, n), "t_received": [0.1] * (n - 1) + [np.nan],
        "error": [None] * n,
    })
    for c in ("experiment", "strategy", "transport", "ip"):
        df[c] = df[c].astype("category")
    return df


def entry(run: int) -> dict:
    return {"key": f"k{run}", "run": run, "experiment": "x", "timeout_s": 5.0}


@pytest.fixture
def env(monkeypatch):
    """A fixed environment the tests change one key at a time."""
    current = provenance.environment()
    monkeypatch.setattr(results, "environment", lambda: dict(current))
    return current


def saved(tmp_path, params=PARAMS, runs=(0, 1)) -> Path:
    with ResultStore(tmp_path, "x", params) as store:
        for run in runs:
            store.save_run(fake_run(run), entry(run))
        store.finish()
    return tmp_path / "x"


# -- format -------------------------------------------------------------------------------------
def test_meta_carries_the_format_version_and_records_keep_their_dtypes(tmp_path, env):
    path = saved(tmp_path)
    meta = comlab.load_meta(path)
    assert meta["format_version"] == results.FORMAT_VERSION == 2
    assert meta["complete"] is True
    df = comlab.load_results(path)
    expected = pd.concat([fake_run(0), fake_run(1)], ignore_index=True)
    for c in ("experiment", "strategy", "transport", "ip"):
        expected[c] = expected[c].astype("category")
    assert dict(df.dtypes.astype(str)) == dict(expected.dtypes.astype(str))
    assert str(df["response"].dtype) == "Int64" and df["response"].isna().sum() == 2
    assert df.attrs["timeouts"] == {("x", 0): 5.0, ("x", 1): 5.0}


def test_the_committed_example_is_in_the_current_format():
    """results/example is what the notebooks, the docs and the report show: remade (`comlab run
    --results-dir DIR --name example`, then its meta.json, records.parquet and figures/) when
    the format changes."""
    meta = comlab.load_meta(EXAMPLE)
    assert meta["format_version"] == results.FORMAT_VERSION and meta["complete"] is True
    assert len(comlab.load_results(EXAMPLE)) == 512 * len(meta["runs"])


def test_a_result_of_format_1_still_loads():
    meta = comlab.load_meta(FORMAT_1)
    assert "format_version" not in meta  # written before versions: format 1
    df = comlab.load_results(FORMAT_1)
    assert len(df) == 512 * len(meta["runs"]) > 0
    for col in ("strategy", "transport", "experiment", "worker", "status"):
        assert str(df[col].dtype) == "category", col
    assert str(df["response"].dtype) == "Int64"
    s = comlab.summarize(df)
    assert len(s) == len(meta["runs"]) and (s["n_ok"] == 512).all()


def test_a_format_1_result_is_not_resumed(tmp_path, env):
    shutil.copytree(FORMAT_1, tmp_path / "x")
    with pytest.raises(ResumeRefused, match="format 1"):
        ResultStore(tmp_path, "x", PARAMS)


# -- resume only when everything matches ---------------------------------------------------------
def test_resume_keeps_the_start_and_marks_resumed_runs(tmp_path, env):
    with pytest.raises(KeyboardInterrupt):
        with ResultStore(tmp_path, "x", PARAMS) as store:
            store.save_run(fake_run(0), entry(0))
            raise KeyboardInterrupt
    meta = comlab.load_meta(tmp_path / "x")
    assert meta["complete"] is False and len(meta["runs"]) == 1
    assert len(comlab.load_results(tmp_path / "x")) == 4  # joined despite the interrupt
    started = meta["started"]
    with ResultStore(tmp_path, "x", PARAMS) as store:
        assert set(store.finished()) == {"k0"}
        store.save_run(fake_run(1), entry(1))
        store.finish()
    meta = comlab.load_meta(tmp_path / "x")
    assert meta["started"] == started and meta["complete"] is True
    assert [(r["run"], r["resumed"], r["session"]) for r in meta["runs"]] == [
        (0, True, 0), (1, False, 1)]
    assert len(meta["sessions"]) == 2 and meta["resumed_runs"] == 1


@pytest.mark.parametrize("change", [
    ("params", "repeats", 3), ("params", "data_sha256", "def"),
    ("env", "git_commit", "0" * 40), ("env", "git_dirty", "flip"),
    ("env", "git_diff_sha256", "other edit"), ("env", "hostname", "elsewhere"),
    ("env", "cpu_count", 64), ("env", "pyzmq", "1.0"), ("env", "libzmq", "1.0"),
    ("env", "pandas", "0.1"), ("env", "numpy", "0.1"), ("env", "python", "2.7"),
    ("env", "comlab", "0.0.1"),
])
def test_resume_refused_on_any_mismatch(tmp_path, env, change):
    path = saved(tmp_path)
    before = sorted(p.name for p in (path / "parts").iterdir())
    where, key, value = change
    params = {**PARAMS, key: value} if where == "params" else PARAMS
    original = env.get(key)
    value = (not original) if value == "flip" else value
    if where == "env":
        env[key] = value
    what = "data (commands or server map contents)" if key == "data_sha256" else key
    with pytest.raises(ResumeRefused) as info:
        ResultStore(tmp_path, "x", params)
    message = str(info.value)
    assert f"{what}:" in message and "fresh=True" in message and "--fresh" in message
    assert sorted(p.name for p in (path / "parts").iterdir()) == before  # nothing deleted
    env[key] = original
    ResultStore(tmp_path, "x", PARAMS).close()  # unchanged: still resumable (and unlocked)


def test_fresh_moves_the_earlier_result_aside(tmp_path, env):
    path = saved(tmp_path)
    with pytest.warns(comlab.ComlabWarning, match="moved to"):
        store = ResultStore(tmp_path, "x", {**PARAMS, "repeats": 5}, resume=False)
    with store:
        assert store.finished() == {}
        store.finish()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("x.")]
    assert len(aside) == 1
    assert len(comlab.load_results(aside[0])) == 8  # the earlier runs, intact
    assert comlab.load_meta(path)["params"]["repeats"] == 5


# -- lock and names ------------------------------------------------------------------------------
def _try_store(results_dir, queue):
    try:
        ResultStore(results_dir, "x", PARAMS).close()
        queue.put("opened")
    except ResultLocked as exc:
        queue.put(f"locked: {exc}")


@pytest.mark.timeout(60)
def test_a_second_sweep_on_one_result_is_refused(tmp_path, env):
    with ResultStore(tmp_path, "x", PARAMS) as store:
        with pytest.raises(ResultLocked, match="another sweep"):
            ResultStore(tmp_path, "x", PARAMS)
        ctx = multiprocessing.get_context("forkserver")
        queue = ctx.Queue()
        proc = ctx.Process(target=_try_store, args=(tmp_path, queue))
        proc.start()
        answer = queue.get(timeout=30)
        proc.join(30)
        assert answer.startswith("locked: ") and str(tmp_path / "x") in answer
        store.save_run(fake_run(0), entry(0))
        store.finish()
    ResultStore(tmp_path, "x", PARAMS).close()  # released


@pytest.mark.parametrize("name", ["", "../x", "a/b", "a\\b", ".", "..", ".hidden", " x"])
def test_names_are_plain_names(tmp_path, name):
    with pytest.raises(results.ResultError, match="plain name"):
        ResultStore(tmp_path, name, PARAMS)
    with pytest.raises(ValueError, match="plain name"):
        comlab.run_experiment(batch_sizes=[1], workers=[1], repeats=1, progress=False,
                              commands=["10.0.0.1:foo"], server_map={"10.0.0.1": {"foo": (1, 0)}},
                              results_dir=tmp_path / "r", name=name)
    assert not (tmp_path / "x").exists() and not (tmp_path / "b").exists()


# -- what the data was ---------------------------------------------------------------------------
def test_params_name_the_data_actually_used(tmp_path):
    inputs = experiment.load_inputs(None, None, 0.01)
    params = inputs.params()
    assert params["commands"].endswith("client_data.txt") and Path(params["commands"]).is_file()
    assert params["server_map"].endswith("server_data.txt")
    assert params["n_tasks"] == 512
    again = experiment.load_inputs(None, None, 0.01).params()["data_sha256"]
    assert again == params["data_sha256"]
    assert experiment.load_inputs(None, None, 0.02).params()["data_sha256"] != again
    edited = tmp_path / "client.txt"
    lines = Path(params["commands"]).read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]  # the same tasks in another order
    edited.write_text("\n".join(lines))
    assert experiment.load_inputs(edited, None, 0.01).params()["data_sha256"] != again
    listed = experiment.load_inputs(["10.0.0.1:foo"], {"10.0.0.1": {"foo": (1, 0.5)}}, 1.0)
    assert listed.params()["commands"] == "<list of 1>"
    assert listed.params()["server_map"] == "<dict of 1 hosts>"


def test_no_lock_file_is_left_behind(tmp_path):
    from comlab.lab.results import ResultStore
    with ResultStore(tmp_path, "x", {"p": 1}) as store:
        assert (tmp_path / ".x.lock").exists()  # held while the sweep writes
        store.finish()
    assert not (tmp_path / ".x.lock").exists()
    with ResultStore(tmp_path, "x", {"p": 1}):  # and it can be taken again (resumed)
        pass
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# -- atomic writes: a full disk or a kill mid-write (issue 25) -----------------------------------
def _disk_trouble(monkeypatch, trouble) -> None:
    """``trouble()`` runs once half of a file's bytes are on disk: parquet written straight to a
    path (what comlab did before) and the fsync of a temporary file (what it does now)."""
    write = pd.DataFrame.to_parquet

    def to_parquet(df, target, *args, **kwargs):
        if not isinstance(target, (str, Path)):
            return write(df, target, *args, **kwargs)
        import io
        buf = io.BytesIO()
        write(df, buf, *args, **kwargs)
        Path(target).write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
        trouble()
    monkeypatch.setattr(pd.DataFrame, "to_parquet", to_parquet)
    monkeypatch.setattr(os, "fsync", lambda fd: trouble())


def _resumed_with_one_more_run(tmp_path) -> ResultStore:
    saved(tmp_path)
    store = ResultStore(tmp_path, "x", PARAMS)
    store.save_run(fake_run(2), entry(2))
    return store


def _full_disk():
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_and_keeps_every_result_loadable(tmp_path, env, monkeypatch):
    store = _resumed_with_one_more_run(tmp_path)
    _disk_trouble(monkeypatch, _full_disk)
    with pytest.raises(ValueError) as err:
        with store:
            store.finish()
    monkeypatch.undo()
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "x") in message and "bytes" in message
    assert sorted(comlab.load_results(tmp_path / "x")["run"].unique()) == [0, 1, 2]
    assert not list((tmp_path / "x").glob(".*.tmp"))


def test_after_an_interrupted_rerun_load_returns_the_runs_meta_lists(tmp_path, env):
    store = _resumed_with_one_more_run(tmp_path)  # SIGKILLed here: no finish, no records
    for run in range(3, 11):
        store.save_run(fake_run(run), entry(run))
    store.close()
    assert len(comlab.load_meta(tmp_path / "x")["runs"]) == 11
    assert sorted(comlab.load_results(tmp_path / "x")["run"].unique()) == list(range(11))


def _finish_killed_midway(path, ready) -> None:
    def hang():
        ready.set()
        time.sleep(60)
    store = ResultStore(path, "x", PARAMS)
    store.save_run(fake_run(2), entry(2))
    _disk_trouble(pytest.MonkeyPatch(), hang)
    store.finish()


def test_a_sigkill_while_records_are_written_leaves_them_loadable(tmp_path, env):
    saved(tmp_path)
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_finish_killed_midway, args=(tmp_path, ready))
    child.start()
    try:
        assert ready.wait(20), "the child never reached the write"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    assert sorted(comlab.load_results(tmp_path / "x")["run"].unique()) == [0, 1, 2]
    ResultStore(tmp_path, "x", PARAMS).close()  # the next sweep resumes it, tidies leftovers
    assert not list((tmp_path / "x").rglob(".*.tmp"))


def test_a_newer_format_is_refused_in_one_line(tmp_path, env):
    path = saved(tmp_path)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    for attempt in (lambda: comlab.load_results(path), lambda: ResultStore(tmp_path, "x", PARAMS)):
        with pytest.raises(ValueError, match="format_version 99 is newer") as err:
            attempt()
        assert "\n" not in str(err.value)


def test_zero_wait_efficiency_is_nan_in_the_summary_and_the_table(capsys):
    """Zero-wait tasks have an ideal of 0: no efficiency to speak of (issue 25), not 0.0."""
    from comlab import cli
    df = fake_run(0).assign(batch_id=range(4), wait_s=0.0)
    df["latency_s"] = df["overhead_s"] = df["t_received"] - df["t_sent"]
    summary = comlab.summarize(df)
    assert summary["ideal_s"].tolist() == [0.0] and summary["efficiency"].isna().all()
    cli.print_table(summary)
    header, row = capsys.readouterr().out.splitlines()[-2:]
    assert row.split()[header.split().index("efficiency")] == "NaN"
