"""Per-stage costs of the pipeline, measured from a saved result's own stamps.

Every figure here comes from the records (comlab/schema.py): the stamps t_sent, t_server_in,
t_enqueued, t_started, t_finished and t_received of each task already give each stage's time.
Queue waits are never an input: they are what the model (comlab.sim.model) must produce.

Costs are either **CPU** (they hold one of the host's cores, so they queue when the host is busy:
that is how 32 workers on 2 cores slow each other) or **latency** (a wake-up, a hop: time that
passes without using a core). A cost that depends on the batch size is a ``Linear`` fit, fixed +
per task, over the batch sizes of the result (one batch size: all of it fixed).

Where the stamps cannot tell two parts of a stage apart, an assumption splits them; each is in
``Calibration.notes`` (and below, with its estimator):

* hop: one message to a process waiting for it (a wake-up plus loopback TCP): the first batch of
  each run, t_server_in - t_sent, when the server is idle and waiting; median over runs.
* client send (CPU): gaps between consecutive t_sent before the first result arrives (the client
  does nothing else then; in an open loop only where the next batch was already due, as the
  schedule spaces the others); median per run, fitted over batch sizes.
* client receive (CPU): a result message's decode and check. Gaps between consecutive
  t_received pooled over a batch size's runs, 5th percentile (back-to-back arrivals).
* server intake (CPU): t_enqueued - t_server_in, median per batch size.
* server dispatch (CPU, one WORK out): during the first burst, while idle workers take every
  batch and the next one is already waiting, t_server_in of the next - t_enqueued of this one.
* server DONE (CPU): not stamped; assumed equal to the dispatch cost at batch 1.
* thread hand-off (CPU of the worker's main thread, per task): the spread of t_started within a
  batch / (tasks - 1); task end (CPU per task): the spread of t_finished beyond that of t_started.
* sleep overshoot (latency): t_finished - t_started - wait of single-task batches on the least
  loaded runs (a sample, drawn from per task).
* result path: t_received - the batch's last t_finished on the least loaded runs = wake of the
  worker's main thread (latency) + packing and sending RESULTS (CPU, assumed equal to the
  client's receive cost of the same batch size) + a hop.
* worker turnaround, from the last t_finished of a batch to the first t_started of the next one
  the same worker already held: result path without the hop + DONE (CPU, assumed equal to a
  client send at batch 1) + decoding the WORK (CPU, assumed equal to the server's intake) + a
  hand-off + the wake of a parked thread (latency, the remainder).
* idle wake (latency, a Linear in worker processes on the machine, not in tasks): a worker
  that waited idle for its WORK starts later than one that held it: its first batch of each run,
  t_started - t_enqueued, minus the hop, decode, hand-off and thread wake above; median per
  worker count (the more processes share the cores, the longer a sleeping one takes to run).
* queue take (a dispatch design simulated as a shared queue, ``queue``; CPU): from the
  turnaround of such runs when the result has some, else assumed equal to the server's
  dispatch cost.

"Least loaded runs" are those with the fewest workers (every run when the result has one worker
count): their stages run with little competition for the cores, so they are close to the costs
themselves, and the model adds the competition.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

OVERSHOOT_SAMPLES = 4096


@dataclass(frozen=True)
class Linear:
    """fixed + per_task x tasks (seconds)."""
    fixed: float
    per_task: float = 0.0

    def at(self, tasks) -> float:
        return self.fixed + self.per_task * tasks

    @classmethod
    def fit(cls, sizes, values) -> Linear:
        """Least squares over (batch size, seconds), both parts >= 0; one size: all fixed."""
        s, v = np.asarray(sizes, float), np.asarray(values, float)
        ok = np.isfinite(v)
        s, v = s[ok], v[ok]
        if not len(v):
            return cls(0.0)
        if len(np.unique(s)) < 2:
            return cls(max(float(np.median(v)), 0.0))
        slope, icpt = np.polyfit(s, v, 1)
        if slope < 0:
            return cls(max(float(np.median(v)), 0.0))
        if icpt < 0:  # through the origin
            return cls(0.0, float(np.sum(s * v) / np.sum(s * s)))
        return cls(float(icpt), float(slope))


@dataclass
class Calibration:
    """Per-stage costs (seconds) of one saved result; ``comlab.sim.predict`` runs them."""
    cpus: int
    hop_s: float
    client_send: Linear
    client_recv: Linear
    server_intake: Linear
    server_dispatch: Linear
    server_done_s: float
    worker_recv: Linear
    handoff_s: float
    task_end_s: float
    thread_wake_s: float
    overshoot_s: np.ndarray
    worker_result: Linear
    result_wake_s: float
    done_send_s: float
    queue_take_s: float
    inline_task_s: float
    idle_wake: Linear = field(default_factory=lambda: Linear(0.0))
    workload_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    source: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    # What it was measured on: strategy and dispatch design (kinds: "thread-pool", "broker";
    # "" for a hand-made one: any) and the range of the runs (``measured_range``).
    strategy: str = ""
    dispatch: str = ""
    measured: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("overshoot_s", "workload_s"):
            d[k] = [float(x) for x in getattr(self, k)]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        d = dict(d)
        for k, v in d.items():
            if isinstance(v, dict) and set(v) == {"fixed", "per_task"}:
                d[k] = Linear(**v)
        for k in ("overshoot_s", "workload_s"):
            d[k] = np.asarray(d.get(k, []), float)
        return cls(**d)

    def save(self, path) -> Path:
        from ..lab.atomic import write_text
        return write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path) -> Calibration:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def table(self) -> pd.DataFrame:
        """One row per stage: what it costs at batch 1 and per extra task, CPU or latency."""
        rows = []
        for name, kind in STAGES:
            v = getattr(self, name)
            label = name.removesuffix("_s")
            if isinstance(v, Linear):
                rows.append((label, kind, v.fixed * 1e6, v.per_task * 1e6))
            elif isinstance(v, np.ndarray):
                rows.append((label, kind, float(np.median(v)) * 1e6, 0.0))
            else:
                rows.append((label, kind, v * 1e6, 0.0))
        return pd.DataFrame(rows, columns=["stage", "kind", "fixed_us", "per_task_us"])


STAGES = [("hop_s", "latency"), ("client_send", "cpu"), ("client_recv", "cpu"),
          ("server_intake", "cpu"), ("server_dispatch", "cpu"), ("server_done_s", "cpu"),
          ("worker_recv", "cpu"), ("handoff_s", "cpu"), ("thread_wake_s", "latency"),
          ("overshoot_s", "latency (median)"), ("task_end_s", "cpu"),
          ("result_wake_s", "latency"), ("worker_result", "cpu"), ("done_send_s", "cpu"),
          ("queue_take_s", "cpu"), ("inline_task_s", "cpu"),
          ("idle_wake", "latency (per worker process on the machine)")]


def batches(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment, run, batch) of tasks that went to a worker and came back:
    its stamps (first send, first/last start and finish, receipt), size and worker."""
    ok = df[df["status"] == "ok"]
    keys = [k for k in ("experiment", "run") if k in ok.columns] + ["batch_id"]
    g = ok.groupby(keys, observed=True, sort=True)
    b = g.agg(s=("task_id", "size"), sent=("t_sent", "first"), sin=("t_server_in", "first"),
              enq=("t_enqueued", "first"), st0=("t_started", "min"), st1=("t_started", "max"),
              f0=("t_finished", "min"), f1=("t_finished", "max"), rec=("t_received", "first"),
              worker=("worker", "first"), wait=("wait_s", "max"),
              workers=("workers", "first"), dispatch=("dispatch", "first")
              if "dispatch" in ok.columns else ("workers", "first"))
    if "t_intended" in ok.columns:  # open loop: when the batch was due (its last task's)
        b = b.join(g["t_intended"].max().rename("due"))
    return b.reset_index()


