"""comlab.sim: calibration from records, predict's columns, the model against one tiny real
sweep, and the ``comlab predict`` verb."""

import inspect
import os

import numpy as np
import pandas as pd
import pytest

import comlab
import comlab.sim as sim
from comlab.cli import main
from comlab.lab import stability
from comlab.lab.records import summarize

COMMANDS = [f"10.0.0.{i}:foo" for i in range(64)]
MAP = {f"10.0.0.{i}": {"foo": (i, 0.01)} for i in range(64)}
SUMMARY = ["makespan_s", "throughput_tps", "latency_p50_s", "latency_p99_s", "ideal_s",
           "efficiency", "n_tasks", "n_ok"]


def _cal(**kw) -> sim.Calibration:
    """A hand-made calibration: round figures, so what calibrate recovers can be checked."""
    L = sim.Linear
    d = dict(cpus=2, hop_s=100e-6, client_send=L(5e-6, 1e-6), client_recv=L(20e-6, 1e-6),
             server_intake=L(10e-6, 1e-6), server_dispatch=L(10e-6, 1e-6), server_done_s=10e-6,
             worker_recv=L(10e-6, 1e-6), handoff_s=10e-6, task_end_s=5e-6,
             thread_wake_s=50e-6, overshoot_s=np.full(8, 100e-6), worker_result=L(20e-6, 1e-6),
             result_wake_s=20e-6, done_send_s=5e-6, queue_take_s=10e-6, inline_task_s=2e-6,
             workload_s=np.full(64, 0.01), source={"result": "hand-made"})
    d.update(kw)
    return sim.Calibration(**d)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    comlab.run_experiment(batch_sizes=[1, 8], workers=[1, 4], repeats=1, commands=COMMANDS,
                          server_map=MAP, progress=False, results_dir=out, name="tiny")
    return out / "tiny"


def test_predict_returns_a_sweeps_summary_columns():
    pred = sim.predict(_cal(), sim.sweep(batch_size=[1, 8], workers=[2, 10], hosts=[0, 2]))
    assert len(pred) == 8
    for c in SUMMARY + ["server_utilisation", "client_utilisation", "sim_wall_s", "hosts"]:
        assert c in pred, c
    assert (pred["n_ok"] == 64).all()
    assert (pred["experiment"] == "hand-made (predicted)").all()
    # 64 tasks of 10 ms: never faster than the ideal, and more workers never slower here
    assert (pred["makespan_s"] >= pred["ideal_s"]).all()
    by = pred[pred["hosts"] == 0].set_index(["batch_size", "workers"])["makespan_s"]
    assert by[(1, 10)] < by[(1, 2)]


def test_predicted_records_are_in_the_schema_and_ordered():
    _, rec = sim.predict(_cal(), [dict(batch_size=4, workers=3)], records=True)
    assert len(rec) == 64 and (rec["status"] == "ok").all()
    stamps = rec[["t_sent", "t_server_in", "t_enqueued", "t_started", "t_finished",
                  "t_received"]].to_numpy()
    assert np.isfinite(stamps).all()
    assert (np.diff(stamps, axis=1) >= -1e-12).all(), "stamps out of order"
    # the first batch meets an idle pipeline: the server reads it one hop after it was sent
    first = rec[rec["batch_id"] == 0].iloc[0]
    assert first["t_server_in"] - first["t_sent"] == pytest.approx(100e-6 + 5e-6 + 4e-6, 1e-6)


def test_calibration_recovers_the_costs_of_records_made_with_known_costs():
    cal = _cal()
    _, rec = sim.predict(cal, sim.sweep(batch_size=[1, 8], workers=[1, 4]), records=True)
    got = sim.calibrate(rec)
    assert got.hop_s == pytest.approx(cal.hop_s + cal.client_send.at(1), rel=0.1)
    # the stamps see a send as part of the hop, and a task's end as part of its overshoot
    assert np.median(got.overshoot_s) == pytest.approx(100e-6 + 5e-6, rel=0.02)
    assert got.server_intake.at(8) == pytest.approx(cal.server_intake.at(8), rel=0.2)
    assert len(got.workload_s) == 64
    again = sim.Calibration.from_dict(got.to_dict())
    assert again.table().equals(got.table())


