"""The six sections of ``python -m bench``; each returns (rows, raw figures) for bench.json.

Every section takes the profile (``PROFILES[name]``) and the output directory; comlab runs go
through ``run_experiment`` into ``out/<name>/`` (records.parquet + meta.json) like any result.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

import comlab
from comlab import data
from comlab.lab.processes import ServerProcess, workdir

from . import bare, peers, reqrep
from .report import row

S1, S2, S3, S4, S5, S6 = ("1 seed", "2 zero-wait", "3 bare", "4 open loop", "5 start-up",
                          "6 peers")

STRATEGIES = ["thread-per-task", "thread-pool", "sequential"]

PROFILES = {
    "full": {
        "seed_repeats": 5, "seed_wait_scale": 1.0,
        "zero_tasks": 20_000, "zero_repeats": 3, "strategies": STRATEGIES,
        "batch_sizes": [1, 16, 256], "workers": [1, 2, 8],
        "bare_repeats": 3,
        "rates": [200, 1000, 5000], "rate_seconds": 10.0, "rate_min_tasks": 2000,
        "reqrep_n": 20_000,
        "startup_workers": [1, 8, 32], "startup_repeats": 3,
        "peer_seed_repeats": 5, "peer_zero_tasks": 20_000, "peer_repeats": 3,
        "dask_zero_tasks": 2_000, "dask": True,
    },
    "quick": {
        "seed_repeats": 3, "seed_wait_scale": 1.0,
        "zero_tasks": 5_000, "zero_repeats": 1, "strategies": STRATEGIES,
        "batch_sizes": [1, 16, 256], "workers": [1, 2, 8],
        "bare_repeats": 3,
        "rates": [200, 1000, 5000], "rate_seconds": 2.0, "rate_min_tasks": 400,
        "reqrep_n": 3_000,
        "startup_workers": [1, 8, 32], "startup_repeats": 1,
        "peer_seed_repeats": 3, "peer_zero_tasks": 5_000, "peer_repeats": 2,
        "dask_zero_tasks": 500, "dask": True,
    },
    # For tests and notebooks: seconds, not minutes; no Dask (its cluster alone takes longer).
    "tiny": {
        "seed_repeats": 2, "seed_wait_scale": 0.05,
        "zero_tasks": 1_000, "zero_repeats": 1, "strategies": ["sequential"],
        "batch_sizes": [1, 16, 256], "workers": [1, 2],
        "bare_repeats": 1,
        "rates": [200, 1000], "rate_seconds": 0.5, "rate_min_tasks": 100,
        "reqrep_n": 500,
        "startup_workers": [1, 8], "startup_repeats": 1,
        "peer_seed_repeats": 2, "peer_zero_tasks": 1_000, "peer_repeats": 1,
        "dask_zero_tasks": 500, "dask": False,
    },
}


def zero_wait_inputs(n_tasks: int) -> tuple[list, dict]:
    """n_tasks keys cycling over the 512 seed keys, and the seed map with every wait 0."""
    seed = [f"{ip}:{cmd}" for ip, cmd in data.read_commands(data.seed_path("client_data.txt"))]
    smap = data.read_server_map(data.seed_path("server_data.txt"))
    zero = {ip: {cmd: (response, 0.0) for cmd, (response, _) in cmds.items()}
            for ip, cmds in smap.items()}
    return [seed[i % len(seed)] for i in range(n_tasks)], zero


def _summary(df):
    return comlab.summarize(df)


# -- 1 seed -------------------------------------------------------------------------------------
def seed(p: dict, out: Path, log) -> tuple[list, dict]:
    df = comlab.run_experiment(batch_sizes=[16], workers=[32], repeats=p["seed_repeats"],
                               wait_scale=p["seed_wait_scale"], progress=False,
                               results_dir=out, name="seed")
    s = _summary(df)
    makespans = s["makespan_s"].tolist()
    ideal = float(s["ideal_s"].median())
    scale = p["seed_wait_scale"]
    config = (f"512 x {scale:g} s, b16, w32, thread-per-task"
              + ("" if scale == 1 else f" (wait_scale {scale:g})"))
    rows = [row(S1, config, "makespan", makespans, "s", reference="ideal", ref_values=ideal,
                target="<= 1.015 x ideal", check=lambda v, r: r <= 1.015)]
    lost = int(s["n_lost"].sum())
    if lost:
        log(f"  seed: {lost} tasks lost!")
    return rows, {"makespans_s": makespans, "ideal_s": ideal, "efficiency":
                  s["efficiency"].tolist(), "n_lost": lost}


# -- 2 zero-wait + 3 bare (interleaved per worker count, so both see the same load) -------------
def zero_wait(p: dict, out: Path, log) -> tuple[list, list, dict]:
    keys, zmap = zero_wait_inputs(p["zero_tasks"])
    comlab_tps: dict = {}   # (strategy, batch, workers) -> [tps]
    bare_tps: dict = {}     # (batch, workers) -> [tps]
    for w in p["workers"]:
        t0 = time.perf_counter()
        df = comlab.run_experiment(batch_sizes=p["batch_sizes"], workers=[w],
                                   repeats=p["zero_repeats"], strategy=p["strategies"],
                                   commands=keys, server_map=zmap, progress=False,
                                   results_dir=out, name=f"zero-wait-w{w}")
        s = _summary(df)
        if s["n_lost"].sum():
            log(f"  zero-wait w{w}: {int(s['n_lost'].sum())} tasks lost!")
        for (strat, size), g in s.groupby(["strategy", "batch_size"], observed=True):
            comlab_tps[(str(strat), int(size), w)] = g["throughput_tps"].tolist()
        t1 = time.perf_counter()
        for size, values in bare.measure(w, p["batch_sizes"], p["zero_tasks"],
                                         p["bare_repeats"]).items():
            bare_tps[(size, w)] = values
        log(f"  workers {w}: comlab {t1 - t0:.1f} s, bare {time.perf_counter() - t1:.1f} s")

    rows2, rows3 = [], []
    for strat in p["strategies"]:
        for size in p["batch_sizes"]:
            for w in p["workers"]:
                target = check = None
                if size == 1 and w == 2:
                    target, check = ">= 0.80 x bare", (lambda v, r: r >= 0.80)
                elif size == 256 and w == 2 and strat == "sequential":
                    target, check = ">= 0.40 x bare", (lambda v, r: r >= 0.40)
                rows2.append(row(S2, f"{strat}, b{size}, w{w}",
                                 "comlab", comlab_tps[(strat, size, w)], "tasks/s",
                                 reference="bare", ref_values=bare_tps[(size, w)],
                                 target=target, check=check))
    for size in p["batch_sizes"]:
        for w in p["workers"]:
            rows3.append(row(S3, f"b{size}, w{w}", "bare",
                             bare_tps[(size, w)], "tasks/s"))
    raw = {"comlab_tps": {"|".join(map(str, k)): v for k, v in comlab_tps.items()},
           "bare_tps": {"|".join(map(str, k)): v for k, v in bare_tps.items()}}
    return rows2, rows3, raw


# -- 4 open loop ----------------------------------------------------------------------------
def open_loop(p: dict, out: Path, log) -> tuple[list, dict]:
    rt = reqrep.round_trips(p["reqrep_n"])
    ref = reqrep.percentiles(rt)
    raw = {"reqrep": ref, "rates": {}}
    rows = []
    for rate in p["rates"]:
        n = max(p["rate_min_tasks"], int(rate * p["rate_seconds"]))
        keys, zmap = zero_wait_inputs(n)
        df = comlab.run_experiment(batch_sizes=[1], workers=[2], repeats=1, rate=rate,
                                   strategy="sequential", commands=keys, server_map=zmap,
                                   progress=False, results_dir=out, name=f"open-loop-{rate}")
        ok = df[df["status"] == "ok"]["overhead_s"].to_numpy()
        pct = {q: float(np.percentile(ok, q)) * 1e6 for q in (50, 99, 99.9)}
        s = _summary(df)
        achieved = float(s["throughput_tps"].iloc[0])
        raw["rates"][rate] = {"n_tasks": n, "n_ok": int(len(ok)), "overhead_us": pct,
                              "throughput_tps": achieved, "n_lost": int(s["n_lost"].sum())}
        config = f"{rate:,}/s (got {achieved:,.0f}/s), b1, w2, {n:,} tasks"
        for q, ref_q in ((50, "p50_s"), (99, "p99_s"), (99.9, "p99.9_s")):
            target = check = None
            if rate == 1000 and q == 50:
                target, check = "p50 <= 200 us", (lambda v, r: v <= 200)
            elif rate == 1000 and q == 99:
                target, check = "p99 <= 1 ms", (lambda v, r: v <= 1000)
            rows.append(row(S4, config, f"overhead p{q:g}", pct[q], "us",
                            reference=f"REQ/REP p{q:g}", ref_values=ref[ref_q] * 1e6,
                            target=target, check=check))
    rows.append(row(S4, f"raw REQ/REP, tcp loopback, {p['reqrep_n']:,} trips",
                    "round trip p50", ref["p50_s"] * 1e6, "us",
                    reference="p99", ref_values=ref["p99_s"] * 1e6))
    return rows, raw


# -- 5 start-up and per-run overhead --------------------------------------------------------
def startup(p: dict, out: Path, log) -> tuple[list, dict]:
    tmp = workdir()
    map_file = os.path.join(tmp, "map.txt")
    shutil.copy(data.seed_path("server_data.txt"), map_file)
    raw = {}
    rows = []
    try:
        for w in p["startup_workers"]:
            ready, whole = [], []
            for _ in range(p["startup_repeats"]):
                server = ServerProcess(map_file, w, tmp)
                try:
                    ready.append(float(server.info["startup_s"]))
                    whole.append(server.start_s)
                finally:
                    server.stop()
            raw[w] = {"pool_ready_s": ready, "process_start_s": whole}
            target = check = None
            if w == 32:
                target, check = "ready <= 0.5 s", (lambda v, r: v <= 0.5)
            rows.append(row(S5, f"pool of {w}",
                            "pool ready (startup_s)", ready, "s",
                            reference="whole process start", ref_values=whole,
                            target=target, check=check))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows, {"startup": raw}


def per_run_overhead(out: Path, names: list) -> tuple[list, dict]:
    """run_wall_s (meta.json) minus the run's makespan: what the lab adds per run."""
    rows, raw = [], {}
    for label, group in names:
        extra, spans = [], []
        for name in group:
            path = out / name
            meta = comlab.load_meta(path)
            s = _summary(comlab.load_results(path)).set_index("run")
            for r in meta["runs"]:
                if r["run"] in s.index:
                    span = float(s.loc[r["run"], "makespan_s"])
                    extra.append(r["run_wall_s"] - span)
                    spans.append(span)
        raw[label] = {"extra_s": extra, "makespan_s": spans}
        rows.append(row(S5, f"per run, {label} sweeps", "run_wall - makespan", extra, "s",
                        reference="makespan", ref_values=spans,
                        target="<= 0.2 s" if label == "zero-wait" else None,
                        check=lambda v, r: v <= 0.2))
    return rows, {"per_run_overhead": raw}