def _per_run(b: pd.DataFrame):
    keys = [k for k in ("experiment", "run") if k in b.columns]
    return b.groupby(keys, observed=True, sort=True)


def kind(name) -> str:
    """A strategy's or dispatch design's kind: its name without the parameter
    (thread-pool:8 -> thread-pool, broker:0 -> broker)."""
    return str(name).partition(":")[0]


def designs(df: pd.DataFrame) -> list[tuple[str, str]]:
    """The (strategy kind, dispatch kind) pairs of some records."""
    pairs = df[["strategy", "dispatch"]].astype(str).drop_duplicates().itertuples(index=False)
    return sorted({(kind(st), kind(d)) for st, d in pairs})


def calibrate(result, strategy: str | None = None, dispatch: str | None = None) -> Calibration:
    """A Calibration from a saved result (directory, ``comlab.load`` Result, or records), of
    one strategy and dispatch design: a result of several needs ``strategy``/``dispatch`` (or
    ``calibrate_each``), since their stages cost differently (a thread per task is not a
    pool)."""
    df, meta = _records(result)
    return _calibrate_one(_designed(df), meta, strategy, dispatch)


def calibrate_each(result) -> dict[tuple[str, str], Calibration]:
    """One Calibration per (strategy kind, dispatch kind) of a result."""
    df, meta = _records(result)
    df = _designed(df)
    return {pair: _calibrate_one(df, meta, *pair) for pair in designs(df)}


