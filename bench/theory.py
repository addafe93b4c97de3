"""``python -m bench.theory [--quick] [--out DIR]``: comlab measured against queueing theory.

The seed's design (``dispatch="queue"``: one queue shared by the server and c workers, each
taking the next task) run as M/M/c: Poisson arrivals (batch size 1), exponential service times
(a generated map of 16,384 keys with exponential waits of mean 10 ms, each task a key drawn
uniformly, so service times are i.i.d. in effect), ``sequential`` workers, at utilisation 0.3,
0.5, 0.7, 0.8 for c = 2, 4, 8; then the same for the ``broker`` design (adaptive: a batch goes
one ahead to the worker expected to free first) and ``broker:3`` (each worker holds up to 3
batches beyond the one it runs): not M/M/c, and the table shows by how much.

Per run, beside the measured mean and p99 sojourn (``latency_s``: from the task's intended
send time to its result at the client), three references:

* ``comlab.theory.mmc`` at the nominal rates (the rate asked for, mean service 10 ms);
* ``mmc`` at the rates the run drew: its realised arrival rate ((n - 1) / the span of the
  intended send times) and its realised mean service time (the mean ``wait_s``). **The verdict
  (within 10 % on the mean) uses this one**;
* the same sample path through an ideal c-server first-come-first-served queue (the run's own
  arrival times and service times, no overhead): what is left between it and the measurement
  is what the system adds, free of sampling noise.

``overhead_ms`` is the per-task overhead measured from the stamps: latency - wait_s - the time
queued at the server (t_started - t_enqueued): the client's send lag, the hops there and
back, the look-up and the sleep's overshoot (``sleep_over_ms``, which also lengthens every
service, so it adds queueing too); ``err_net_pct`` holds the mean less that overhead against
theory: what is left is the queue itself. A busy worker also spends ``handoff_ms`` between
one task's end and the next one's start (sending the result, taking the next task): the queue
sees service times longer by that and by the overshoot, so utilisation is a few % higher than
drawn, which at 0.7-0.8 moves the wait by 10-20 %; ``mmc_eff_mean_ms`` is theory at that
effective service time plus the overhead (``err_eff_pct``: what neither explains). The first 5 % of each run's tasks (by intended
send time) are left out of every figure: the queue starts empty.

Prints the table and saves ``theory.json`` (the table, the profile, load averages, the
command), ``table.txt`` and one comlab result per run (``<design>-c<c>-u<utilisation>/``) in
``results/theory-<timestamp>/`` (or ``--out``; ``broker:3``'s folders are ``broker3-...``).
``--quick`` (c = 2, 8; utilisation 0.5, 0.8; 2.5 s a run) about a minute, the full run (8 s a
run, 36 runs) about 6 minutes on 2 cores; ``tiny`` (Python only: ``run("tiny", ...)``) is the
notebook's seconds.
"""

from __future__ import annotations

import argparse
import datetime
import heapq
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import comlab
from comlab import data, theory

SERVICE_MEAN_S = 0.01
WARMUP_SHARE = 0.05
TARGET_PCT = 10.0  # issue 27: within 10 % on the mean at utilisation <= 0.8
TARGET_MAX_UTILISATION = 0.8
VERDICT_USES = "mmc at the realised rates (arrival rate and mean service time the run drew)"

DESIGNS = ["queue", "broker", "broker:3"]
PROFILES = {
    "full": {"designs": DESIGNS, "workers": [2, 4, 8],
             "utilisations": [0.3, 0.5, 0.7, 0.8], "seconds": 8.0},
    "quick": {"designs": DESIGNS, "workers": [2, 8],
              "utilisations": [0.5, 0.8], "seconds": 2.5},
    "tiny": {"designs": DESIGNS, "workers": [2],
             "utilisations": [0.5], "seconds": 1.0},
}

