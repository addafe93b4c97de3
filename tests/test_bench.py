"""Smoke test of bench/: the modules import, the bare pipeline, the bare broker and the REQ/REP
probe run on tiny sizes and give positive numbers, the table renders. The bench itself is never
run here (notebook 05 runs its tiny profile)."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a directory of the repo, not part of the package
    sys.path.insert(0, str(ROOT))

from bench import __main__ as bench_main  # noqa: E402
from bench import bare, bare_broker, peers, report, reqrep, runner, sections  # noqa: E402


@pytest.mark.timeout(60)
def test_bare_pipeline_moves_every_task():
    with bare.BarePipeline(workers=2) as pipeline:
        for size in (1, 16):
            out = pipeline.run(n_tasks=300, batch_size=size, timeout=30)
            assert out["n_tasks"] == 300
            assert out["makespan_s"] > 0
            assert out["throughput_tps"] > 0
    tps = bare.measure(1, [4], n_tasks=100)
    assert list(tps) == [4] and tps[4][0] > 0
    assert not pipeline.procs  # closed: server and workers joined


@pytest.mark.timeout(60)
@pytest.mark.parametrize("prefetch", [0, 2])
def test_bare_broker_moves_every_task(prefetch):
    with bare_broker.BareBroker(workers=2, prefetch=prefetch) as broker:
        procs = list(broker.procs)
        for size in (1, 7):  # 7: the last batch is short
            out = broker.run(n_tasks=300, batch_size=size, timeout=30)
            assert out["n_tasks"] == 300 and out["throughput_tps"] > 0
    assert all(not p.is_alive() for p in procs)
    with pytest.raises(ValueError):
        bare_broker.BareBroker(workers=1, prefetch=-1)


def test_frame_queue_hands_frames_over_as_they_are():
    import multiprocessing
    q = bare.FrameQueue(multiprocessing.get_context("spawn"))
    for frame in (b"\x93\x01\x91\x00\x91\xa1k", bare.STOP):
        q.put(frame)
    assert q.get() == b"\x93\x01\x91\x00\x91\xa1k" and q.get() == bare.STOP


def test_idle_gaps_are_per_worker_and_per_run():
    import pandas as pd
    df = pd.DataFrame({"run": [0, 0, 0, 1], "worker": ["w0", "w1", "w0", "w0"],
                       "status": ["ok"] * 4, "t_started": [0.0, 0.5, 2.0, 0.0],
                       "t_finished": [1.0, 1.5, 3.0, 1.0]})
    assert sections.idle_gaps(df).tolist() == [1.0]  # w0 in run 0: finished 1.0, next 2.0


def test_thread_hand_off_reference_is_at_least_the_sleeps():
    assert sections.thread_hand_off(5, 0.002) >= 5 * 0.002


@pytest.mark.timeout(60)
def test_reqrep_round_trips_are_positive():
    samples = reqrep.round_trips(50, warmup=5)
    assert samples.shape == (50,)
    assert (samples > 0).all() and np.isfinite(samples).all()
    pct = reqrep.percentiles(samples)
    assert 0 < pct["p50_s"] <= pct["p99_s"] <= pct["p99.9_s"]


def test_peer_threads_seed_tiny():
    makespans = peers.threads_seed(n_tasks=8, wait=0.01, threads=8, repeats=1)
    assert len(makespans) == 1 and makespans[0] >= 0.01


def test_report_table_and_targets():
    rows = [report.row("1 seed", "cfg", "makespan", [1.02, 1.01, 1.03], "s",
                       reference="ideal", ref_values=1.0, target="<= 1.015 x ideal",
                       check=lambda v, r: r <= 1.015),
            report.row("3 bare", "b1, w1", "bare", 1234.0, "tasks/s")]
    assert rows[0]["value"] == pytest.approx(1.02)
    assert rows[0]["ratio"] == pytest.approx(1.02)
    assert rows[0]["met"] is False and rows[1]["met"] is None
    assert rows[0]["spread"]["n"] == 3 and rows[0]["spread"]["min"] == pytest.approx(1.01)
    text = report.table(rows)
    assert "MISSED" in text and "1,234/s" in text
    assert report.targets(rows) == [("1 seed / cfg: <= 1.015 x ideal", False)]
    assert math.isnan(report.spread([])["median"])


def test_profiles_and_command_line():
    assert set(sections.PROFILES) == {"full", "quick", "tiny"}
    for p in sections.PROFILES.values():
        assert {"zero_tasks", "rates", "startup_workers", "dask", "closed_tasks"} <= set(p)
    keys, zmap = sections.zero_wait_inputs(600)
    assert len(keys) == 600
    ip, _, cmd = keys[599].partition(":")
    assert zmap[ip][cmd] == (1, 0.0)
    with pytest.raises(SystemExit) as exc:
        bench_main.main(["--help"])
    assert exc.value.code == 0
    assert callable(runner.run)