# -- 6 peers ---------------------------------------------------------------------------------
def peer_rows(p: dict, seed_raw: dict, zero_raw: dict, log) -> tuple[list, dict, list]:
    rows, raw, notes = [], {}, []
    wait = p["seed_wait_scale"]
    comlab_seed = seed_raw["makespans_s"]
    ahead_time = dict(target="ahead (ratio < 1)", check=lambda v, r: r < 1)
    ahead_rate = dict(target="ahead (ratio > 1)", check=lambda v, r: r > 1)

    t0 = time.perf_counter()
    tpe = peers.threads_seed(512, wait, 512, p["peer_seed_repeats"])
    raw["threads_seed_s"] = tpe
    rows.append(row(S6, "seed: ThreadPoolExecutor(512)",
                    "comlab", comlab_seed, "s", reference="peer",
                    ref_values=tpe, **ahead_time))
    ppe = peers.processes_zero(p["peer_zero_tasks"], (1, 256), 2, p["peer_repeats"])
    raw["processes_zero_tps"] = ppe
    ctps = zero_raw["comlab_tps"]
    for chunk in (1, 256):
        key = f"sequential|{chunk}|2"
        if key not in ctps:
            continue
        rows.append(row(S6, f"zero b{chunk} w2: ProcessPoolExecutor(2) chunksize {chunk}",
                        "comlab", ctps[key], "tasks/s", reference="peer",
                        ref_values=ppe[chunk], **ahead_rate))
    log(f"  concurrent.futures: {time.perf_counter() - t0:.1f} s")

    if not p["dask"]:
        notes.append("dask: skipped (profile without Dask)")
        log("  " + notes[-1])
    elif not peers.dask_available():
        notes.append(peers.DASK_SKIPPED)
        log(peers.DASK_SKIPPED)
    else:
        t0 = time.perf_counter()
        ds = peers.dask_seed(512, wait, p["peer_seed_repeats"])
        raw["dask_seed"] = ds
        rows.append(row(S6, "seed: Dask LocalCluster(4 procs x 128 threads)", "comlab",
                        comlab_seed, "s", reference="peer", ref_values=ds["makespans_s"],
                        **ahead_time))
        dz = peers.dask_zero(p["dask_zero_tasks"], 256, p["peer_repeats"])
        raw["dask_zero_tps"] = dz
        for chunk in (1, 256):
            key = f"sequential|{chunk}|2"
            if key not in ctps:
                continue
            how = "map per task" if chunk == 1 else "map over chunks of 256"
            rows.append(row(S6, f"zero b{chunk} w2: Dask LocalCluster(2 x 1), {how}",
                            "comlab", ctps[key], "tasks/s", reference="peer",
                            ref_values=dz[chunk], **ahead_rate))
        log(f"  dask: {time.perf_counter() - t0:.1f} s (cluster starts "
            f"{ds['cluster_start_s']:.1f} s + {dz['cluster_start_s']:.1f} s, not measured)")
    return rows, raw, notes
