"""``run_experiment``: sweep the system in background processes, return per-task records.

Runs are ordered so that every run with the same (transport, workers) shares one server and
pool; a strategy change between runs is a control message, not a restart. The client is a
long-lived agent process that starts a fresh client (fresh sockets, fresh port) per run. The
clock of a run starts after the client's handshake with the server, so neither process start-up
nor connection set-up is measured. Whatever happens, every process started here is stopped before
``run_experiment`` returns or raises, and every finished run is already on disk.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import itertools
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .. import data
from ..system import strategies
from . import clocks, ideal, records
from .processes import AgentProcess, ServerProcess, workdir as _workdir
from .results import ResultStore

TRANSPORTS = ("tcp", "ipc")
REMOTE_JOIN_TIMEOUT_S = 30.0  # how long a server waits for the remote workers to join


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _load_inputs(commands, server_map, wait_scale: float):
    tasks = data.read_commands(commands if commands is not None
                               else data.seed_path("client_data.txt"))
    smap = data.read_server_map(server_map if server_map is not None
                                else data.seed_path("server_data.txt"))
    if wait_scale != 1.0:
        smap = data.scale_waits(smap, wait_scale)
    return tasks, smap


def default_timeout(batches: list, workers: int, strategy: str, rate: float | None,
                    n_tasks: int) -> float:
    """Generous: the ideal time three times over, plus slack for zero-wait runs."""
    ideal_s = ideal.ideal_makespan(batches, workers, strategy)
    if rate:
        ideal_s = max(ideal_s, n_tasks / rate)
    return 10.0 + 3.0 * ideal_s + n_tasks * 20e-6


def run_experiment(batch_sizes=(1, 4, 16, 64), workers=(1, 4, 16, 32), repeats: int = 3,
                   commands=None, server_map=None, strategy=strategies.DEFAULT,
                   transport="tcp", wait_scale: float = 1.0, timeout: float | None = None,
                   progress: bool = True, results_dir="results", name: str | None = None,
                   rate=None, networks=(), resume: bool = True, remote_workers: int = 0,
                   workers_url: str | None = None, server_address: str = "127.0.0.1",
                   client_address: str = "127.0.0.1", server_prefix=()) -> pd.DataFrame:
    """Run every combination of the swept axes x repeats; return one row per task per run.

    ``batch_sizes``, ``workers``, ``strategy``, ``transport`` and ``rate`` (tasks/s, open loop;
    None = as fast as possible) may each be a value or a list; lists are swept. ``commands`` is
    a path or a list of "ip:command" strings, ``server_map`` a path or a dict
    ip -> command -> (response, wait); both default to the shipped seed data. Results go to
    ``results_dir/name`` (name None: a timestamp); with ``resume`` a rerun of the same name and
    parameters skips the runs already saved.

    Remote workers: with ``remote_workers=N`` the server also binds ``workers_url`` (e.g.
    "tcp://0.0.0.0:5558") and each server waits until N remote workers (``comlab worker-host``
    processes, started by you, elsewhere) have joined; ``workers`` (the local pool, swept) may
    then be 0, and a run's ``workers`` is local + remote. ``server_address`` and
    ``client_address`` are the interfaces the server's batch socket and the client's result
    socket bind (loopback by default: other hosts cannot reach them); ``server_prefix`` runs the
    server under a command (``["ip", "netns", "exec", "ns"]``, ``["taskset", "-c", "0"]``).
    Before each run every host's clock offset against the client's is estimated
    (``comlab.clocks``); stamps of other hosts are converted to the client's clock, and the
    offsets with their uncertainties go into the run's entry in meta.json (``clock``).
    """
    batch_sizes, workers = [int(b) for b in _as_list(batch_sizes)], [int(w) for w in
                                                                     _as_list(workers)]
    strats = [strategies.check(s) for s in _as_list(strategy)]
    transports = _as_list(transport)
    rates = _as_list(rate)
    for t in transports:
        if t not in TRANSPORTS:
            raise ValueError(f"unknown transport {t!r}; use one of {TRANSPORTS}")
    if min(batch_sizes) < 1 or min(workers) < (0 if remote_workers else 1) or repeats < 1:
        raise ValueError("batch sizes, workers and repeats must be at least 1 "
                         "(workers 0: remote workers only)")
    if remote_workers and not workers_url:
        raise ValueError("remote_workers needs workers_url: where worker hosts connect")
    if remote_workers and "ipc" in transports:
        raise ValueError("remote workers send results to the client over tcp: transport ipc "
                         "cannot be used with them")
    tasks, smap = _load_inputs(commands, server_map, wait_scale)
    keys = [f"{ip}:{cmd}" for ip, cmd in tasks]
    table = _reachable(smap.flat(), networks)
    waits = np.array([table.get(k, (0, 0.0))[1] for k in keys], dtype=float)

    name = name or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    params = {"batch_sizes": batch_sizes, "workers": workers, "repeats": repeats,
              "strategy": strats, "transport": transports, "rate": rates,
              "wait_scale": wait_scale, "timeout": timeout, "networks": list(networks),
              "commands": str(commands) if not isinstance(commands, list) else
              f"<list of {len(commands)}>", "n_tasks": len(keys),
              "server_map": str(server_map) if not isinstance(server_map, dict) else
              f"<dict of {len(table)}>"}
    if remote_workers:
        params.update(remote_workers=int(remote_workers), workers_url=workers_url)
    store = ResultStore(Path(results_dir) / name, params, resume=resume)
    done = store.finished()

    plan = list(itertools.product(transports, workers, strats, batch_sizes, rates,
                                  range(repeats)))
    bar = _progress(len(plan), progress)
    tmp = _workdir()
    map_file = os.path.join(tmp, "server_map.txt")
    _write_map(smap, map_file)
    agent = server = None
    try:
        for (transport_, workers_), group in itertools.groupby(
                enumerate(plan), key=lambda item: (item[1][0], item[1][1])):
            group = list(group)
            todo = [(i, p) for i, p in group if _key(p) not in done]
            bar.update(len(group) - len(todo))
            if not todo:
                continue
            agent = agent or AgentProcess(tmp)
            server = ServerProcess(map_file, workers_, tmp, transport=transport_,
                                   networks=networks, strategy=todo[0][1][2],
                                   workers_url=workers_url if remote_workers else None,
                                   address=server_address, prefix=server_prefix)
            n_workers = workers_ + remote_workers
            if remote_workers:
                server.wait_for_workers(n_workers, REMOTE_JOIN_TIMEOUT_S)
            current = todo[0][1][2]
            for i, p in todo:
                _, _, strat, size, rate_, repeat = p
                if strat != current:
                    server.control("strategy", strat)
                    current = strat
                clock = clocks.estimate(server)  # every host's offset against the client's
                t_run = time.perf_counter()
                batches = [waits[b:b + size].tolist() for b in range(0, len(keys), size)]
                run_timeout = timeout or default_timeout(batches, n_workers, strat, rate_,
                                                         len(keys))
                bind = (f"ipc://{tmp}/client-{i}" if transport_ == "ipc"
                        else f"tcp://{client_address}:*")
                answer = agent.run(keys, batch_size=size, bind_url=bind,
                                   server_url=server.url, timeout=run_timeout, rate=rate_)
                answer["columns"] = records.to_client_clock(
                    answer["columns"], clock["offsets_ns"], clock["server_host"])
                info = {"experiment": name, "run": i, "repeat": repeat, "batch_size": size,
                        "workers": n_workers, "strategy": strat, "transport": transport_}
                if remote_workers:
                    info["remote_workers"] = remote_workers
                if rate_ is not None:
                    info["rate"] = float(rate_)
                # Raises InvariantError unless each task sent has exactly one final record.
                df = records.build(answer["columns"], answer["t_start"], keys=keys,
                                   waits=waits, run_info=info, open_loop=rate_ is not None,
                                   accepted=answer["accepted"])
                store.save_run(df, {"key": _key(p), "run": i, **info,
                                    "server_start_s": round(server.start_s, 4),
                                    "run_wall_s": round(time.perf_counter() - t_run, 4),
                                    "duplicates": answer["duplicates"],
                                    "garbage": answer["garbage"],
                                    "clock": {"client_host": clock["client_host"],
                                              "hosts": clock["hosts"]}})
                bar.update(1)
            server.stop()
            server = None
        return store.finish()
    except BaseException:
        if server is not None:
            server.stop()
            server = None
        try:
            store.finish()  # join what finished; never mask the exception that got us here
        except Exception as exc:
            warnings.warn(f"could not join the finished runs of {store.path}: {exc}")
        raise
    finally:
        if server is not None:
            server.stop()
        if agent is not None:
            agent.stop()
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _reachable(table: dict, networks) -> dict:
    """The entries a worker will run: the server answers the rest at once (wait 0)."""
    if not networks:
        return table
    nets = [ipaddress.ip_network(n, strict=False) for n in networks]
    return {k: v for k, v in table.items()
            if any(ipaddress.ip_address(k.partition(":")[0]) in net for net in nets)}


def _key(p) -> str:
    transport, workers, strat, size, rate, repeat = p
    return f"{transport}|{workers}|{strat}|{size}|{rate}|{repeat}"


def _write_map(smap: data.ServerMap, path: str) -> None:
    with open(path, "w") as f:
        for ip, cmds in smap.items():
            for cmd, (response, wait) in cmds.items():
                f.write(f"{ip}:{cmd}:{response}:{wait!r}\n")


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, disable=not enabled, desc="comlab runs", unit="run")


summarize = records.summarize
