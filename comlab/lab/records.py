"""Per-task records (one row per task per run) and the per-run summary.

Every column is described in comlab.schema (dtype, unit, meaning, where each stamp is taken):
``build`` makes the records in that order with those dtypes. Stamps arrive as integer monotonic
nanoseconds from one host clock; records hold float seconds since the run's start.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import schema
from ..system import protocol as P
from . import ideal

STAMPS = schema.STAMPS
AXES = ("batch_size", "workers", "strategy", "transport", "dispatch")
STATUS = pd.CategoricalDtype(list(P.STATUS_NAMES))
CATEGORIES = schema.CATEGORIES


class InvariantError(RuntimeError):
    """A run broke 'every task sent ends in exactly one final record'."""


def build(columns: dict, t_start: int, *, keys: list, waits: np.ndarray, run_info: dict,
          open_loop: bool = False, accepted: int | None = None) -> pd.DataFrame:
    """Records of one run from the client's columns; checks the one-record-per-task invariant.

    The client's columns have one row per task by construction, so the row count alone proves
    little. ``accepted`` (the task results the client took from non-duplicate messages) makes
    the check real: each accepted result must be the one final record of its own task, so the
    tasks not ``lost`` must number exactly ``accepted``. A result that overlapped another one,
    or named a task never sent, breaks that and the run raises instead of returning quietly.
    """
    n = len(keys)
    where = f"run {run_info.get('run')}"
    ids = columns["task_id"]
    if len(ids) != n or not np.array_equal(ids, np.arange(n)):
        raise InvariantError(f"{where}: {len(ids)} records for {n} tasks")
    status_codes = np.asarray(columns["status"])
    if len(status_codes) != n or status_codes.min(initial=0) < 0 \
            or status_codes.max(initial=0) >= len(P.STATUS_NAMES):
        raise InvariantError(f"{where}: status codes outside 0..{len(P.STATUS_NAMES) - 1}")
    if accepted is not None:
        final = int(np.count_nonzero(status_codes != P.LOST))
        if final != accepted:
            raise InvariantError(
                f"{where}: the client accepted {accepted} task results but {final} of {n} "
                f"tasks have a final status: a result overlapped another task's or named a "
                f"task that was never sent")
    ip, _, command = zip(*(k.partition(":") for k in keys))
    df = pd.DataFrame({
        **{k: v for k, v in run_info.items()},
        "task_id": ids, "batch_id": columns["batch_id"],
        "ip": ip, "command": command,
        "response": pd.array(np.where(columns["has_response"], columns["response"], 0),
                             dtype="Int64"),
        "wait_s": waits,
        "status": pd.Categorical.from_codes(status_codes, dtype=STATUS),
        "attempt": columns["attempt"],
        "worker": columns["worker"], "host": columns["host"],
    })
    df.loc[~columns["has_response"], "response"] = pd.NA
    for name in STAMPS + (("t_intended",) if open_loop else ()):
        raw = columns[name]
        df[name] = np.where(raw >= 0, (raw - t_start) / 1e9, np.nan)
    origin = df["t_intended"] if open_loop else df["t_sent"]
    df["latency_s"] = df["t_received"] - origin
    df["overhead_s"] = df["latency_s"] - df["wait_s"]
    df["error"] = columns["error"]
    return in_schema_order(df)


def in_schema_order(df: pd.DataFrame) -> pd.DataFrame:
    """Columns in comlab.schema's order with its dtypes (columns it does not know go last)."""
    known = [c.name for c in schema.COLUMNS if c.name in df]
    df = df[known + [c for c in df.columns if c not in schema.BY_NAME]]
    for name in known:
        dtype = schema.BY_NAME[name].dtype
        if name == "status":
            continue  # categorical with the fixed STATUS categories already
        if str(df[name].dtype) != dtype:
            df[name] = df[name].astype(dtype)
    return df


def to_client_clock(columns: dict, offsets: dict, server_host: str) -> dict:
    """The client's columns with stamps of other hosts moved to the client's clock (for
    ``build``): t_server_in / t_enqueued by the server host's offset, t_started / t_finished by
    the offset of the host that ran the task (its ``host`` column). ``offsets`` maps host name ->
    (that host's clock - the client's) in ns (comlab.lab.clocks); a host not in it is unchanged."""
    if not offsets:
        return columns
    out = dict(columns)
    server_off = int(offsets.get(server_host, 0))
    host_off = pd.Series(columns["host"], dtype=object).map(offsets).fillna(0)
    host_off = host_off.to_numpy(dtype=np.int64)
    for name, off in (("t_server_in", server_off), ("t_enqueued", server_off),
                      ("t_started", host_off), ("t_finished", host_off)):
        raw = np.asarray(columns[name], dtype=np.int64)
        out[name] = np.where(raw >= 0, raw - off, raw)
    return out


