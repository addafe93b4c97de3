"""comlab.sim: what the system would do at a scale this machine cannot reach.

A discrete-event model of the pipeline (comlab.sim.model) whose per-stage costs are measured
from a saved result's own stamps (comlab.sim.calibrate)::

    import comlab.sim
    cal = comlab.sim.calibrate("results/main")
    pred = comlab.sim.predict(cal, [dict(batch_size=16, workers=1000, hosts=100)])
    comlab.compare("results/main", comlab.sim.predict("results/main"))  # the model vs the lab

``predict`` returns the summary columns of a measured sweep (``comlab.summarize``: makespan,
throughput, latency percentiles, ...) with ``experiment`` = "<name> (predicted)", plus
``server_utilisation`` and ``client_utilisation`` (the share of the makespan their one thread
was computing), ``sim_wall_s``, and ``extrapolated`` / ``outside``: whether (and why) the
configuration lies outside what the calibration measured (workers, batch size, hosts, closed
loop, the strategy's or design's parameter); ``summary.attrs["note"]`` says so in a line.

Each strategy and dispatch design costs differently, so a result is calibrated per
(strategy, design) it holds (``calibrate_each``), and a configuration of a strategy or design
with no calibration is refused (ValueError). ``bottleneck`` says, from the predicted
utilisations, which single-threaded process (client or server) limits each configuration.

Why SimPy: the model is a handful of sequential processes (a client loop, a server loop,
workers) that wait on messages and on cores, which is what SimPy's generator processes and
shared resources say directly, in the order the real code does it; it is pure Python with no
dependencies, MIT-licensed, maintained since 2002 (4.x on PyPI), and fast enough when a batch,
not a task, is the unit of events. salabim (richer, animation) and ciw (queueing networks) were
the alternatives; neither models "the server's own ledger decides" as plainly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

from . import workload
from .calibrate import Calibration, Linear, calibrate, calibrate_each, kind, outside
from .model import Config, simulate

__all__ = ["Calibration", "Config", "Linear", "bottleneck", "calibrate", "calibrate_each",
           "predict", "configs_of"]

PREDICTED = " (predicted)"
SATURATED = 0.9  # a one-thread process busy this share of the makespan limits the run


def configs_of(summary: pd.DataFrame, records: pd.DataFrame | None = None) -> list[Config]:
    """The configurations of a measured summary (one per distinct axes), as Configs: local
    workers as in ``comlab run``; remote workers (``remote_workers``) on worker hosts that
    share the machine (the network-namespace sweep): as many as the records' ``host`` column
    names in that configuration (one without records). As many tasks as each run had, and
    an open-loop run's rate and arrival process (and its schedule's seed, ``arrivals_seed``)."""
    cols = [c for c in ("batch_size", "workers", "strategy", "dispatch", "remote_workers",
                        "rate", "arrivals", "arrivals_seed", "n_tasks") if c in summary.columns]
    out = []
    for _, r in summary[cols].drop_duplicates().iterrows():
        remote = int(r["remote_workers"]) if "remote_workers" in r and pd.notna(
            r.get("remote_workers")) else 0
        if remote and remote != int(r["workers"]):
            raise ValueError("the model runs local-only or remote-only workers, not "
                             f"{int(r['workers']) - remote} local + {remote} remote")
        out.append(Config(int(r["batch_size"]), int(r["workers"]),
                          hosts=_hosts_of(r, cols, records) if remote else 0,
                          strategy=str(r.get("strategy", "thread-per-task")),
                          dispatch=str(r.get("dispatch", "broker")),
                          one_machine=True if remote else None,
                          tasks=int(r["n_tasks"]) if "n_tasks" in r else None,
                          **_schedule_of(r)))
    return out


def _schedule_of(row) -> dict:
    """A measured run's open-loop rate and arrival process (none: closed loop)."""
    rate, arrivals, seed = (row.get(k) for k in ("rate", "arrivals", "arrivals_seed"))
    out = {} if arrivals is None or pd.isna(arrivals) else {"arrivals": str(arrivals)}
    if rate is not None and not pd.isna(rate):
        out["rate"] = float(rate)
    elif out.get("arrivals", "constant").partition(":")[0] == "constant":
        return {}  # closed loop
    if seed is not None and not pd.isna(seed):
        out["arrivals_seed"] = int(seed)
    return out


