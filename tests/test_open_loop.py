"""Open-loop arrivals through the lab: the schedule a run records is the one its process and
seed say, latency counts from it, and the client accounts for how well it kept it."""

import json
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest

import comlab
from comlab import arrivals, cli, data
from comlab.lab import records, stability

N = 2000
COMMANDS = [f"10.0.{i // 256}.{i % 256}:foo" for i in range(N)]
MAP = {k.partition(":")[0]: {"foo": (1, 0.0)} for k in COMMANDS}


@pytest.mark.timeout(120)
def test_a_poisson_run_records_its_schedule_and_warns_when_it_cannot_keep_it(tmp_path):
    rate = 2000.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = comlab.run_experiment(batch_sizes=[1], workers=[2], repeats=1, commands=COMMANDS,
                                   server_map=MAP, rate=[rate, 1e9], arrivals="poisson",
                                   progress=False, results_dir=tmp_path, name="p")
    assert (df["status"] == "ok").all()
    run = df[df["run"] == 0].sort_values("task_id")
    intended = run["t_intended"].to_numpy()
    gaps = np.diff(intended)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.1)
    assert 0.8 <= gaps.std() / gaps.mean() <= 1.2
    assert (run["t_sent"] >= run["t_intended"] - 1e-9).all()
    assert np.allclose(run["latency_s"], run["t_received"] - run["t_intended"])
    # The recorded seed redraws the recorded schedule.
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    entry = meta["runs"][0]
    assert entry["arrivals"] == "poisson" and meta["params"]["arrivals"] == ["poisson"]
    redrawn = arrivals.parse("poisson").offsets(N, 1, rate, seed=entry["arrivals_seed"])
    assert np.allclose(intended, redrawn, atol=1e-6)
    # 2,000 batches meant to leave within 2 us: the client is late, and says so.
    s = comlab.summarize(df).set_index("run")
    assert s.loc[1, "late_share"] > 0.5 and s.loc[1, "send_lag_p99_s"] > 0.001
    assert 0 <= s.loc[0, "late_share"] <= 1
    said = [str(w.message) for w in caught if issubclass(w.category,
                                                          stability.StabilityWarning)]
    assert any("the client could not keep the schedule: its latency figures are a lower "
               "bound" in text and "1e+09/s" in text for text in said), said
    assert any("could not keep the schedule" in w for w in meta["warnings"])


@pytest.mark.timeout(120)
def test_a_replayed_trace_is_sent_at_the_files_offsets(tmp_path):
    offsets = np.round(np.cumsum(np.random.default_rng(5).exponential(0.004, 60)), 6)
    offsets[10:13] = offsets[10]  # three tasks due at once
    keys = COMMANDS[:60]
    trace = tmp_path / "trace.csv"
    trace.write_text("offset_s,task\n" + "".join(f"{o:.6f},{k}\n" for o, k in zip(offsets, keys)))
    df = comlab.run_experiment(batch_sizes=[1, 4], workers=[1], repeats=1, server_map=MAP,
                               arrivals=f"trace:{trace}", progress=False,
                               results_dir=tmp_path, name="t")
    assert (df["status"] == "ok").all()
    for size, run in df.groupby("batch_size"):
        run = run.sort_values("task_id")
        assert list(run["ip"].astype(str) + ":" + run["command"].astype(str)) == keys
        assert np.allclose(run["t_intended"], offsets, atol=1e-6), size
        # a batch leaves when its last task is due; each task's latency from its own time
        last_due = run.groupby("batch_id")["t_intended"].transform("max")
        assert (run["t_sent"] >= last_due - 1e-9).all()
        assert np.allclose(run["latency_s"], run["t_received"] - run["t_intended"])
    with pytest.raises(ValueError, match="brings its own tasks"):
        comlab.run_experiment(commands=COMMANDS, arrivals=f"trace:{trace}", progress=False,
                              results_dir=tmp_path)


def test_summarize_has_the_send_lag_columns():
    # Three batches sent 0, 0.5 ms and 2 ms late, one never sent (lost): half are late.
    t_intended = np.array([0.0, 0.01, 0.02, 0.03])
    t_sent = np.array([0.0, 0.0105, 0.022, np.nan])
    df = _records(t_intended, t_sent)
    s = records.summarize(df, timeouts=1.0)
    assert s.loc[0, "late_share"] == pytest.approx(0.5)
    assert s.loc[0, "send_lag_p99_s"] == pytest.approx(np.quantile([0, 0.0005, 0.002], 0.99))
    closed = records.summarize(df.drop(columns=["t_intended"]), timeouts=1.0)
    assert np.isnan(closed.loc[0, "late_share"]) and np.isnan(closed.loc[0, "send_lag_p99_s"])


def test_the_late_schedule_check():
    df = _records(np.array([0.0, 0.01, 0.02, 0.03]), np.array([0.0, 0.0105, 0.022, 0.0301]))
    on_time = records.summarize(df, timeouts=1.0)
    assert on_time.loc[0, "late_share"] == 0.25
    late = [w for w in stability.check(on_time, {}) if "keep the schedule" in w]
    assert late and "25% late" in late[0]
    df["t_sent"] = df["t_intended"]
    kept = records.summarize(df, timeouts=1.0)
    assert not [w for w in stability.check(kept, {}) if "keep the schedule" in w]


def _records(t_intended, t_sent) -> pd.DataFrame:
    """Records of one open-loop run of batch 1 with these stamps (NaN t_sent: never sent)."""
    n = len(t_intended)
    sent = ~np.isnan(t_sent)
    return pd.DataFrame({
        "experiment": "x", "run": 0, "repeat": 0, "batch_size": 1, "workers": 1,
        "strategy": "sequential", "transport": "tcp", "dispatch": "broker", "rate": 100.0,
        "arrivals": "poisson", "task_id": range(n), "batch_id": range(n), "wait_s": 0.0,
        "status": np.where(sent, "ok", "lost"), "t_intended": t_intended, "t_sent": t_sent,
        "t_received": np.where(sent, t_sent + 0.001, np.nan),
        "latency_s": np.where(sent, t_sent + 0.001 - t_intended, np.nan),
        "overhead_s": np.where(sent, t_sent + 0.001 - t_intended, np.nan)})


@pytest.mark.parametrize("argv,message", [
    (["--arrivals", "normal"], "arrivals 'normal': expected one of"),
    (["--arrivals", "poisson"], "arrivals 'poisson' needs a rate"),
    (["--arrivals", "ramp:10,100,1", "--rate", "100"], "sets its own rate"),
])
def test_bad_arrivals_on_the_command_line_are_one_line(tmp_path, capsys, argv, message):
    try:  # the parser's own errors exit, run_experiment's come back as 2
        code = cli.main(["sweep", "--results-dir", str(tmp_path), "--no-progress", *argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.timeout(60)
def test_the_client_command_replays_a_trace(make_data, server_proc, free_url, tmp_path):
    client_file, server_file = make_data(n=40, wait=0.0, response=2)
    keys = [f"{ip}:{command}" for ip, command in data.read_commands(client_file)]
    trace = tmp_path / "trace.csv"
    trace.write_text("".join(f"{0.3 * i / 39:.6f},{k}\n" for i, k in enumerate(keys)))
    server = server_proc(server_file, 1)
    cmd = [sys.executable, "-m", "comlab.run_client", "-", "4", free_url(), server.url,
           "--arrivals", f"trace:{trace}", "--json"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ok"] == 40 and summary["sum"] == 80
    assert wall >= 0.3  # the last batch was due 0.3 s after the start
    cmd[3] = str(client_file)
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "give COMMANDS_FILE as -" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
