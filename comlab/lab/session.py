"""A sweep's processes: the client agent and one server at a time, owned as context managers.

``with Session(...) as session:`` creates a private work directory (ipc endpoints, logs, the
server map the servers load); ``with session.server(transport, workers, strategy) as server:``
starts a server and its pool; ``session.measure(server, spec, ...)`` runs one client and returns
its records and its meta.json entry. Leaving a ``with`` block for any reason (an exception, a
run's timeout, KeyboardInterrupt) stops what it started, so nothing outlives ``run_experiment``.

With ``hosts`` (comlab.lab.hosts) the session starts the worker hosts once, before the first
server, and every server waits for all of their workers. A run during which a host was lost is
refused (HostLost), and so is one during which the server lost or retried any worker (a host
frozen but alive, a local worker killed: WorkersLost): its numbers include the retries.
``on_host_loss="continue"`` starts a lost host again and waits for every worker before the next
run, "stop" lets the error end the sweep. With ``secure`` (the default with ``hosts``;
``secure=False`` opts out) the session makes a fresh CurveZMQ deployment in its work directory:
the server, the client and the local workers load it, and each worker host gets a worker keypair
of its own on stdin (nothing on its disk; one host's key is not another's).
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
from .hosts import HostError, HostGroup, HostLost, WorkersLost
from .plan import RunSpec
from .processes import AgentProcess, ServerProcess, workdir as make_workdir

REMOTE_JOIN_TIMEOUT_S = 30.0  # how long a server waits for the remote workers to join
# The server's counters that say a run was disturbed: a worker lost (heartbeats, overdue, its
# connection), dead, or a batch retried. Such a run is refused (WorkersLost), whoever's worker.
LOSS_COUNTERS = ("workers_lost", "worker_deaths", "retried")
# The server lost workers in a run: was it their host? Its ssh ends once the remote session's
# last process (a worker finishing its batch) has closed the session's pipes.
HOST_EXIT_WAIT_S = 5.0


class Session:
    """Owns the work directory, the client agent and the servers of one sweep."""

    def __init__(self, smap: data.ServerMap, *, networks=(), remote_workers: int = 0,
                 workers_url: str | None = None, server_address: str = "127.0.0.1",
                 client_address: str = "127.0.0.1", server_prefix=(), hosts=None,
                 ssh_config: str | None = None, secure: bool | None = None,
                 host_log_dir=None, on_host_loss: str = "stop", probes=None,
                 task: dict | None = None) -> None:
        self.smap = smap
        self.task = task  # the servers' own task (comlab.system.usertask.spec)
        self.networks = list(networks)
        self.hosts_spec = list(hosts or ())
        self.ssh_config = ssh_config
        self.secure = bool(self.hosts_spec) if secure is None else bool(secure)
        self.insecure = secure is False  # said so: plain-TCP workers on a reachable URL
        self.host_log_dir, self.on_host_loss = host_log_dir, on_host_loss
        self.log_dir = None  # where the log of a lab process that died is kept
        self.probes = probes
        self.hosts: HostGroup | None = None
        self._dead: dict[str, str] = {}   # hosts that could not be started again: why
        self._clocks: dict[str, dict] = {}  # each host's last clock estimate (jumps)
        self.remote_workers = int(remote_workers) + sum(h.workers for h in self.hosts_spec)
        if self.hosts_spec and not workers_url:
            workers_url = f"tcp://{server_address}:{free_port(server_address)}"
        self.workers_url = workers_url if self.remote_workers else None
        self.server_address, self.client_address = server_address, client_address
        self.server_prefix = list(server_prefix)
        self._stack = contextlib.ExitStack()
        self._agent: AgentProcess | None = None
        self._strategy: str | None = None
        self._disturbed = False  # the last run lost workers: wait for all before the next

    def __enter__(self) -> "Session":
        self.workdir = make_workdir()
        self._stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        self.map_file = os.path.join(self.workdir, "server_map.txt")
        try:
            write_map(self.smap, self.map_file)
            self.keys_dir = self._make_keys() if self.secure else None
            if self.hosts_spec:
                log_dir = self.host_log_dir or os.path.join(self.workdir, "hosts")
                self.hosts = self._stack.enter_context(HostGroup(
                    self.hosts_spec, self.workers_url, log_dir, ssh_config=self.ssh_config,
                    keys=self._host_keys if self.secure else None, probes=self.probes))
        except BaseException:
            self._stack.close()
            raise
        return self

    def _make_keys(self) -> str:
        from ..system.security import AUTHORIZED, create_keys
        path = os.path.join(self.workdir, "keys")
        create_keys(path)
        # Local workers use the server's keypair; each host gets its own (``_host_keys``):
        # the deployment's shared worker key is accepted nowhere.
        os.remove(os.path.join(path, AUTHORIZED, "worker.key"))
        self._keys_of: dict[str, dict] = {}
        return path

    def _host_keys(self, name: str) -> dict:
        """Host ``name``'s own worker keys as it reads them on stdin (z85 text); made once, in
        the server's authorized list before any server starts."""
        from ..system.security import create_host_keys
        if name not in self._keys_of:
            self._keys_of[name] = create_host_keys(self.keys_dir, name)
        return self._keys_of[name]

    def __exit__(self, *exc) -> None:
        self._stack.close()  # the agent first (last in), then the work directory

    @property
    def agent(self) -> AgentProcess:
        if self._agent is None:
            self._agent = self._stack.enter_context(AgentProcess(
                self.workdir, curve_keys=self.keys_dir, keep_dir=self.log_dir))
        return self._agent

    @contextlib.contextmanager
    def server(self, transport: str, workers: int, strategy: str, dispatch: str | None = None):
        """A server with ``workers`` local workers (plus the remote ones), stopped on exit."""
        with ServerProcess(self.map_file, workers, self.workdir, transport=transport,
                           networks=self.networks, strategy=strategy, dispatch=dispatch,
                           workers_url=self.workers_url, address=self.server_address,
                           prefix=self.server_prefix, curve_keys=self.keys_dir,
                           keep_dir=self.log_dir, insecure=self.insecure,
                           task=self.task) as server:
            if self.remote_workers:
                server.wait_for_workers(workers + self.remote_workers, REMOTE_JOIN_TIMEOUT_S,
                                        names=self.hosts.worker_names() if self.hosts else ())
            self._strategy = strategy
            self._local = workers
            yield server

    def _hosts_ready(self, server: ServerProcess) -> None:
        """Before a run: every host is there, or (on_host_loss "continue") started again; after
        a run that lost workers, every worker is back."""
        if self.hosts is not None:
            if self._dead:
                raise HostLost(next(iter(self._dead.values())))
            lost = self.hosts.lost()
            if lost and self.on_host_loss != "continue":
                self.hosts.check()
            for p in lost:
                try:
                    self.hosts.restart(p.host.name)
                except HostError as exc:
                    self._dead[p.host.name] = f"{exc} (it was lost and could not be started again)"
                    raise HostLost(self._dead[p.host.name]) from None
            self._disturbed = self._disturbed or bool(lost)
        if self._disturbed:
            server.wait_for_workers(self._local + self.remote_workers, REMOTE_JOIN_TIMEOUT_S,
                                    names=self.hosts.worker_names() if self.hosts else ())
            self._disturbed = False

    def measure(self, server: ServerProcess, spec: RunSpec, *, keys: list, waits: np.ndarray,
                timeout: float, experiment: str) -> tuple[pd.DataFrame, dict]:
        """One run: a fresh client against ``server``; its records and its meta.json entry."""
        if spec.strategy != self._strategy:
            server.control("strategy", spec.strategy)
            self._strategy = spec.strategy
        self._hosts_ready(server)
        clock = clocks.estimate(server, previous=self._clocks)  # each host's against ours
        before = stability.RunConditions.start(server)
        t_run = time.perf_counter()
        bind = (f"ipc://{self.workdir}/client-{spec.index}" if spec.transport == "ipc"
                else f"tcp://{self.client_address}:*")
        log_path = os.path.join(self.workdir, f"results-{spec.index}.log")
        schedule = spec.schedule(len(keys))  # drawn before the clock starts
        trace = spec.arrivals.trace
        try:
            run = self.agent.run(keys, server, batch_size=spec.batch_size, bind_url=bind,
                                 server_url=server.url, timeout=timeout, schedule=schedule,
                                 task_offsets=None if trace is None else trace.offsets,
                                 log_path=log_path)
            wall = time.perf_counter() - t_run
            conditions = before.end(server)
            lost = {k: conditions["server"].get(k, 0) for k in LOSS_COUNTERS
                    if conditions["server"].get(k, 0)}
            self._disturbed = bool(lost)
            if self.hosts is not None:  # a host lost in the run: its numbers include retries
                self.hosts.check(wait_s=HOST_EXIT_WAIT_S if lost else 0.0)
            if lost:  # the rule for every worker: local, remote, a host frozen but alive
                raise WorkersLost(
                    f"run {spec.index} ({spec.label()}) is not saved: the server "
                    f"lost or retried workers during it ("
                    + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in lost.items())
                    + "), so its numbers include the retries")
            columns = records.to_client_clock(run.columns(), clock["offsets_ns"],
                                              clock["server_host"])
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(log_path)
        info = self.run_info(spec, experiment)
        # Raises InvariantError unless each task sent has exactly one final record.
        df = records.build(columns, run.t_start, keys=keys, waits=waits, run_info=info,
                           open_loop=spec.open_loop, accepted=run.accepted)
        entry = {"key": spec.key, **info, "timeout_s": round(timeout, 4),
                 **({"arrivals_seed": spec.seed} if spec.open_loop else {}),
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
        if spec.open_loop:
            info["arrivals"] = spec.arrivals.spec
        return info


def free_port(address: str) -> int:
    """A TCP port free on ``address`` now (the worker hosts need one that outlives servers)."""
    import socket
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def write_map(smap: data.ServerMap, path: str) -> None:
    """The server map as the server reads it (waits already scaled)."""
    with open(path, "w") as f:
        for ip, cmds in smap.items():
            for cmd, (response, wait) in cmds.items():
                f.write(f"{ip}:{cmd}:{response}:{wait!r}\n")
