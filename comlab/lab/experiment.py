"""``run_experiment``: plan -> session -> save.

* ``plan`` (comlab.lab.plan): the runs of the sweep, pure; runs that share a server are adjacent.
* ``Session`` (comlab.lab.session): the processes (client agent, one server at a time) as context
  managers: whatever happens, everything started is stopped before ``run_experiment`` returns or
  raises.
* ``ResultStore`` (comlab.lab.results): each finished run is on disk at once; resume, refusal,
  locking and the format of meta.json live there.

The clock of a run starts after the client's handshake with the server, so neither process
start-up nor connection set-up is measured.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import ComlabWarning, arrivals as arrivals_mod, data
from ..system import strategies, usertask
from ..system.security import is_local_url
from . import plan as planning
from . import checks, provenance, records, stability
from .defaults import DEFAULTS
from . import hosts as hosts_mod
from .hosts import HostLost
from .results import ResultStore, check_name
from .session import Session

LONG_SWEEP_S = 600.0  # confirm (or warn) before a sweep whose ideal time alone is longer
SEED_WAIT_SCALE = 0.01  # the shipped seed's 1 s waits as 10 ms: same shape, minutes not hours


@dataclass
class Inputs:
    """The data a sweep actually uses: tasks, the (scaled) server map, where they came from."""
    keys: list
    waits: np.ndarray
    smap: data.ServerMap
    commands_source: str
    map_source: str

    def params(self) -> dict:
        return {"commands": self.commands_source, "server_map": self.map_source,
                "n_tasks": len(self.keys),
                "data_sha256": provenance.data_hash(self.keys, self.smap)}


def load_inputs(commands, server_map, wait_scale: float, networks=()) -> Inputs:
    """Read and check the data (shipped seed files by default); scale the waits."""
    commands = commands if commands is not None else data.seed_path("client_data.txt")
    server_map = server_map if server_map is not None else data.seed_path("server_data.txt")
    tasks = data.read_commands(commands)
    smap = data.read_server_map(server_map)
    if wait_scale != 1.0:
        smap = data.scale_waits(smap, wait_scale)
    keys = [f"{ip}:{cmd}" for ip, cmd in tasks]
    table = _reachable(smap.flat(), networks)
    waits = np.array([table.get(k, (0, 0.0))[1] for k in keys], dtype=float)
    return Inputs(keys, waits, smap, _source(commands), _source(server_map))


def run_experiment(batch_sizes=DEFAULTS["batch_sizes"], workers=DEFAULTS["workers"],
                   repeats: int = DEFAULTS["repeats"], commands=None, server_map=None,
                   strategy=DEFAULTS["strategy"], transport=DEFAULTS["transport"],
                   wait_scale: float | None = DEFAULTS["wait_scale"],
                   timeout: float | None = DEFAULTS["timeout"],
                   progress: bool = True, results_dir=DEFAULTS["results_dir"],
                   name: str | None = DEFAULTS["name"], rate=DEFAULTS["rate"], networks=(),
                   resume: bool = True, remote_workers: int = DEFAULTS["remote_workers"],
                   workers_url: str | None = None,
                   server_address: str = DEFAULTS["server_address"],
                   client_address: str = DEFAULTS["client_address"], server_prefix=(),
                   fresh: bool = False, dispatch=DEFAULTS["dispatch"],
                   confirm=None, hosts=None, ssh_config=None,
                   secure: bool | None = DEFAULTS["secure"],
                   on_host_loss: str = DEFAULTS["on_host_loss"],
                   arrivals=DEFAULTS["arrivals"], task: str | None = DEFAULTS["task"],
                   task_command: str | None = DEFAULTS["task_command"],
                   task_timeout: float | None = DEFAULTS["task_timeout"]) -> pd.DataFrame:
    """Run every combination of the swept axes x repeats; return one row per task per run.

    Its defaults are ``comlab.lab.defaults.DEFAULTS``, the command line's too.

    ``batch_sizes``, ``workers``, ``strategy``, ``transport``, ``dispatch`` (broker, broker:K,
    queue: comlab.system.dispatch) and ``rate`` (tasks/s, open loop; None = as fast as possible)
    may each be a value or a list; lists are swept. ``arrivals`` (a value or a list, swept) is
    the open-loop arrival process (comlab.arrivals): ``constant`` (evenly spaced batches;
    without a rate, the closed loop), ``poisson`` and ``bursty:ON,OFF`` (with a rate),
    ``ramp:R0,R1,SECONDS``, ``step:R1@T1,...`` and ``trace:FILE`` (their own rates: rate None;
    a trace's tasks are the sweep's commands). Each run's schedule is drawn before its clock
    starts, from a seed of its own (meta.json's ``arrivals_seed``). ``commands`` is
    a path or a list of "ip:command" strings, ``server_map`` a path or a dict
    ip -> command -> (response, wait); both default to the shipped seed data. Results go to
    ``results_dir/name`` (name None: a timestamp; a plain name, no path separators).

    ``wait_scale`` multiplies every wait of the server map; None (the default) means 0.01 for
    the shipped seed map (its 1 s waits become 10 ms: same shape, a sweep in minutes) and 1 for
    a map of your own (never scaled unless asked). ``repeats`` defaults to 2. ``timeout`` (s per
    run, at most 1e6) defaults to the run's ideal time three times over plus 10 s.
    A sweep whose ideal time exceeds 10 minutes calls ``confirm(message)`` first (None: only a
    warning); a false answer raises ``SweepDeclined`` before anything starts.

    Every argument is checked before anything is written or started (TypeError or ValueError
    naming the parameter: ``repeats=2.5``, ``batch_sizes=[1.5]``, ``timeout=0`` are refused),
    and so is the machine: the largest pool, with the threads its workers keep warm, must fit
    its processes/threads and memory (comlab.lab.checks.machine_room). A batch size above the
    number of tasks runs as that number (one warning).

    Saving (comlab.lab.results): a rerun of the same name resumes, skipping the runs saved
    already, only when the parameters, the data's content, the comlab commit (and dirty state),
    the host, its CPU count and the library versions all match; otherwise it refuses, naming
    what differs. ``fresh=True`` (or ``resume=False``) starts afresh after moving an earlier
    result aside to ``<name>.<its start time>`` (nothing is deleted). A result is locked while
    a sweep writes it: a second sweep on it fails at once.

    Remote workers: with ``remote_workers=N`` the server also binds ``workers_url`` (e.g.
    "tcp://0.0.0.0:5558") and each server waits until N remote workers (``comlab worker-host``
    processes, started by you, elsewhere) have joined; ``workers`` (the local pool, swept) may
    then be 0, and a run's ``workers`` is local + remote. ``server_address`` and
    ``client_address`` are the interfaces the server's batch socket and the client's result
    socket bind (loopback by default: other hosts cannot reach them); ``server_prefix`` runs the
    server under a command (``["ip", "netns", "exec", "ns"]``, ``["taskset", "-c", "0"]``).
    Worker hosts started by the lab (comlab.lab.hosts): ``hosts`` is a list of entries
    (``"ssh://[user@]host[:port] workers=N python=PATH workdir=DIR name=NAME"``, ``"local"``
    or a command prefix such as ``"ip netns exec h1 workers=2"``) or a hosts file's path; the
    lab checks each host's comlab and protocol version, starts ``comlab worker-host`` there
    (its log in ``<result>/hosts/NAME.log``), and stops it when the sweep ends however it ends
    (a SIGKILLed lab's hosts stop too: their stdin closes). Their workers are added to every
    run's (as with ``remote_workers``); ``workers_url`` defaults to a free port on
    ``server_address``, which (with ``client_address``) must be an address the hosts reach.
    ``ssh_config`` is passed to ssh as ``-F``. A run during which the server lost or retried any
    worker (a host lost or frozen, a local worker killed or wedged) is not saved: its numbers
    include the retries. ``on_host_loss="stop"`` (the default) ends the sweep with the error
    (HostLost naming the host and its last log lines, or WorkersLost naming the server's
    counters), ``"continue"`` starts a lost host again, waits for every worker and goes on, and
    lists the runs that failed in meta.json (``failed_runs``) and a warning: a rerun measures
    them.
    ``secure=True`` makes a fresh CurveZMQ deployment for the sweep: server, client and all
    workers encrypt and authenticate; each worker host gets a keypair of its own over its stdin.
    With ``hosts`` that is the default (``secure=False`` opts out: plain TCP, any peer that
    reaches ``workers_url`` can be a worker); a ``workers_url`` other hosts reach without
    ``hosts`` needs ``secure=False`` said explicitly.
    Your own task (comlab.system.usertask; the how-to "your own task"): ``task=
    "module:function"`` runs ``function(ip, command, response, wait)`` for each task instead of
    the emulated sleep, and what it returns is the record's ``response``; ``task_command=
    "ping -c1 -W1 {ip}"`` runs that command (no shell) per task, killed after ``task_timeout``
    s (default 10): exit status 0 is ok. Both are imported or parsed before anything starts,
    and run on the server's local workers only (not with remote workers or hosts).
    Before each run every host's clock offset against the client's is estimated
    (``comlab.lab.clocks``); stamps of other hosts are converted to the client's clock, and the
    offsets with their uncertainties go into the run's entry in meta.json (``clock``).
    """
    checks.counts(batch_sizes, "batch_sizes")
    checks.counts(workers, "workers", 0)
    checks.count(repeats, "repeats")
    checks.count(remote_workers, "remote_workers", 0)
    checks.names(strategy, "strategy")
    checks.names(transport, "transport")
    checks.names(dispatch, "dispatch")
    checks.rates(rate)
    processes = _arrival_processes(arrivals)
    checks.seconds(timeout, "timeout", none_ok=True)
    wait_scale = default_wait_scale(server_map) if wait_scale is None else \
        checks.non_negative(wait_scale, "wait_scale")
    checks.results_dir(results_dir)
    if name is not None:
        check_name(name, results_dir)
    _check_addresses(server_address, client_address, workers_url, server_prefix)
    if on_host_loss not in ("stop", "continue"):
        raise ValueError(f"on_host_loss must be 'stop' or 'continue', got {on_host_loss!r}")
    host_list = hosts_mod.parse_hosts(hosts) if hosts is not None else []
    all_remote = remote_workers + sum(h.workers for h in host_list)
    own_task = usertask.spec(task, task_command, task_timeout)
    if own_task is not None and all_remote:
        raise ValueError("task and task_command run on the server's local workers only: not "
                         "with remote_workers or hosts")
    trace = next((a.trace for a in processes if a.trace is not None), None)
    if trace is not None and commands is not None:
        raise ValueError("arrivals trace:FILE brings its own tasks: leave commands unset")
    planning.check_arrivals(processes, planning.as_list(rate))
    inputs = load_inputs(trace.keys if trace else commands, server_map, wait_scale, networks)
    if trace is not None:
        inputs.commands_source = next(a.spec for a in processes if a.trace is not None)
    batch_sizes = checks.batch_sizes_for(batch_sizes, len(inputs.keys))
    specs = planning.plan(batch_sizes, workers, repeats, strategy, transport, rate,
                          remote_workers=all_remote, dispatch=dispatch, arrivals=processes)
    _check_remote(remote_workers, workers_url, specs)
    if secure is None:
        secure = bool(host_list)
        if remote_workers and workers_url and not host_list and not is_local_url(workers_url):
            raise ValueError(f"workers_url {workers_url} is reachable from other hosts: pass "
                             "secure=False to accept plain-TCP worker peers there")
    _check_hosts(host_list, specs, server_address, client_address, workers_url)
    checks.machine_room(specs, len(inputs.keys),
                        sum(h.workers for h in host_list if h.kind != "ssh"))
    _confirm_if_long(specs, inputs, all_remote, confirm)
    params = {"batch_sizes": [int(b) for b in planning.as_list(batch_sizes)],
              "workers": [int(w) for w in planning.as_list(workers)], "repeats": repeats,
              "strategy": [strategies.check(s) for s in planning.as_list(strategy)],
              "transport": planning.as_list(transport), "rate": planning.as_list(rate),
              "dispatch": planning.as_list(dispatch),
              "wait_scale": wait_scale, "timeout": timeout, "networks": list(networks),
              **inputs.params()}
    if [a.spec for a in processes] != ["constant"]:  # as before arrivals: resumable
        params.update(arrivals=[a.spec for a in processes])
    if remote_workers:
        params.update(remote_workers=int(remote_workers), workers_url=workers_url)
    if host_list:
        params.update(hosts=[h.describe() for h in host_list])
    if secure:
        params.update(secure=True)
    if own_task is not None:  # only when set: results of the emulation resume as before
        params.update({"task" if k == "function" else f"task_{k}": v
                       for k, v in own_task.items()})
    # Before the result exists: a host that is unreachable or has another comlab costs nothing.
    probes = hosts_mod.probe_all(host_list, ssh_config) if host_list else None
    name = name if name is not None else _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    store = ResultStore(results_dir, name, params, resume=resume and not fresh)
    session = Session(inputs.smap, networks=networks, remote_workers=remote_workers,
                      workers_url=workers_url, server_address=server_address,
                      client_address=client_address, server_prefix=server_prefix,
                      hosts=host_list, ssh_config=ssh_config, secure=secure,
                      on_host_loss=on_host_loss, probes=probes, task=own_task)
    with store:
        session.host_log_dir = store.path / "hosts"
        session.log_dir = store.path / "logs"  # a lab process that dies: its log, kept
        return _sweep(specs, inputs, store, session, timeout, progress, all_remote)


def _sweep(specs, inputs: Inputs, store: ResultStore, session: Session, timeout, progress,
           remote_workers: int) -> pd.DataFrame:
    """Measure the runs not saved yet, one server per (transport, dispatch, workers) group
    (plan.groups)."""
    saved = store.finished()
    todo = [s for s in specs if s.key not in saved]
    weights = {s.index: planning.weight(s, inputs.waits, remote_workers) for s in specs}
    name = store.path.name
    failed = []
    with session, _Progress(specs, todo, weights, progress) as bar:  # hosts start before the bar
        if session.hosts is not None:
            store.write_meta(hosts=session.hosts.describe())
        for (transport, design, workers), runs in planning.groups(todo):
            with session.server(transport, workers, runs[0].strategy, design) as server:
                for spec in runs:
                    bar.show(spec)
                    run_timeout = timeout or planning.default_timeout(spec, inputs.waits,
                                                                      remote_workers)
                    try:
                        df, entry = session.measure(server, spec, keys=inputs.keys,
                                                    waits=inputs.waits, timeout=run_timeout,
                                                    experiment=name)
                    except HostLost as exc:
                        failed.append({"key": spec.key, "run": spec.index,
                                       "session": store.session, "error": str(exc)})
                        store.write_meta(failed_runs=failed)
                        if session.on_host_loss != "continue":
                            raise
                        continue
                    store.save_run(df, entry)
                    bar.done(spec)
    df = store.finish(complete=not failed)
    _warn_unstable(df, store)
    if failed:
        first = failed[0]["error"].splitlines()[0]
        warnings.warn(f"{store.path}: {len(failed)} of {len(todo)} runs failed because a host "
                      f"or worker was lost, and are not in the result (a rerun measures them): "
                      f"{first}",
                      ComlabWarning, stacklevel=3)
    return df


def _warn_unstable(df: pd.DataFrame, store: ResultStore) -> None:
    """Stability warnings (comlab.lab.stability), printed and kept in meta.json."""
    if df.empty:
        return
    try:
        found = stability.check(records.summarize(df), store.meta)
    except Exception as exc:  # a check must never cost the user a finished sweep
        found = [f"the stability checks failed: {exc!r}"]
    store.write_meta(warnings=found)
    resumed = store.meta["resumed_runs"]
    if resumed:
        warnings.warn(f"{store.path}: {resumed} of {len(store.meta['runs'])} runs were measured "
                      f"by an earlier session (started {store.meta['started']}), not now; "
                      f"fresh=True (comlab run/sweep --fresh) measures them again", ComlabWarning,
                      stacklevel=4)
    for text in found:
        warnings.warn(f"{store.path.name}: {text}", stability.StabilityWarning, stacklevel=4)


class SweepDeclined(ValueError):
    """A long sweep that ``confirm`` declined: nothing was started."""


def default_wait_scale(server_map) -> float:
    """0.01 for the shipped seed map (1 s waits: 10 ms), 1 for the user's own data."""
    return SEED_WAIT_SCALE if server_map is None else 1.0


def _confirm_if_long(specs, inputs: Inputs, remote_workers: int, confirm) -> None:
    """Before anything starts: a sweep whose ideal time exceeds LONG_SWEEP_S is confirmed
    (``confirm``) or, without one, warned about. Counts every run, saved ones too."""
    total = sum(planning.ideal_s(s, inputs.waits, remote_workers) for s in specs)
    if total <= LONG_SWEEP_S:
        return
    text = (f"this sweep's ideal time alone is {total / 60:.1f} min ({len(specs)} runs): "
            f"expect longer; fewer repeats or a smaller wait scale shorten it")
    if confirm is None:
        warnings.warn(text, ComlabWarning, stacklevel=3)
    elif not confirm(text):
        raise SweepDeclined(f"{text}; not started (confirm with --yes)")


class _Progress:
    """A tqdm bar weighted by each run's ideal time, showing the run in progress.

    It counts whole milliseconds: with float weights the sum of the updates can fall short of
    the total (7.1999 of 7.2), and tqdm's notebook widget paints such a finished bar red."""

    def __init__(self, specs, todo, weights: dict, enabled: bool) -> None:
        from tqdm.auto import tqdm
        self.weights = {i: max(1, round(w * 1000)) for i, w in weights.items()}
        self.repeats = 1 + max(s.repeat for s in specs)
        self.bar = tqdm(total=sum(self.weights[s.index] for s in specs), disable=not enabled,
                        desc="comlab", unit="ms ideal", bar_format=BAR_FORMAT)
        todo_keys = {s.key for s in todo}
        self.bar.update(sum(self.weights[s.index] for s in specs if s.key not in todo_keys))

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def show(self, spec) -> None:
        self.bar.set_postfix_str(spec.label(self.repeats), refresh=True)

    def done(self, spec) -> None:
        self.bar.update(self.weights[spec.index])


BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]{postfix}"


def _check_addresses(server_address, client_address, workers_url, server_prefix) -> None:
    """Addresses of this machine, ports in range: a server or client that cannot bind fails
    only once started, with a traceback. A server under a prefix (a namespace) has its own."""
    checks.local_address(client_address, "client_address")
    if not server_prefix:
        checks.local_address(server_address, "server_address")
    if workers_url:
        checks.tcp_port(workers_url, "workers_url")


def _check_remote(remote_workers: int, workers_url, specs) -> None:
    if remote_workers and not workers_url:
        raise ValueError("remote_workers needs workers_url: where worker hosts connect")
    if remote_workers and any(s.transport == "ipc" for s in specs):
        raise ValueError("remote workers send results to the client over tcp: transport ipc "
                         "cannot be used with them")


def _check_hosts(hosts, specs, server_address: str, client_address: str, workers_url) -> None:
    """Before anything starts: hosts on other machines cannot reach a loopback address."""
    if not hosts:
        return
    if any(s.transport == "ipc" for s in specs):
        raise ValueError("worker hosts send results to the client over tcp: transport ipc "
                         "cannot be used with hosts")
    far = [h for h in hosts if h.kind == "ssh" and not _is_loopback(h.target.rpartition("@")[2])]
    for what, address in (("server_address", server_address), ("client_address", client_address)):
        if far and _is_loopback(address):
            raise ValueError(f"host {far[0].name} cannot reach {what} {address} (loopback): "
                             f"set server_address and client_address to this machine's "
                             f"address on the hosts' network")
    if not workers_url and server_address in ("0.0.0.0", "*"):
        raise ValueError("with server_address 0.0.0.0 the hosts need workers_url: the address "
                         "they connect to")


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _reachable(table: dict, networks) -> dict:
    """The entries a worker will run: the server answers the rest at once (wait 0)."""
    if not networks:
        return table
    nets = [ipaddress.ip_network(n, strict=False) for n in networks]
    return {k: v for k, v in table.items()
            if any(ipaddress.ip_address(k.partition(":")[0]) in net for net in nets)}


def _arrival_processes(arrivals) -> list:
    """The swept arrival processes, parsed (ValueError naming a bad spec or trace line)."""
    values = planning.as_list(arrivals)
    if not values:
        raise ValueError("arrivals is empty: give at least one process (constant: as today)")
    return [arrivals_mod.parse(a) for a in values]


def _source(value) -> str:
    """What meta.json says about an input: its path, or what was passed instead of a file."""
    if isinstance(value, (list, tuple)):
        return f"<list of {len(value)}>"
    if isinstance(value, dict):
        return f"<dict of {len(value)} hosts>"
    return str(value)


summarize = records.summarize
