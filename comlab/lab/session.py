"""A sweep's processes: the client agent and one server at a time, owned as context managers.

``with Session(...) as session:`` creates a private work directory (ipc endpoints, logs, the
server map the servers load); ``with session.server(transport, workers, strategy) as server:``
starts a server and its pool; ``session.measure(server, spec, ...)`` runs one client and returns
its records and its meta.json entry. Leaving a ``with`` block for any reason (an exception, a
run's timeout, KeyboardInterrupt) stops what it started, so nothing outlives ``run_experiment``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time

import numpy as np
import pandas as pd

from .. import data
from . import clocks, records, stability
from .plan import RunSpec
from .processes import AgentProcess, ServerProcess, workdir as make_workdir

REMOTE_JOIN_TIMEOUT_S = 30.0  # how long a server waits for the remote workers to join


class Session:
    """Owns the work directory, the client agent and the servers of one sweep."""

    def __init__(self, smap: data.ServerMap, *, networks=(), remote_workers: int = 0,
                 workers_url: str | None = None, server_address: str = "127.0.0.1",
                 client_address: str = "127.0.0.1", server_prefix=()) -> None:
        self.smap = smap
        self.networks = list(networks)
        self.remote_workers = int(remote_workers)
        self.workers_url = workers_url if remote_workers else None
        self.server_address, self.client_address = server_address, client_address
        self.server_prefix = list(server_prefix)
        self._stack = contextlib.ExitStack()
        self._agent: AgentProcess | None = None
        self._strategy: str | None = None

    def __enter__(self) -> "Session":
        self.workdir = make_workdir()
        self._stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        self.map_file = os.path.join(self.workdir, "server_map.txt")
        try:
            write_map(self.smap, self.map_file)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()  # the agent first (last in), then the work directory

    @property
    def agent(self) -> AgentProcess:
        if self._agent is None:
            self._agent = self._stack.enter_context(AgentProcess(self.workdir))
        return self._agent

    @contextlib.contextmanager
    def server(self, transport: str, workers: int, strategy: str, dispatch: str | None = None):
        """A server with ``workers`` local workers (plus the remote ones), stopped on exit."""
        with ServerProcess(self.map_file, workers, self.workdir, transport=transport,
                           networks=self.networks, strategy=strategy, dispatch=dispatch,
                           workers_url=self.workers_url, address=self.server_address,
                           prefix=self.server_prefix) as server:
            if self.remote_workers:
                server.wait_for_workers(workers + self.remote_workers, REMOTE_JOIN_TIMEOUT_S)
            self._strategy = strategy
            yield server

    def measure(self, server: ServerProcess, spec: RunSpec, *, keys: list, waits: np.ndarray,
                timeout: float, experiment: str) -> tuple[pd.DataFrame, dict]:
        """One run: a fresh client against ``server``; its records and its meta.json entry."""
        if spec.strategy != self._strategy:
            server.control("strategy", spec.strategy)
            self._strategy = spec.strategy
        clock = clocks.estimate(server)  # every host's offset against the client's
        before = stability.RunConditions.start(server)
        t_run = time.perf_counter()
        bind = (f"ipc://{self.workdir}/client-{spec.index}" if spec.transport == "ipc"
                else f"tcp://{self.client_address}:*")
        log_path = os.path.join(self.workdir, f"results-{spec.index}.log")
        try:
            run = self.agent.run(keys, batch_size=spec.batch_size, bind_url=bind,
                                 server_url=server.url, timeout=timeout, rate=spec.rate,
                                 log_path=log_path)
            wall = time.perf_counter() - t_run
            conditions = before.end(server)
            columns = records.to_client_clock(run.columns(), clock["offsets_ns"],
                                              clock["server_host"])
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(log_path)
        info = self.run_info(spec, experiment)
        # Raises InvariantError unless each task sent has exactly one final record.
        df = records.build(columns, run.t_start, keys=keys, waits=waits, run_info=info,
                           open_loop=spec.rate is not None, accepted=run.accepted)
        entry = {"key": spec.key, **info, "timeout_s": round(timeout, 4),
                 "server_start_s": round(server.start_s, 4), "run_wall_s": round(wall, 4),
                 "duplicates": run.duplicates, "garbage": run.garbage,
                 **conditions,
                 "clock": {"client_host": clock["client_host"], "hosts": clock["hosts"]}}
        return df, entry

    def run_info(self, spec: RunSpec, experiment: str) -> dict:
        """The columns every record of the run carries."""
        info = {"experiment": experiment, "run": spec.index, "repeat": spec.repeat,
                "batch_size": spec.batch_size, "workers": spec.workers + self.remote_workers,
                "strategy": spec.strategy, "transport": spec.transport,
                "dispatch": spec.dispatch}
        if self.remote_workers:
            info["remote_workers"] = self.remote_workers
        if spec.rate is not None:
            info["rate"] = float(spec.rate)
        return info


def write_map(smap: data.ServerMap, path: str) -> None:
    """The server map as the server reads it (waits already scaled)."""
    with open(path, "w") as f:
        for ip, cmds in smap.items():
            for cmd, (response, wait) in cmds.items():
                f.write(f"{ip}:{cmd}:{response}:{wait!r}\n")