COLUMNS = {  # column -> what it says (theory.json carries this legend)
    "design": "dispatch design (queue: M/M/c; broker: adaptive prefetch; broker:3: 3 ahead)",
    "c": "workers (servers)", "u": "nominal utilisation rate x 10 ms / c",
    "n": "tasks measured (after the warm-up share)", "lost": "tasks not answered",
    "rate": "realised arrival rate, tasks/s", "service_ms": "realised mean service time",
    "u_real": "realised utilisation",
    "mean_ms": "measured mean sojourn", "p99_ms": "measured p99 sojourn",
    "mmc_nominal_mean_ms": "M/M/c mean at the nominal rates",
    "mmc_mean_ms": "M/M/c mean at the realised rates",
    "mmc_p99_ms": "M/M/c p99 at the realised rates",
    "path_mean_ms": "ideal c-server FCFS queue, same arrivals and service times: mean",
    "path_p99_ms": "the same: p99",
    "err_mean_pct": "measured mean vs mmc_mean_ms, %", "err_p99_pct": "measured p99 vs mmc_p99_ms, %",
    "err_path_pct": "measured mean vs path_mean_ms, %",
    "overhead_ms": "mean of latency - wait_s - (t_started - t_enqueued)",
    "sleep_over_ms": "of which the sleep's overshoot: mean of t_finished - t_started - wait_s",
    "err_net_pct": "measured mean - overhead_ms vs mmc_mean_ms, %",
    "handoff_ms": "a busy worker's gap from one task's end to its next task's start",
    "mmc_eff_mean_ms": "M/M/c wait at the effective service time (service + overshoot + "
                       "hand-off) + service + overhead_ms",
    "err_eff_pct": "measured mean vs mmc_eff_mean_ms, %",
    "within_10pct": "|err_mean_pct| <= 10 (utilisation <= 0.8 only)",
}


def fcfs_sojourns(arrivals, services, servers: int) -> np.ndarray:
    """Each task's sojourn in an ideal ``servers``-server first-come-first-served queue with
    these arrival times (in order) and service times: the sample path theory averages over."""
    free = [0.0] * servers  # when each server is next free (a heap)
    out = np.empty(len(arrivals))
    for i, (a, s) in enumerate(zip(arrivals, services)):
        start = max(a, heapq.heappop(free))
        heapq.heappush(free, start + s)
        out[i] = start + s - a
    return out


def handoffs(g: pd.DataFrame) -> np.ndarray:
    """Per worker, the gaps between a task's end and the next task's start where the next one
    was already queued (t_enqueued before that end): a busy worker's cost between tasks, which
    lengthens every service the queue sees though no task's own stamps hold it."""
    out = []
    for _, w in g.sort_values("t_started").groupby("worker", observed=True):
        end, start = w["t_finished"].to_numpy(), w["t_started"].to_numpy()
        waiting = w["t_enqueued"].to_numpy()[1:] < end[:-1]
        out.append((start[1:] - end[:-1])[waiting])
    return np.concatenate(out) if out else np.empty(0)


def _pct(measured: float, reference: float) -> float:
    return (measured / reference - 1) * 100 if reference and np.isfinite(reference) else np.nan


def _mmc(c: int, rate: float, service_s: float):
    try:
        return theory.mmc(c, rate, 1 / service_s)
    except ValueError:  # utilisation >= 1: no steady state
        return None