def _designed(df: pd.DataFrame) -> pd.DataFrame:
    if not len(df):
        raise ValueError("no records to calibrate from")
    return df if "dispatch" in df.columns else df.assign(dispatch="broker")


def _calibrate_one(df: pd.DataFrame, meta: dict, strategy, dispatch) -> Calibration:
    if strategy is not None:
        df = df[df["strategy"].astype(str).map(kind) == kind(strategy)]
    if dispatch is not None:
        df = df[df["dispatch"].astype(str).map(kind) == kind(dispatch)]
    found = designs(df) if len(df) else []
    if not found:
        raise ValueError(f"no records of strategy {strategy} with dispatch {dispatch} to "
                         f"calibrate from")
    if len(found) > 1:
        raise ValueError("the result holds " + ", ".join(f"{s} with {d}" for s, d in found)
                         + ": each costs differently; calibrate one (strategy=..., "
                           "dispatch=...) or use calibrate_each / predict, which calibrate each")
    cal = _calibrate(df, meta)
    cal.strategy, cal.dispatch = found[0]
    cal.measured = measured_range(df)
    return cal


def measured_range(df: pd.DataFrame) -> dict:
    """The axes a calibration saw: a prediction outside them is an extrapolation."""
    closed = "t_intended" not in df or df.groupby("run", observed=True)["t_intended"].apply(
        lambda t: t.isna().all()).any()
    hosts = [0]
    if "remote_workers" in df and (df["remote_workers"].fillna(0) > 0).any():
        hosts = sorted({int(n) for n in df.groupby("run", observed=True)["host"].nunique()})
    return {"workers": [int(df["workers"].min()), int(df["workers"].max())],
            "batch_size": [int(df["batch_size"].min()), int(df["batch_size"].max())],
            "hosts": hosts, "closed_loop": bool(closed),
            "strategy": sorted(map(str, df["strategy"].unique())),
            "dispatch": sorted(map(str, df["dispatch"].unique()))}


def outside(cal: Calibration, cfg) -> list[str]:
    """Why a configuration is outside what ``cal`` measured (empty: within it)."""
    r = cal.measured
    if not r:
        return []
    out = [f"{axis.replace('_', ' ')} {v} (measured {r[axis][0]}-{r[axis][1]})"
           for axis, v in (("workers", cfg.workers), ("batch_size", cfg.batch_size))
           if not r[axis][0] <= v <= r[axis][1]]
    if cfg.hosts not in r["hosts"]:
        out.append(f"hosts {cfg.hosts} (measured {', '.join(map(str, r['hosts']))})")
    if not r["closed_loop"] and getattr(cfg, "rate", None) is None:
        out.append("closed loop (measured open loop only)")
    for axis in ("strategy", "dispatch"):
        if getattr(cfg, axis) not in r[axis]:
            out.append(f"{axis} {getattr(cfg, axis)} (measured {', '.join(r[axis])})")
    return out