def summarize(df: pd.DataFrame, cpus: int | None = None,
              timeouts: dict | float | None = None) -> pd.DataFrame:
    """One row per run: axes, counts per status, makespan, ideal, efficiency, percentiles.

    Runs are grouped by (experiment, run), so records of several experiments concatenated
    never merge (``experiment`` stays a column). ``cpus`` (for the cpu-bound ideal) defaults to
    the CPU count of the machine that made the records (``df.attrs``, set by run_experiment and
    load_results), else this machine's.

    Latency columns (``latency_p50_s``, ``_p90_s``, ``_p99_s``, ``_p999_s``, ``_max_s``, and
    ``overhead_p50_s``, ``_p99_s``) are over every task that went to a worker: ``ok``,
    ``failed`` and ``lost`` (``n_latency`` of them; unknown / unreachable, answered by the
    server at once, are left out). A lost task never came back: it counts with latency
    ``lost_latency_s``, the run's timeout (``timeouts``: {(experiment, run): s} or one value;
    by default from ``df.attrs``, set from meta.json), a lower bound of its true latency; when
    the timeout is unknown (results of format 1), the time from its send to the run's last
    result, a lower bound too. ``n_lost`` says how many; none is dropped.
    """
    cpus = cpus or df.attrs.get("cpu_count")
    timeouts = df.attrs.get("timeouts") if timeouts is None else timeouts
    keys = [k for k in ("experiment", "run") if k in df.columns]
    rows = [_summary_row(g, key if isinstance(key, tuple) else (key,), keys, cpus, timeouts)
            for key, g in df.groupby(keys, sort=True, observed=True)]
    return pd.DataFrame(rows)


def _summary_row(g: pd.DataFrame, key: tuple, keys: list, cpus, timeouts) -> dict:
    first = g.iloc[0]
    axes = [a for a in AXES + ("repeat", "rate", "arrivals") if a in g.columns]
    counts = g["status"].value_counts()
    n_status = {f"n_{s}": int(counts.get(s, 0)) for s in P.STATUS_NAMES}
    if sum(n_status.values()) != len(g):  # a record with no known status goes uncounted
        raise InvariantError(f"run {key[-1]}: {len(g) - sum(n_status.values())} of {len(g)} "
                             f"records have no known status")
    open_loop = "t_intended" in g and g["t_intended"].notna().any()
    origin = g["t_intended"].min() if open_loop else g["t_sent"].min()
    makespan = g["t_received"].max() - origin
    waits = g.sort_values("task_id").groupby("batch_id", sort=True)["wait_s"].agg(list)
    releases = None
    if open_loop:  # a batch leaves when its last task is due (a trace names each task's time)
        releases = (g.groupby("batch_id", sort=True)["t_intended"].max() - origin).tolist()
    ideal_s = ideal.ideal_makespan(waits.tolist(), int(first["workers"]),
                                   str(first["strategy"]), releases=releases, cpus=cpus)
    row = {**dict(zip(keys, key)), **{a: first[a] for a in axes}, "n_tasks": len(g),
           **n_status, "makespan_s": makespan, "ideal_s": ideal_s,
           # zero-wait tasks: no ideal to reach, so no efficiency (NaN, never 0)
           "efficiency": ideal_s / makespan if makespan > 0 and ideal_s > 0 else np.nan,
           "throughput_tps": len(g) / makespan if makespan > 0 else np.nan}
    return {**row, **_latency_columns(g, _timeout_of(key, keys, timeouts)),
            **_send_lag(g if open_loop else None)}


LATE_S = 0.001  # a batch sent later than this after its intended time is late


def _send_lag(g: pd.DataFrame | None) -> dict:
    """Did the client keep its schedule? ``send_lag_p99_s``: p99 over the run's batches of
    t_sent - t_intended (a batch's intended time: its last task's); ``late_share``: the share
    of batches sent more than LATE_S late, a batch never sent counted late. NaN in closed loop."""
    if g is None:
        return {"send_lag_p99_s": np.nan, "late_share": np.nan}
    per_batch = g.groupby("batch_id", sort=False).agg(sent=("t_sent", "max"),
                                                      intended=("t_intended", "max"))
    lag = (per_batch["sent"] - per_batch["intended"]).to_numpy(dtype=float)
    late = np.count_nonzero(np.isnan(lag) | (lag > LATE_S))
    return {"send_lag_p99_s": _quantile(lag, 0.99), "late_share": late / len(lag)}


def _timeout_of(key: tuple, keys: list, timeouts) -> float | None:
    if timeouts is None or isinstance(timeouts, (int, float)):
        return timeouts
    named = dict(zip(keys, key))
    return timeouts.get((named.get("experiment"), named.get("run")))


LATENCY_QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}


def _latency_columns(g: pd.DataFrame, timeout: float | None) -> dict:
    """Percentiles of one run's latency and overhead, lost tasks counted (see summarize)."""
    worked = g[g["status"].isin(("ok", "failed", "lost"))]
    lost = (worked["status"] == "lost").to_numpy()
    latency = worked["latency_s"].to_numpy(dtype=float, na_value=np.nan).copy()
    lost_as = np.nan
    if lost.any():
        origin = worked["t_intended"] if "t_intended" in worked and \
            worked["t_intended"].notna().any() else worked["t_sent"]
        lost_as = timeout if timeout is not None else \
            float(np.nanmax(g["t_received"].max() - origin[lost]))
        latency[lost] = lost_as
    overhead = latency - worked["wait_s"].to_numpy(dtype=float)
    out = {"n_latency": len(worked), "lost_latency_s": lost_as}
    for name, q in LATENCY_QUANTILES.items():
        out[f"latency_{name}_s"] = _quantile(latency, q)
    out["latency_max_s"] = _quantile(latency, 1.0)
    out["overhead_p50_s"] = _quantile(overhead, 0.5)
    out["overhead_p99_s"] = _quantile(overhead, 0.99)
    return out


def _quantile(values: np.ndarray, q: float) -> float:
    values = values[~np.isnan(values)]
    return float(np.quantile(values, q)) if len(values) else np.nan