def test_every_dispatch_design_finishes_and_strict_broker_pays_its_round_trips():
    cal = _cal(workload_s=np.full(64, 0.001))
    pred = sim.predict(cal, sim.sweep(batch_size=1, workers=4, tasks=400,
                                      dispatch=["broker", "broker:0", "queue"]))
    assert (pred["n_ok"] == 400).all()
    t = pred.set_index("dispatch")["makespan_s"]
    assert t["broker:0"] > t["broker"]  # a DONE -> WORK round trip per batch, no prefetch


def test_predict_rejects_what_the_model_cannot_run():
    with pytest.raises(ValueError, match="hosts"):
        sim.predict(_cal(), [dict(batch_size=1, workers=2, hosts=3)])
    with pytest.raises(ValueError, match="needs configs"):
        sim.predict(_cal())


@pytest.mark.timeout(120)
def test_a_sweep_predicts_each_of_its_configurations(tiny):
    """What predict guarantees whatever the machine's load: one row per measured configuration,
    a makespan no shorter than the ideal one, and a summary compare takes."""
    pred = sim.predict(tiny).set_index(["batch_size", "workers"])
    measured = summarize(comlab.load(tiny).records).set_index(["batch_size", "workers"])
    assert sorted(pred.index) == sorted(measured.index) and len(pred) == 4
    assert (pred["makespan_s"] >= pred["ideal_s"]).all() and np.isfinite(pred["makespan_s"]).all()
    assert len(comlab.compare(tiny, sim.predict(tiny))) == 4


@pytest.mark.validation
@pytest.mark.timeout(120)
def test_prediction_is_close_to_a_tiny_measured_sweep(tiny):
    """Its own calibration predicts the sweep it came from: makespan within 25 % for each
    configuration (the docs' table holds the 10 % goal on the default sweep; a 64-task run on a
    shared, noisy machine is too short to hold that). How close a model comes depends on the
    machine's load: a validation (``-m validation``, run by .ci/run), not in the default run,
    and one measured on a busy machine (comlab's own warning: over 0.5 per CPU while any of
    its runs was measured) is no evidence either way: it skips, saying so."""
    result = comlab.load(tiny)
    cpus = os.cpu_count() or 1
    loads = [x for r in result.meta["runs"] for k in ("loadavg_start", "loadavg_end")
             for x in (r.get(k) or [0.0])[:1]]
    if max(loads) > stability.BUSY_LOAD_PER_CPU * cpus:
        pytest.skip(f"the machine was busy while the sweep was measured (1-min load up to "
                    f"{max(loads):g} on {cpus} CPUs): accuracy is checked on a quiet machine")
    measured = summarize(result.records).set_index(["batch_size", "workers"])
    pred = sim.predict(tiny).set_index(["batch_size", "workers"])
    err = pred["makespan_s"] / measured.loc[pred.index, "makespan_s"] - 1
    assert (err.abs() < 0.25).all(), err.to_dict()


