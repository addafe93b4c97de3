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
AXES = ("batch_size", "workers", "strategy", "transport")
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
    (that host's clock - the client's) in ns (comlab.clocks); a host not in it is unchanged."""
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


def summarize(df: pd.DataFrame, cpus: int | None = None) -> pd.DataFrame:
    """One row per run: axes, counts per status, makespan, ideal, efficiency, percentiles.

    ``cpus`` (for the cpu-bound ideal) defaults to the CPU count of the machine that made the
    records (``df.attrs``, set by run_experiment and load_results), else this machine's.
    """
    cpus = cpus or df.attrs.get("cpu_count")
    rows = []
    axes = [a for a in AXES + ("repeat", "rate") if a in df.columns]
    for run, g in df.groupby("run", sort=True, observed=True):
        first = g.iloc[0]
        counts = g["status"].value_counts()
        n_status = {f"n_{s}": int(counts.get(s, 0)) for s in P.STATUS_NAMES}
        if sum(n_status.values()) != len(g):  # a record with no known status goes uncounted
            raise InvariantError(f"run {run}: {len(g) - sum(n_status.values())} of {len(g)} "
                                 f"records have no known status")
        received = g["t_received"].max()
        origin = g["t_intended"].min() if "t_intended" in g and g["t_intended"].notna().any() \
            else g["t_sent"].min()
        makespan = received - origin
        ok = g[g["status"] == "ok"]
        waits = g.sort_values("task_id").groupby("batch_id", sort=True)["wait_s"].agg(list)
        releases = None
        if "t_intended" in g and g["t_intended"].notna().any():
            releases = (g.groupby("batch_id", sort=True)["t_intended"].min() - origin).tolist()
        ideal_s = ideal.ideal_makespan(waits.tolist(), int(first["workers"]),
                                       str(first["strategy"]), releases=releases, cpus=cpus)
        row = {"run": run, **{a: first[a] for a in axes}, "n_tasks": len(g),
               **n_status,
               "makespan_s": makespan, "ideal_s": ideal_s,
               "efficiency": ideal_s / makespan if makespan > 0 else np.nan,
               "throughput_tps": len(g) / makespan if makespan > 0 else np.nan}
        for col in ("latency", "overhead"):
            values = ok[f"{col}_s"]
            row[f"{col}_p50_s"] = values.quantile(0.5)
            row[f"{col}_p99_s"] = values.quantile(0.99)
        rows.append(row)
    out = pd.DataFrame(rows)
    if "experiment" in df:
        out.insert(0, "experiment", df["experiment"].iloc[0] if len(df) else None)
    return out