def _calibrate(df: pd.DataFrame, meta: dict) -> Calibration:
    """Each stage's estimator in turn (the module's docstring says how and why)."""
    b = batches(df)
    if not len(b):
        raise ValueError("no task came back ok: nothing to calibrate from")
    notes = []
    quiet_w = int(b["workers"].min())
    quiet = b[b["workers"] == quiet_w]
    runs = list(_per_run(b))
    hop = float(np.median([g.iloc[0].sin - g.iloc[0].sent for _, g in runs]))
    client_send = _client_send(quiet)
    client_recv = _client_recv(b)
    server_intake = Linear.fit(*zip(*[(s, float(np.median(g["enq"] - g["sin"])))
                                       for s, g in b.groupby("s")]))
    server_dispatch = _server_dispatch(runs, server_intake, notes)
    handoff, task_end = _handoff_and_task_end(quiet, notes)
    overshoot = _overshoot(df, quiet_w, notes)

    worker_result = client_recv
    notes.append("worker's RESULTS pack and send: assumed equal to the client's receive cost")
    rp = quiet.assign(rp=quiet["rec"] - quiet["f1"])
    result_wake = max(float(np.median(rp["rp"] - hop - worker_result.at(rp["s"]))), 0.0)
    worker_recv = server_intake
    done_send = client_send.at(1)
    notes.append("worker's decode of a WORK: assumed equal to the server's intake of its batch;"
                 " a DONE: a client send at batch 1")
    # What a worker's turnaround holds besides the wake of a parked thread (and, for the
    # queue design, the take from the queue).
    thread_wake = _remainder(_turnarounds(quiet[~_queued(quiet)]),
                             lambda s: result_wake + worker_result.at(s) + done_send
                             + worker_recv.at(s) + handoff)
    if thread_wake is None:
        thread_wake = 0.0
        notes.append("thread wake: no worker ran two batches in a row: taken as 0")
    qb = b[_queued(b)]
    queue_take = _remainder(_turnarounds(qb[qb["workers"] == qb["workers"].min()]) if len(qb)
                            else qb, lambda s: result_wake + worker_result.at(s)
                            + worker_recv.at(s) + handoff + thread_wake)
    if queue_take is None:
        queue_take = server_dispatch.at(1)
        notes.append("queue take: no queue-design run: assumed equal to a dispatch at batch 1")

    source = {"result": str(meta.get("name", "")), "runs": len(runs), "quiet_workers": quiet_w,
              "batches": len(b), "loadavg": _loadavg(meta),
              "cpu_count": (meta.get("environment") or {}).get("cpu_count")}
    first_run = df[(df["run"] == df["run"].min())] if "run" in df else df
    return Calibration(
        cpus=int(source["cpu_count"] or df.attrs.get("cpu_count") or 2), hop_s=hop,
        client_send=client_send, client_recv=client_recv, server_intake=server_intake,
        server_dispatch=server_dispatch, server_done_s=server_dispatch.at(1),
        worker_recv=worker_recv, handoff_s=handoff, task_end_s=task_end,
        thread_wake_s=thread_wake, overshoot_s=overshoot, worker_result=worker_result,
        result_wake_s=result_wake, done_send_s=done_send, queue_take_s=queue_take,
        inline_task_s=_inline_task(df),
        idle_wake=_idle_wake(b, hop + thread_wake, worker_recv, handoff),
        workload_s=first_run.sort_values("task_id")["wait_s"].to_numpy(float),
        source=source, notes=notes)


def _client_send(quiet: pd.DataFrame) -> Linear:
    """Gaps between sends before the first result arrives (the client does nothing else)."""
    pts = []
    for _, g in _per_run(quiet):
        gaps = _send_gaps(g)
        if len(gaps):
            pts.append((g["s"].iloc[0], float(np.median(gaps))))
    return Linear.fit(*zip(*pts)) if pts else Linear(0.0)


def _client_recv(b: pd.DataFrame) -> Linear:
    """Back-to-back arrivals: the 5th percentile of the gaps between receipts, per size."""
    pts = []
    for s, g in b.groupby("s"):
        gaps = np.concatenate([np.diff(np.sort(r["rec"].to_numpy())) for _, r in _per_run(g)])
        gaps = gaps[gaps > 0]
        if len(gaps):
            pts.append((s, float(np.percentile(gaps, 5))))
    return Linear.fit(*zip(*pts))


def _server_dispatch(runs, server_intake: Linear, notes: list) -> Linear:
    """During each run's first burst: the next batch's arrival after this one's enqueue,
    while it was already waiting."""
    disp = []
    for _, g in runs:
        w = int(g["workers"].iloc[0])
        k = min(w, len(g)) - 1
        if k < 1:
            continue
        sin, enq, sent = (g[c].to_numpy() for c in ("sin", "enq", "sent"))
        waiting = sent[1:k + 1] < enq[:k]
        gaps = (sin[1:k + 1] - enq[:k])[waiting]
        disp += [(g["s"].iloc[0], x) for x in gaps]
    if not disp:
        notes.append("server dispatch: no run with 2+ workers: assumed equal to the intake")
        return server_intake
    d = pd.DataFrame(disp, columns=["s", "gap"]).groupby("s")["gap"].median()
    return Linear.fit(d.index, d.to_numpy())


def _handoff_and_task_end(quiet: pd.DataFrame, notes: list) -> tuple[float, float]:
    """Per task: the spread of starts within a batch, and that of ends beyond it."""
    multi = quiet[quiet["s"] > 1]
    if not len(multi):
        notes.append("thread hand-off and task end: no batch of 2+ tasks: taken as 0")
        return 0.0, 0.0
    handoff = float(np.median((multi["st1"] - multi["st0"]) / (multi["s"] - 1)))
    end = float(np.median(((multi["f1"] - multi["f0"]) - (multi["st1"] - multi["st0"]))
                          / (multi["s"] - 1)))
    return handoff, max(end, 0.0)