def run_row(g: pd.DataFrame, service_mean_s: float = SERVICE_MEAN_S,
            warmup: float = WARMUP_SHARE) -> dict:
    """One run's records -> its row of the table (see COLUMNS)."""
    g = g.sort_values(["t_intended", "task_id"])
    c, rate_nominal = int(g["workers"].iloc[0]), float(g["rate"].iloc[0])
    span = g["t_intended"].iloc[-1] - g["t_intended"].iloc[0]
    rate = (len(g) - 1) / span
    service = float(g["wait_s"].mean())
    path = fcfs_sojourns(g["t_intended"].to_numpy(), g["wait_s"].to_numpy(), c)
    keep = np.arange(len(g)) >= int(len(g) * warmup)
    kept, path = g[keep], path[keep]
    ok = kept[kept["status"] == "ok"]
    lat = ok["latency_s"].to_numpy()
    mean, p99 = lat.mean(), np.quantile(lat, 0.99)
    nominal, real = _mmc(c, rate_nominal, service_mean_s), _mmc(c, rate, service)
    u = rate_nominal * service_mean_s / c
    overhead = ok["latency_s"] - ok["wait_s"] - (ok["t_started"] - ok["t_enqueued"])
    row = {
        "design": str(g["dispatch"].iloc[0]), "c": c, "u": round(u, 3), "n": len(ok),
        "lost": int((kept["status"] != "ok").sum()), "rate": rate,
        "service_ms": service * 1e3, "u_real": rate * service / c,
        "mean_ms": mean * 1e3, "p99_ms": p99 * 1e3,
        "mmc_nominal_mean_ms": nominal.mean_sojourn_s * 1e3 if nominal else np.nan,
        "mmc_mean_ms": real.mean_sojourn_s * 1e3 if real else np.nan,
        "mmc_p99_ms": real.p99_sojourn_s * 1e3 if real else np.nan,
        "path_mean_ms": path.mean() * 1e3, "path_p99_ms": np.quantile(path, 0.99) * 1e3,
        "overhead_ms": overhead.mean() * 1e3,
        "sleep_over_ms": (ok["t_finished"] - ok["t_started"] - ok["wait_s"]).mean() * 1e3,
    }
    gaps = handoffs(g[g["status"] == "ok"])
    row["handoff_ms"] = gaps.mean() * 1e3 if len(gaps) else 0.0
    eff = _mmc(c, rate, service + (row["sleep_over_ms"] + row["handoff_ms"]) / 1e3)
    row["mmc_eff_mean_ms"] = ((eff.mean_wait_s + service) * 1e3 + row["overhead_ms"]
                              if eff else np.nan)
    row["err_eff_pct"] = _pct(row["mean_ms"], row["mmc_eff_mean_ms"])
    row["err_mean_pct"] = _pct(row["mean_ms"], row["mmc_mean_ms"])
    row["err_p99_pct"] = _pct(row["p99_ms"], row["mmc_p99_ms"])
    row["err_net_pct"] = _pct(row["mean_ms"] - row["overhead_ms"], row["mmc_mean_ms"])
    row["err_path_pct"] = _pct(row["mean_ms"], row["path_mean_ms"])
    row["within_10pct"] = (bool(abs(row["err_mean_pct"]) <= TARGET_PCT)
                           if u <= TARGET_MAX_UTILISATION + 1e-9 else None)
    return {k: row[k] for k in COLUMNS}


def table(records: pd.DataFrame, service_mean_s: float = SERVICE_MEAN_S,
          warmup: float = WARMUP_SHARE) -> pd.DataFrame:
    """Open-loop batch-1 records (one or more runs) -> one row per run, sorted."""
    rows = [run_row(g, service_mean_s, warmup)
            for _, g in records.groupby(["experiment", "run"], observed=True)]
    return pd.DataFrame(rows, columns=list(COLUMNS)).sort_values(
        ["design", "c", "u"], ignore_index=True)


def workload(folder, seed: int = 27):
    """A map of 16,384 keys with exponential waits of mean 10 ms (comlab.generate_data)."""
    client, server = comlab.generate_data(folder, hosts=4096, commands=("a", "b", "c", "d"),
                                          network="10.0.0.0/16", wait="exponential",
                                          wait_mean=SERVICE_MEAN_S, seed=seed)
    keys = [f"{ip}:{cmd}" for ip, cmd in data.read_commands(client)]
    return keys, data.read_server_map(server)


def measure(profile: str = "quick", out=None, log=print) -> pd.DataFrame:
    """Run the profile's points into ``out`` (one comlab result each); return the table."""
    p = PROFILES[profile]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="comlab-theory-") as tmp:
        keys, smap = workload(tmp)
    rng = np.random.default_rng(27)
    frames = []
    for c in p["workers"]:
        for u in p["utilisations"]:
            rate = u * c / SERVICE_MEAN_S
            n = max(50, int(rate * p["seconds"]))
            commands = [keys[i] for i in rng.integers(0, len(keys), n)]
            for design in p["designs"]:
                t0 = time.perf_counter()
                df = comlab.run_experiment(
                    batch_sizes=[1], workers=[c], repeats=1, commands=commands,
                    server_map=smap, strategy="sequential", dispatch=design, rate=rate,
                    arrivals="poisson", progress=False, results_dir=out,
                    name=f"{design.replace(':', '')}-c{c}-u{u:g}")
                frames.append(df)
                log(f"  {design} c={c} u={u:g}: {n} tasks at {rate:g}/s, "
                    f"{time.perf_counter() - t0:.1f} s")
    return table(pd.concat(frames, ignore_index=True))


