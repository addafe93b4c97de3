"""bench/theory.py's table: the theory columns from a synthetic records frame (no runs, no
timing assertions)."""

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a directory of the repo, not part of the package
    sys.path.insert(0, str(ROOT))

from bench import theory as bt  # noqa: E402
from comlab import theory  # noqa: E402


def test_fcfs_sojourns_by_hand():
    # one server, arrivals every 1 s, each task 2 s: each waits 1 s longer than the one before
    assert bt.fcfs_sojourns([0, 1, 2], [2, 2, 2], 1).tolist() == [2, 3, 4]
    # two servers: the third task takes the server the first one frees at t = 2
    assert bt.fcfs_sojourns([0, 0, 0], [2, 3, 1], 2).tolist() == [2, 3, 3]


def _records(n=2000, c=4, rate=200.0, service=0.01, extra=0.001, seed=1, design="queue"):
    """A run as comlab records it: Poisson arrivals, exponential waits; each task's latency is
    its ideal FCFS sojourn plus ``extra`` s of hops, its queueing t_started - t_enqueued."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, n))
    t -= t[0]
    wait = rng.exponential(service, n)
    sojourn = bt.fcfs_sojourns(t, wait, c)
    queued = sojourn - wait
    return pd.DataFrame({
        "experiment": "x", "run": 0, "workers": c, "rate": rate, "dispatch": design,
        "worker": [f"w{i}" for i in np.arange(n) % c],
        "task_id": np.arange(n), "t_intended": t, "wait_s": wait, "status": "ok",
        "t_enqueued": t + extra / 2, "t_started": t + extra / 2 + queued,
        "t_finished": t + extra / 2 + queued + wait + extra / 4,
        "latency_s": sojourn + extra})


def test_table_theory_columns_at_nominal_and_realised_rates():
    df = _records()
    row = bt.table(df).iloc[0]
    span = df["t_intended"].max() - df["t_intended"].min()
    rate, service = (len(df) - 1) / span, df["wait_s"].mean()
    real, nominal = theory.mmc(4, rate, 1 / service), theory.mmc(4, 200.0, 100.0)
    assert row["rate"] == pytest.approx(rate)
    assert row["service_ms"] == pytest.approx(service * 1e3)
    assert row["u"] == pytest.approx(0.5) and row["u_real"] == pytest.approx(real.utilisation)
    assert row["mmc_nominal_mean_ms"] == pytest.approx(nominal.mean_sojourn_s * 1e3)
    assert row["mmc_mean_ms"] == pytest.approx(real.mean_sojourn_s * 1e3)
    assert row["mmc_p99_ms"] == pytest.approx(real.p99_sojourn_s * 1e3)
    kept = df.iloc[int(len(df) * bt.WARMUP_SHARE):]  # the first 5 % left out
    assert row["n"] == len(kept)
    assert row["mean_ms"] == pytest.approx(kept["latency_s"].mean() * 1e3)
    assert row["p99_ms"] == pytest.approx(np.quantile(kept["latency_s"], 0.99) * 1e3)
    assert row["err_mean_pct"] == pytest.approx((row["mean_ms"] / row["mmc_mean_ms"] - 1) * 100)
    # the records are the ideal queue's path + 1 ms: the path column sees exactly that
    assert row["mean_ms"] - row["path_mean_ms"] == pytest.approx(1.0)
    assert row["overhead_ms"] == pytest.approx(1.0)  # latency - wait - queued
    assert row["sleep_over_ms"] == pytest.approx(0.25)
    assert row["err_net_pct"] == pytest.approx((kept["latency_s"].mean() * 1e3 - 1.0)
                                               / row["mmc_mean_ms"] * 100 - 100)
    assert row["within_10pct"] == (abs(row["err_mean_pct"]) <= 10)
    eff = theory.mmc(4, rate, 1 / (service + (row["sleep_over_ms"] + row["handoff_ms"]) / 1e3))
    assert row["mmc_eff_mean_ms"] == pytest.approx(
        (eff.mean_wait_s + service) * 1e3 + row["overhead_ms"])
    assert row["err_eff_pct"] == pytest.approx((row["mean_ms"] / row["mmc_eff_mean_ms"] - 1) * 100)


def test_handoffs_count_only_a_busy_workers_gaps():
    g = pd.DataFrame({"worker": ["w0", "w0", "w0", "w1"], "t_enqueued": [0.0, 0.5, 3.0, 0.0],
                      "t_started": [0.0, 1.2, 3.1, 0.0], "t_finished": [1.0, 2.0, 4.0, 5.0]})
    # w0's second task was queued (0.5) before the first ended (1.0): a 0.2 s gap; its third
    # arrived after the second ended, so that gap is idle time, not a hand-off
    assert bt.handoffs(g).tolist() == pytest.approx([0.2])


def test_table_rows_per_run_and_verdicts():
    a = _records(design="queue", seed=2)
    b = _records(design="broker", seed=3, c=2, rate=180.0).assign(run=1)
    b.loc[b.index[-1], "status"] = "lost"
    t = bt.table(pd.concat([a, b], ignore_index=True))
    assert t[["design", "c"]].values.tolist() == [["broker", 2], ["queue", 4]]
    assert t.loc[0, "u"] == pytest.approx(0.9) and t.loc[0, "within_10pct"] is None  # > 0.8
    assert t.loc[0, "lost"] == 1
    assert t.loc[1, "within_10pct"] in (True, False)
    text = bt.render(t)
    assert "broker" in text and "queue" in text


def test_table_past_capacity_has_no_theory():
    row = bt.table(_records(n=300, c=1, rate=150.0)).iloc[0]  # utilisation 1.5
    assert math.isnan(row["mmc_mean_ms"]) and math.isnan(row["err_mean_pct"])
    assert row["within_10pct"] is None


def test_saved_table_loads_back(tmp_path):
    t = bt.table(_records(n=500))
    path = bt.save(t, tmp_path, profile="tiny", argv=["x"], load_before=(0, 0, 0),
                   duration_s=1.0)
    back, doc = bt.load(path.parent)
    assert doc["verdict_uses"] == bt.VERDICT_USES and doc["profile"] == "tiny"
    pd.testing.assert_frame_equal(back, t, check_dtype=False)


def test_rebuild_of_a_folder_without_a_result_is_one_line(tmp_path, capsys):
    assert bt.main(["--rebuild", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "theory.json" in err and str(tmp_path) in err
    (tmp_path / "theory.json").write_text("{not json")
    assert bt.main(["--rebuild", str(tmp_path)]) == 2
    assert "not a bench.theory result" in capsys.readouterr().err