def _with_schedules(summary: pd.DataFrame, df: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """Each measured run's arrival process (the records') and schedule seed (meta.json's
    ``arrivals_seed``) as columns: an open-loop run is then predicted on its own schedule
    (one configuration per seed)."""
    if "run" not in summary:
        return summary
    if "arrivals" in df and "arrivals" not in summary:
        summary = summary.assign(arrivals=summary["run"].map(
            df.groupby("run", observed=True)["arrivals"].first()))
    seeds = {r["run"]: r["arrivals_seed"] for r in (meta or {}).get("runs", [])
             if r.get("arrivals_seed") is not None and "run" in r}
    return summary.assign(arrivals_seed=summary["run"].map(seeds)) if seeds else summary


def _hosts_of(row, cols: list, records: pd.DataFrame | None) -> int:
    if records is None or "host" not in records:
        return 1
    mine = records
    for c in cols:
        if c != "remote_workers" and c in records:
            mine = mine[mine[c].astype(str) == str(row[c])]
    return max(1, int(mine["host"].dropna().nunique()))


def _as_configs(configs) -> list[Config]:
    if isinstance(configs, (Config, Mapping)):
        configs = [configs]
    out = []
    for c in configs:
        out.append((c if isinstance(c, Config) else Config(**dict(c))).check())
    return out


def predict(result_or_calibration, configs=None, *, repeats: int = 1, seed: int = 0,
            name: str | None = None, records: bool = False, progress=None, measured=None):
    """Predicted summary rows (one per configuration x repeat), like ``comlab.summarize``'s.

    ``result_or_calibration``: a Calibration, or anything ``calibrate`` takes (a result
    directory, a ``comlab.load`` Result, records). ``configs``: Configs or dicts of their fields
    (``batch_size``, ``workers``, ``hosts``, ``strategy``, ``dispatch``, ``tasks``, ``cpus``,
    ``one_machine``, ``latency_s``; open loop: ``rate``, ``arrivals``, ``arrivals_seed``; drawn
    waits: ``wait``, ``wait_mean_s``); default: every configuration of the result itself (needs a
    result, not a Calibration; or ``measured=``, another result whose configurations to
    predict: a sweep over hosts, predicted from a one-host calibration; an open-loop run on its
    own schedule). Repeats draw other overshoots, schedules and waits (seed + repeat; the rows'
    ``seed`` and ``arrivals_seed``). With ``records=True``: (summary, per-task records).
    """
    from ..lab.records import summarize
    source = result_or_calibration
    cals = _calibrations(source)
    if configs is None:
        if measured is None and isinstance(source, Calibration):
            raise ValueError("predict(calibration) needs configs: a Calibration does not "
                             "know the result's configurations")
        from .calibrate import _records
        df, meta = _records(source if measured is None else measured)
        configs = configs_of(_with_schedules(summarize(df), df, meta), df)
    configs = _as_configs(configs)
    chosen = [_calibration_for(cals, cfg) for cfg in configs]  # every refusal before any run
    first = next(iter(cals.values()))
    label = (name or first.source.get("result") or "model") + PREDICTED
    rows, recs = [], []
    run = 0
    for cfg, cal in zip(configs, chosen):
        why = outside(cal, cfg)
        for rep in range(repeats):
            waits = workload.waits(cal.workload_s, cfg, seed + rep)
            cols, info = simulate(cal, cfg, waits, seed=seed + rep)
            from .model import records as to_records
            df = to_records(cols, waits, cfg, run, rep, label)
            s = summarize(df, cpus=cfg.cpus or cal.cpus).assign(
                hosts=cfg.hosts, cpus=cfg.cpus or cal.cpus, latency_added_s=cfg.latency_s,
                extrapolated=bool(why), outside="; ".join(why), arrivals=cfg.arrivals,
                seed=seed + rep, arrivals_seed=_schedule_seed(cfg, seed + rep), **info)
            rows.append(s)
            if records:
                recs.append(df)
            run += 1
            if progress is not None:
                progress(cfg, s)
    summary = pd.concat(rows, ignore_index=True)
    summary["experiment"] = summary["experiment"].astype(str)
    n_out = int(summary.drop_duplicates("run")["extrapolated"].sum())
    summary.attrs["note"] = (f"{n_out} of {len(configs)} configuration(s) lie outside what the "
                             f"calibration measured (column 'outside'): extrapolated"
                             if n_out else "")
    if records:
        return summary, pd.concat(recs, ignore_index=True)
    return summary


def _schedule_seed(cfg: Config, seed: int) -> float:
    """The seed a run's schedule was drawn from (NaN: closed loop, no schedule)."""
    if not workload.open_loop(cfg):
        return float("nan")
    return seed if cfg.arrivals_seed is None else cfg.arrivals_seed


def _calibrations(source) -> dict:
    """(strategy kind, dispatch kind) -> Calibration; a hand-made one (no design) under None."""
    if isinstance(source, Calibration):
        return {(source.strategy, source.dispatch) if source.strategy else None: source}
    if isinstance(source, Mapping) and source and all(isinstance(c, Calibration)
                                                      for c in source.values()):
        return dict(source)
    return calibrate_each(source)


def _calibration_for(cals: dict, cfg: Config) -> Calibration:
    if None in cals:
        return cals[None]
    key = (kind(cfg.strategy), kind(cfg.dispatch))
    if key not in cals:
        have = ", ".join(f"{s} with {d}" for s, d in cals)
        raise ValueError(f"no calibration for strategy {cfg.strategy} with dispatch "
                         f"{cfg.dispatch}: the calibration measured only {have}")
    return cals[key]


def bottleneck(pred: pd.DataFrame, threshold: float = SATURATED) -> list[str]:
    """One line per predicted configuration: which single-threaded process (client or server)
    is the busier, and whether it limits the run (busy ``threshold`` of the makespan or more),
    from the predicted utilisations: the conclusion the data draws, whatever it is."""
    axes = [c for c in ("dispatch", "strategy", "batch_size", "workers", "hosts")
            if c in pred and pred[c].nunique() > 1] or ["batch_size", "workers"]
    lines = []
    for key, g in pred.groupby(axes, sort=True, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        where = ", ".join(f"{a.replace('_', ' ')} {v}" for a, v in zip(axes, key))
        client, server = g["client_utilisation"].median(), g["server_utilisation"].median()
        top, other = ("client", "server") if client >= server else ("server", "client")
        busy, rest = max(client, server), min(client, server)
        verdict = (f"the {top} limits it ({busy:.0%} busy; {other} {rest:.0%})"
                   if busy >= threshold else
                   f"neither one-thread process limits it (client {client:.0%}, server "
                   f"{server:.0%} busy): the workers do")
        lines.append(f"{where}: {verdict}")
    return lines


def sweep(**axes) -> list[dict]:
    """Configs for every combination of the axes given as lists (``batch_size=[1, 16]``,
    ``workers=[10, 100]``, ...) and scalars (the same for all)."""
    import itertools
    keys = list(axes)
    lists = [v if isinstance(v, Iterable) and not isinstance(v, str) else [v]
             for v in axes.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*lists)]