def render(t: pd.DataFrame) -> str:
    """The table as text, times in ms, errors in %."""
    shown = t.copy()
    shown["within_10pct"] = shown["within_10pct"].map({True: "yes", False: "NO", None: "-"})
    return shown.to_string(index=False, float_format=lambda v: f"{v:.2f}")


def save(t: pd.DataFrame, out, *, profile: str, argv, load_before, duration_s: float) -> Path:
    """theory.json (what the notebook loads) and table.txt in ``out``."""
    out = Path(out)
    doc = {"profile": profile, "date": datetime.datetime.now(datetime.timezone.utc)
           .isoformat(timespec="seconds"), "command": " ".join(argv),
           "duration_s": round(duration_s, 1), "cpus": os.cpu_count(),
           "load_average_before": [round(x, 2) for x in load_before],
           "load_average_after": [round(x, 2) for x in os.getloadavg()],
           "service_mean_s": SERVICE_MEAN_S, "warmup_share": WARMUP_SHARE,
           "verdict_uses": VERDICT_USES, "columns": COLUMNS,
           "rows": json.loads(t.to_json(orient="records"))}
    (out / "theory.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "table.txt").write_text(render(t) + "\n")
    return out / "theory.json"


def load(path) -> tuple[pd.DataFrame, dict]:
    """A saved theory.json (or its folder) -> (the table, the rest of the document)."""
    path = Path(path)
    path = path / "theory.json" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"{path}: no such file (a bench.theory result has theory.json)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a bench.theory result ({exc})") from None
    return pd.DataFrame(doc.pop("rows"), columns=list(COLUMNS)), doc


def run(profile: str = "quick", out=None, log=print, argv=("bench.theory",)) -> tuple:
    """Measure, save, return (table, path of theory.json)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out or Path("results") / f"theory-{stamp}")
    load_before, t0 = os.getloadavg(), time.perf_counter()
    t = measure(profile, out, log)
    path = save(t, out, profile=profile, argv=list(argv), load_before=load_before,
                duration_s=time.perf_counter() - t0)
    return t, path


def rebuild(folder) -> Path:
    """The table again from a saved run's records (e.g. after the table gained a column): the
    run's own date, command and load averages are kept."""
    from comlab.lab.results import load_results
    folder = Path(folder)
    _, doc = load(folder)
    runs = sorted(p.parent for p in folder.glob("*/records.parquet"))
    if not runs:
        raise ValueError(f"{folder}: no comlab results (*/records.parquet) to build a table from")
    t = table(pd.concat([load_results(r) for r in runs], ignore_index=True))
    doc.update(columns=COLUMNS, verdict_uses=VERDICT_USES,
               rows=json.loads(t.to_json(orient="records")))
    (folder / "theory.json").write_text(json.dumps(doc, indent=1) + "\n")
    (folder / "table.txt").write_text(render(t) + "\n")
    return folder / "theory.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.theory",
                                description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("--quick", action="store_true", help="fewer points and tasks: about a minute")
    p.add_argument("--out", metavar="DIR", help="output directory "
                                                "(default results/theory-<timestamp>)")
    p.add_argument("--rebuild", metavar="DIR", help="build the table again from the records "
                                                    "of a saved run (no run)")
    args = p.parse_args(argv)
    if args.rebuild:
        try:
            path = rebuild(args.rebuild)
        except (OSError, ValueError) as exc:  # a user's mistake: one line, no traceback
            print(f"python -m bench.theory: {exc}", file=sys.stderr)
            return 2
        print(render(load(path)[0]))
        return 0
    profile = "quick" if args.quick else "full"
    t, path = run(profile, args.out, argv=[sys.executable, "-m", "bench.theory",
                                          *(sys.argv[1:] if argv is None else argv)])
    print(render(t))
    print(f"verdict: {VERDICT_USES}; saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