@pytest.mark.timeout(120)
def test_cli_predict(tiny, tmp_path, capsys):
    assert main(["predict", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "makespan_error" in out and "p99_error" in out
    csv = tmp_path / "p.csv"
    assert main(["predict", str(tiny), "--workers", "40", "--hosts", "4", "--tasks", "200",
                 "--csv", str(csv)]) == 0
    assert "makespan_s" in capsys.readouterr().out and csv.stat().st_size > 0
    assert main(["predict", str(tmp_path / "none")]) == 2
    assert "not a saved comlab result" in capsys.readouterr().err
    assert main(["predict", str(tiny), "--workers", "2", "--hosts", "3"]) == 2
    assert "cannot fill 3 hosts" in capsys.readouterr().err
    assert main(["predict", str(tiny), "--tasks", "0"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tiny), "--workers", "x"])
    assert exc.value.code == 2


# -- predictions that know their limits (issue 25) ----------------------------------------------
def _two_strategies():
    """Records of one sweep run with two strategies whose tasks overshoot very differently."""
    grid = sim.sweep(batch_size=[1, 8], workers=[1, 4])
    _, a = sim.predict(_cal(), [dict(c, strategy="thread-per-task") for c in grid],
                       records=True)
    _, b = sim.predict(_cal(overshoot_s=np.full(8, 5e-3)),
                       [dict(c, strategy="sequential") for c in grid], records=True)
    b["run"] += a["run"].max() + 1
    rec = pd.concat([a, b], ignore_index=True)
    rec["strategy"] = rec["strategy"].astype("category")
    return rec


def test_each_strategy_is_calibrated_apart():
    rec = _two_strategies()
    cals = sim.calibrate_each(rec)
    assert set(cals) == {("thread-per-task", "broker"), ("sequential", "broker")}
    with pytest.raises(ValueError, match="calibrate_each"):
        sim.calibrate(rec)
    measured = summarize(rec).set_index(["strategy", "batch_size", "workers"])["makespan_s"]
    pred = sim.predict(rec).set_index(["strategy", "batch_size", "workers"])["makespan_s"]
    err = pred / measured.loc[pred.index] - 1
    assert (err.abs() < 0.05).all(), err.to_dict()
    assert not sim.predict(rec)["extrapolated"].any()


def test_a_strategy_or_design_never_measured_is_refused_and_outside_is_marked():
    rec = _two_strategies()
    with pytest.raises(ValueError, match="no calibration for strategy cpu-bound"):
        sim.predict(rec, [dict(batch_size=1, workers=1, strategy="cpu-bound")])
    with pytest.raises(ValueError, match="dispatch queue"):
        sim.predict(rec, [dict(batch_size=1, workers=1, dispatch="queue")])
    pred = sim.predict(rec, [dict(batch_size=4, workers=2), dict(batch_size=64, workers=2),
                             dict(batch_size=1, workers=100, hosts=10),
                             dict(batch_size=1, workers=2, dispatch="broker:0")])
    assert pred["extrapolated"].tolist() == [False, True, True, True]
    assert "batch size 64 (measured 1-8)" in pred["outside"][1]
    assert "workers 100 (measured 1-4)" in pred["outside"][2] and "hosts 10" in pred["outside"][2]
    assert "dispatch broker:0" in pred["outside"][3]
    assert pred.attrs["note"].startswith("3 of 4 configuration(s)")


def test_bottleneck_is_read_from_the_predicted_utilisations():
    pred = pd.DataFrame({"batch_size": [1, 16, 64], "workers": 1000,
                         "client_utilisation": [0.36, 0.95, 0.2],
                         "server_utilisation": [0.99, 0.5, 0.3]})
    lines = sim.bottleneck(pred)
    assert lines[0] == "batch size 1: the server limits it (99% busy; client 36%)"
    assert lines[1].startswith("batch size 16: the client limits it")
    assert "the workers do" in lines[2]


def test_cli_predict_refuses_an_unmeasured_strategy_in_one_line(tiny, capsys):
    assert main(["predict", str(tiny), "--strategy", "sequential"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no calibration for strategy sequential" in err[0]
    assert main(["predict", str(tiny), "--workers", "40"]) == 0
    captured = capsys.readouterr()
    assert "True" in captured.out and "note: 2 of 2 configuration(s)" in captured.err


# -- the workloads of issue 27: arrival processes and drawn waits --------------------------------
def test_an_open_loop_run_keeps_its_schedule_drawn_from_the_recorded_seed():
    from comlab import arrivals
    cfg = dict(batch_size=2, workers=4, tasks=200, rate=400.0, arrivals="poisson")
    pred, rec = sim.predict(_cal(), [cfg], seed=7, records=True)
    assert pred["seed"].tolist() == [7] and pred["arrivals"].tolist() == ["poisson"]
    assert (rec["rate"] == 400.0).all()
    due = rec.groupby("batch_id")["t_intended"].first().to_numpy()
    np.testing.assert_allclose(due, arrivals.parse("poisson").offsets(100, 2, 400.0, seed=7))
    # the client sends each batch when due, never before; latency counts from then
    assert (rec["t_sent"] >= rec["t_intended"] - 1e-12).all()
    assert (rec["t_sent"] - rec["t_intended"]).max() < 1e-3
    np.testing.assert_allclose(rec["latency_s"], rec["t_received"] - rec["t_intended"])
    assert pred["makespan_s"].iloc[0] >= due[-1]
    _, again = sim.predict(_cal(), [cfg], seed=7, records=True)
    np.testing.assert_array_equal(again["t_intended"], rec["t_intended"])
    _, other = sim.predict(_cal(), [cfg], seed=8, records=True)
    assert not np.array_equal(other["t_intended"], rec["t_intended"])


def test_an_open_loop_above_capacity_queues():
    """2 workers of 10 ms tasks serve 200 tasks/s: sent at 100/s, a task waits for no other;
    at 400/s, latency grows with the backlog (counted from the schedule)."""
    rows = [dict(batch_size=1, workers=2, tasks=200, rate=r) for r in (100.0, 400.0)]
    under, over = sim.predict(_cal(), rows)["latency_p99_s"]
    assert under < 0.012
    assert over > 0.4  # the last tasks are due at 0.5 s and served near 1 s
    closed = sim.predict(_cal(), [dict(batch_size=1, workers=2, tasks=200)], records=True)[1]
    assert "t_intended" not in closed and "rate" not in closed


def test_a_trace_is_replayed_and_waits_are_drawn_from_a_distribution(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("offset_s,task\n0,10.0.0.1:foo\n0.01,10.0.0.2:foo\n0.5,10.0.0.3:foo\n")
    _, rec = sim.predict(_cal(), [dict(batch_size=2, workers=2, arrivals=f"trace:{trace}")],
                         records=True)
    assert len(rec) == 3  # the trace's tasks
    rec = rec.sort_values("task_id")
    np.testing.assert_allclose(rec["t_intended"], [0, 0.01, 0.5])  # each task's own time
    assert rec["t_sent"].iloc[0] >= 0.01  # its batch leaves when its last task is due
    cfg = dict(batch_size=8, workers=4, tasks=4000, wait="lognormal", wait_mean_s=0.002)
    _, rec = sim.predict(_cal(), [cfg], records=True, seed=3)
    w = rec.sort_values("task_id")["wait_s"].to_numpy()
    assert w.mean() == pytest.approx(0.002, rel=0.1) and np.quantile(w, 0.99) > 4 * np.median(w)
    _, same = sim.predict(_cal(), [cfg], records=True, seed=3)
    np.testing.assert_array_equal(same.sort_values("task_id")["wait_s"], w)


@pytest.mark.parametrize("cfg,match", [
    (dict(arrivals="poisson"), "needs a rate"),
    (dict(arrivals="sometimes", rate=10.0), "expected one of"),
    (dict(rate=-1.0), "rate must be"),
    (dict(wait="lognormal:-1"), "lognormal:-1"),
    (dict(arrivals="ramp:10,100,1", rate=10.0), "sets its own rate"),
    (dict(wait="exponential", wait_mean_s="1"), "wait_mean_s must be"),
])
def test_a_bad_workload_is_one_valueerror(cfg, match):
    with pytest.raises(ValueError, match=match):
        sim.predict(_cal(), [dict(batch_size=1, workers=1, **cfg)])


def test_an_open_loop_result_is_predicted_open_loop():
    """configs_of reads a measured sweep's rate: its prediction keeps the same schedule kind,
    and an open-loop-only calibration is not 'outside' for an open-loop configuration."""
    _, rec = sim.predict(_cal(), sim.sweep(batch_size=[1, 4], workers=[2], tasks=100,
                                           rate=300.0, arrivals="poisson"), records=True)
    pred = sim.predict(rec)
    assert (pred["rate"] == 300.0).all() and not pred["extrapolated"].any()
    closed = sim.predict(rec, [dict(batch_size=1, workers=2)])
    assert "closed loop" in closed["outside"][0]


def test_an_open_loop_calibration_does_not_read_the_schedule_as_send_cost():
    """Batches sent 0.5 ms apart on average by the schedule: the client's send cost is what
    it takes when it sends back to back (a few us here), not the schedule's gaps."""
    _, rec = sim.predict(_cal(), [dict(batch_size=1, workers=2, tasks=400, rate=2000.0,
                                       arrivals="poisson")], records=True)
    got = sim.calibrate(rec)
    assert got.client_send.at(1) < 50e-6, got.client_send


def test_a_measured_runs_recorded_seed_replays_its_schedule():
    """meta.json's arrivals_seed per run (the lab's): the prediction draws that run's very
    schedule, one configuration per seed; a ramp sets its own rate."""
    import types
    from comlab import arrivals
    _, rec = sim.predict(_cal(), [dict(batch_size=2, workers=2, rate=300.0,
                                       arrivals="poisson")], repeats=2, records=True)
    result = types.SimpleNamespace(records=rec, meta={"name": "m", "runs": [
        {"run": 0, "arrivals_seed": 1234}, {"run": 1, "arrivals_seed": 99}]})
    pred, got = sim.predict(_cal(), measured=result, records=True)
    assert sorted(pred["arrivals_seed"]) == [99, 1234]
    for run, seed in ((0, 1234), (1, 99)):
        due = got[got["run"] == run].groupby("batch_id")["t_intended"].first()
        np.testing.assert_allclose(due, arrivals.parse("poisson").offsets(32, 2, 300.0, seed))
    ramp = sim.predict(_cal(), [dict(batch_size=1, workers=2, tasks=50,
                                     arrivals="ramp:10,100,0.5")], records=True)[1]
    np.testing.assert_allclose(ramp["t_intended"], arrivals.parse("ramp:10,100,0.5").offsets(
        50, 1, None))


def test_cli_predict_open_loop(tiny, capsys, tmp_path):
    assert main(["predict", str(tiny), "--workers", "2", "--rate", "100,none", "--arrivals",
                 "poisson", "--wait", "exponential", "--seed", "5", "--tasks", "100"]) == 0
    assert "rate" in capsys.readouterr().out
    assert main(["predict", str(tiny), "--arrivals", "poisson", "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a rate" in err[0]
    assert main(["predict", str(tiny), "--wait-mean", "0.1", "--workers", "2"]) == 2
    assert "--wait-mean needs --wait" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("0,10.0.0.1:foo\nsoon,10.0.0.2:foo\n")
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tiny), "--arrivals", f"trace:{bad}"])
    assert exc.value.code == 2 and f"{bad}:2" in capsys.readouterr().err


@pytest.mark.timeout(180)
@pytest.mark.skipif("arrivals" not in inspect.signature(comlab.run_experiment).parameters,
                    reason="run_experiment does not take arrivals= yet: the lab's Poisson "
                           "client (issue 27 item 2) is not in this tree")
def test_the_validation_table_has_poisson_open_loop_rows(tiny, tmp_path, capsys):
    """Poisson arrivals measured at a small scale (2 workers of 10 ms tasks, utilisation 0.5
    and 0.8), predicted from the closed-loop sweep's calibration on each run's own schedule
    (its recorded seed): a row per rate, the makespan within 25 % as for the closed loop."""
    from comlab.sim.cli import validation
    comlab.run_experiment(batch_sizes=[1], workers=[2], repeats=1, rate=[100.0, 160.0],
                          arrivals="poisson", commands=COMMANDS * 2, server_map=MAP,
                          progress=False, results_dir=tmp_path, name="poisson")
    measured = tmp_path / "poisson"
    pred = sim.predict(sim.calibrate_each(tiny), measured=measured)
    assert pred["arrivals_seed"].notna().all()
    table = validation(measured, pred)
    assert sorted(table["rate"]) == [100.0, 160.0] and (table["arrivals"] == "poisson").all()
    assert (table["makespan_error"].abs() < 0.25).all(), table.to_dict("records")
    assert main(["predict", str(measured), "--calibration", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "poisson" in out and "makespan_error" in out