def _overshoot(df: pd.DataFrame, quiet_w: int, notes: list) -> np.ndarray:
    """Sleep overshoots of the smallest batches on the least loaded runs (a sample)."""
    src = df[(df["status"] == "ok") & (df["workers"] == quiet_w) & (df["wait_s"] > 0)]
    small = src[src["batch_size"] == src["batch_size"].min()] if len(src) else src
    overshoot = (small["t_finished"] - small["t_started"] - small["wait_s"]).to_numpy(float)
    overshoot = np.clip(overshoot[np.isfinite(overshoot)], 0.0, None)
    if len(overshoot) > OVERSHOOT_SAMPLES:
        overshoot = np.random.default_rng(0).choice(overshoot, OVERSHOOT_SAMPLES, replace=False)
    if not len(overshoot):
        notes.append("sleep overshoot: no task with a wait: taken as 0")
        return np.zeros(1)
    return overshoot


def _remainder(turnarounds: pd.DataFrame, known) -> float | None:
    """Median of the turnarounds less the ``known(batch size)`` part (>= 0); None: none."""
    if not len(turnarounds):
        return None
    return max(float(np.median(turnarounds["gap"] - known(turnarounds["s"]))), 0.0)


def _inline_task(df: pd.DataFrame) -> float:
    """Start-to-start gaps of zero-wait tasks (a task run inline), at most 100 us."""
    zero = df[(df["status"] == "ok") & (df["wait_s"] == 0)]
    inline = float(np.median(np.diff(zero.sort_values(["run", "task_id"])["t_started"]))) \
        if len(zero) > 1 else 2e-6
    return min(max(inline, 0.0), 1e-4)


def _send_gaps(g: pd.DataFrame) -> np.ndarray:
    """A run's gaps between consecutive sends before its first result, when the client did
    nothing else: every one in a closed loop; in an open loop only those where the next batch
    was already due (sent back to back), the others being the schedule's."""
    burst = g[g["sent"] < g["rec"].min()]
    sent = burst["sent"].to_numpy()
    gaps = np.diff(sent)
    if "due" in burst and burst["due"].notna().any():
        gaps = gaps[burst["due"].to_numpy()[1:] <= sent[:-1]]
    return gaps


def _idle_wake(b: pd.DataFrame, latency: float, worker_recv: Linear, handoff: float) -> Linear:
    """The extra start delay of a worker's first batch of a run, by worker count (fitted)."""
    keys = [k for k in ("experiment", "run") if k in b.columns] + ["worker"]
    first = b.sort_values("st0").groupby(keys, observed=True).head(1)
    first = first[~_queued(first)]
    if not len(first):
        return Linear(0.0)
    extra = first["st0"] - first["enq"] - latency - worker_recv.at(first["s"]) - handoff
    per = extra.groupby(first["workers"]).median()
    return Linear.fit(per.index, per.to_numpy())


def _queued(b: pd.DataFrame) -> pd.Series:
    """Rows of runs whose local workers took batches from a shared queue (no DONE)."""
    from ..system.dispatch import simulated_as
    return b["dispatch"].astype(str).map(lambda d: simulated_as(d) == "shared-queue")


def _turnarounds(b: pd.DataFrame) -> pd.DataFrame:
    """Gaps between a worker's batches when it held the next one before the last ended."""
    out = []
    keys = [k for k in ("experiment", "run") if k in b.columns] + ["worker"]
    for _, g in b.sort_values("st0").groupby(keys, observed=True, sort=False):
        if len(g) < 2:
            continue
        st0, f1, enq, s = (g[c].to_numpy() for c in ("st0", "f1", "enq", "s"))
        held = enq[1:] < f1[:-1]
        out.append(pd.DataFrame({"s": s[1:][held], "gap": (st0[1:] - f1[:-1])[held]}))
    return pd.concat(out) if out else pd.DataFrame({"s": [], "gap": []})


def _records(result):
    from ..lab.results import load_meta, load_results
    if isinstance(result, (str, Path)):
        path = Path(result)
        return load_results(path), load_meta(path)
    if hasattr(result, "records") and hasattr(result, "meta"):
        return result.records, result.meta
    if isinstance(result, pd.DataFrame):
        return result, {"name": str(result["experiment"].iloc[0]) if "experiment" in result
                        and len(result) else ""}
    raise ValueError("calibrate needs a result directory, a comlab.load Result or records")


def _loadavg(meta: dict):
    loads = [r.get("loadavg_start", [None])[0] for r in meta.get("runs", [])
             if r.get("loadavg_start")]
    loads = [x for x in loads if x is not None]
    return [min(loads), max(loads)] if loads else None
