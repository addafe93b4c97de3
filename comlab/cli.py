"""The ``comlab`` command: server, client, worker-host, keys, gen-data, run, sweep, plot,
show, compare, report (also ``python -m comlab``)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from . import run_client, run_server
from .lab import checks, defaults
from .system import dispatch, strategies, usertask

# `comlab run`'s defaults (comlab.lab.defaults: `comlab sweep` and run_experiment share every
# default but the axes swept and the name).
RUN_DEFAULTS = defaults.of_verb("run")
TABLE_COLUMNS = ["n_repeats", "makespan_s", "makespan_s_spread", "ideal_s", "efficiency",
                 "throughput_tps", "latency_p50_s", "latency_p99_s", "overhead_p99_s",
                 "n_unknown", "n_failed", "n_lost"]
FAILED_SHOWN = 3  # distinct error strings printed when a sweep had failed tasks


class Parser(argparse.ArgumentParser):
    """A user's mistake on the command line: one line on stderr (no usage block), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _popularity_spec(text: str) -> str:
    import random
    from . import distributions
    try:
        distributions.pick_keys(text, ["k"], 1, random.Random(0))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _strs(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def print_table(summary, wait_scale: float = 1.0) -> None:
    """Medians per configuration, with the number of repeats and their spread."""
    import pandas as pd
    from .lab.stability import config_axes, summarize_configs
    if wait_scale != 1.0:
        print(f"task waits scaled by {wait_scale:g} (--wait-scale): times are for the scaled "
              f"tasks")
    configs = summarize_configs(summary)
    axes = [a for a in config_axes(configs) if a in ("batch_size", "workers", "strategy")
            or (a != "experiment" and configs[a].nunique(dropna=False) > 1)]
    table = configs[axes + [c for c in TABLE_COLUMNS if c in configs]]
    print("median over repeats; spread = (max - min) / median of the repeats' makespans")
    with pd.option_context("display.width", 200, "display.max_rows", 500,
                           "display.max_columns", 50, "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))


def _ask(text: str) -> bool:
    """Asked on a terminal; elsewhere a long sweep needs --yes."""
    if not sys.stdin.isatty():
        return False
    print(f"{text}. Start it? [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_sweep(args) -> int:
    import comlab
    from .data import DataError
    from .lab.atomic import DiskFull
    from .lab.hosts import HostError, HostLost
    from .lab.processes import ProcessDied
    hosts = _hosts_of(args)
    if hosts == 2:
        return 2
    try:
        df = comlab.run_experiment(
            batch_sizes=args.batch_sizes, workers=args.workers, repeats=args.repeats,
            commands=args.commands, server_map=args.map, strategy=args.strategy,
            dispatch=args.dispatch,
            transport=args.transport, wait_scale=args.wait_scale, timeout=args.timeout,
            rate=args.rate if args.rate else None, progress=not args.no_progress,
            results_dir=args.results_dir, name=args.name, networks=args.network,
            remote_workers=args.remote_workers, workers_url=args.workers_url,
            server_address=args.server_address, client_address=args.client_address,
            fresh=args.fresh, confirm=(lambda text: True) if args.yes else _ask,
            hosts=hosts, ssh_config=args.ssh_config, secure=args.secure,
            on_host_loss=args.on_host_loss, arrivals=args.arrivals or "constant",
            task=args.task, task_command=args.task_command, task_timeout=args.task_timeout)
    except (HostLost, DiskFull) as exc:  # mid-sweep: what is saved stays loadable
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ProcessDied as exc:  # one line; 2 when the process refused what it was given
        print(f"error: {exc}", file=sys.stderr)
        return 2 if exc.exit_code == 2 else 1
    except (DataError, ValueError, TypeError, HostError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = comlab.summarize(df)
    out = f"{args.results_dir}/{args.name or df['experiment'].iloc[0]}"
    _say_if_reused(out)
    from .lab.experiment import default_wait_scale
    print_table(summary, args.wait_scale if args.wait_scale is not None
                else default_wait_scale(args.map))
    print(f"\nrecords: {out}/records.parquet ({len(df)} rows)")
    from .lab.compare import how_to_compare
    print(how_to_compare(out, args.repeats))
    if not args.no_plots:
        from . import plots
        try:
            for path in plots.write_figures(out):
                print(f"figure: {path}")
        except DiskFull as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    bad = summary[["n_failed", "n_lost"]].to_numpy().sum()
    if bad:
        _print_failures(df, summary)
    return 1 if bad else 0


def _hosts_of(args):
    """--hosts entries and --hosts-file lines, parsed and checked; 2 after a one-line error."""
    from .lab import hosts as hosts_mod
    if args.hosts is None and args.hosts_file is None:
        return None
    try:
        found = []
        if args.hosts is not None:
            found += [hosts_mod.parse_entry(e, where="--hosts") for e in args.hosts]
        if args.hosts_file is not None:
            found += hosts_mod.read_hosts_file(args.hosts_file)
        return hosts_mod.parse_hosts(found)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _say_if_reused(out: str) -> None:
    """A rerun that measured nothing now says so on stdout, above the table it prints."""
    from .lab.results import read_meta
    meta = read_meta(out) or {}
    reused, total = meta.get("resumed_runs", 0), len(meta.get("runs", []))
    if reused:
        print(f"{reused} of {total} runs reused from an earlier session (started "
              f"{meta.get('started')}), not measured now: --fresh measures them again")


def _print_failures(df, summary) -> None:
    """Why a sweep exits 1: the counts and the first few distinct error strings."""
    n_failed, n_lost = int(summary["n_failed"].sum()), int(summary["n_lost"].sum())
    print(f"error: {n_failed} tasks failed, {n_lost} lost (no result within the run's "
          f"timeout)", file=sys.stderr)
    if n_failed and "error" in df:
        errors = df.loc[df["status"] == "failed", "error"].dropna().astype(str)
        for text, n in errors.value_counts().head(FAILED_SHOWN).items():
            print(f"  {n} x {text[:200]}", file=sys.stderr)


def cmd_plot(args) -> int:
    result = _result_dir(args.result)
    if result is None:
        return 2
    from . import plots  # matplotlib: seconds to import, so only for a real result
    from .lab.atomic import DiskFull
    from .lab.records import InvariantError
    try:
        paths = plots.write_figures(result)
    except DiskFull as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, InvariantError) as exc:
        print(f"error: {result}: cannot read the saved result: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def cmd_gen_data(args) -> int:
    import ipaddress
    from .data import generate
    try:
        net = ipaddress.IPv4Network(args.network)
    except ValueError as exc:
        print(f"error: --network {args.network!r}: {exc} (an IPv4 network)", file=sys.stderr)
        return 2
    if args.hosts > net.num_addresses:
        print(f"error: --hosts {args.hosts}: {args.network} has only {net.num_addresses} "
              f"addresses", file=sys.stderr)
        return 2
    try:
        client, server = generate(args.out_dir, hosts=args.hosts, commands=args.commands,
                                  network=args.network, wait=args.wait,
                                  wait_mean=args.wait_mean, seed=args.seed,
                                  unknown=args.unknown, popularity=args.popularity,
                                  tasks=args.tasks)
    except (ValueError, OSError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(client)
    print(server)
    return 0


def cmd_keys(args) -> int:
    from pathlib import Path
    from .system.security import create_host_keys, create_keys, host_key_name
    try:
        if not args.host or not (Path(args.dir) / "server.key_secret").exists():
            for path in create_keys(args.dir, force=args.force):
                print(path)
        for name in args.host:  # a keypair per worker host, in the authorized list
            create_host_keys(args.dir, name)
            print(f"worker host {name}: copy server.key and worker-{host_key_name(name)}"
                  f".key_secret; run worker-host --curve-keys DIR --host-key {name}")
    except (FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


# What reading a damaged result raises (bad JSON, a truncated parquet, a missing key).
UNREADABLE = (OSError, ValueError, KeyError, TypeError)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _result_dir(path: str) -> Path | None:
    """A saved result's directory, or None after one line on stderr saying why not
    (comlab.lab.results.saved_dir)."""
    from .lab.results import ResultError, saved_dir
    try:
        return saved_dir(path)
    except ResultError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def cmd_show(args) -> int:
    from .lab import report
    if _result_dir(args.result) is None:
        return 2
    try:
        print(report.text(report.load(args.result)))
    except UNREADABLE as exc:
        print(f"error: {args.result}: cannot read the saved result: {_one_line(exc)}",
              file=sys.stderr)
        return 2
    return 0


def cmd_compare(args) -> int:
    import pandas as pd
    from .lab.compare import compare, constant_axes, failing, table
    if _result_dir(args.a) is None or _result_dir(args.b) is None:
        return 2
    try:
        cmp = compare(args.a, args.b)
    except UNREADABLE as exc:
        print(f"error: {args.a} or {args.b}: cannot read the saved result: {_one_line(exc)}",
              file=sys.stderr)
        return 2
    print(f"a = {args.a}, b = {args.b}: ratios b / a of geometric means over repeats, [95% "
          f"interval, Welch's t on the runs]; spread = (max - min) / median")
    print(cmp.attrs["rules"])
    for axis, (va, vb) in cmp.attrs.get("across", {}).items():
        print(f"compared across {axis}: a {va}, b {vb}")
    fixed = constant_axes(cmp)
    if fixed:
        print("in every configuration: " + ", ".join(f"{k} {v}" for k, v in fixed.items()))
    for line in cmp.attrs["workload"]:
        print(f"workload differs: {line}")
    if cmp.attrs["workload"]:
        print("not the same workload: the ratios measure the workloads too, so no verdict")
    with pd.option_context("display.width", 220, "display.max_rows", 500,
                           "display.max_columns", 50):
        print(table(cmp).to_string(index=False))
    if args.csv:
        from .lab.atomic import write_text
        write_text(args.csv, cmp.to_csv(index=False))
        print(f"\nevery column: {args.csv}")
    if args.fail_slower is None:
        return 0
    if cmp.attrs["workload"]:
        print(f"error: --fail-slower: {args.a} and {args.b} ran different workloads",
              file=sys.stderr)
        return 2
    bad = failing(cmp, args.fail_slower)
    if len(bad):
        print(f"FAIL: b is slower by {args.fail_slower:g}x or more in {len(bad)} of {len(cmp)} "
              f"configurations ({', '.join(sorted(set(bad['verdict'])))})", file=sys.stderr)
        return 1
    return 0


def cmd_report(args) -> int:
    from .lab import report
    if _result_dir(args.result) is None or (args.compare and _result_dir(args.compare) is None):
        return 2
    from .lab.atomic import DiskFull
    try:
        print(report.write_report(args.result, compare=args.compare, out=args.output))
    except DiskFull as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except UNREADABLE as exc:
        print(f"error: {args.result}: cannot read the saved result: {_one_line(exc)}",
              file=sys.stderr)
        return 2
    return 0


def _add_sweep_args(p, verb: str) -> None:
    d = defaults.of_verb(verb)
    p.add_argument("--batch-sizes", type=checks.listed(checks.at_least_arg(1), "integers >= 1"), default=d["batch_sizes"],
                   metavar="B,B,...",
                   help=f"tasks per batch, comma-separated to sweep (default {_csv(d['batch_sizes'])})")
    p.add_argument("--workers", type=checks.listed(checks.at_least_arg(0), "integers >= 0"), default=d["workers"], metavar="W,W,...",
                   help=f"local worker processes, comma-separated to sweep (default "
                        f"{_csv(d['workers'])}; 0 only with --remote-workers)")
    p.add_argument("--repeats", type=checks.at_least_arg(1), default=d["repeats"],
                   help=f"runs of each configuration (default {d['repeats']}; 2 or more to see "
                        f"noise)")
    p.add_argument("--strategy", type=checks.listed(strategies.check, "strategies"),
                   default=[d["strategy"]], metavar="S,S,...",
                   help="how a worker runs a batch, comma-separated to sweep: "
                        + strategies.usage() + f" (default {d['strategy']})")
    p.add_argument("--transport", type=checks.listed(_transport, "transports"),
                   default=[d["transport"]],
                   help=f"tcp, ipc or tcp,ipc (default {d['transport']})")
    p.add_argument("--dispatch", type=checks.listed(dispatch.check, "dispatch designs"),
                   default=[d["dispatch"]], metavar="D,D,...",
                   help="how batches reach workers, comma-separated to sweep: "
                        + dispatch.usage() + f" (default {d['dispatch']})")
    p.add_argument("--wait-scale", type=checks.non_negative_arg, default=d["wait_scale"], metavar="S",
                   help="multiply every task's wait by S, >= 0 (0: zero-wait tasks; default 0.01 for the shipped seed "
                        "map: 10 ms tasks, same shape; 1 for a --map of your own)")
    p.add_argument("--rate", type=checks.rates_arg, default=d["rate"], metavar="R,R,...",
                   help="open loop: tasks per second > 0, comma-separated to sweep; none: "
                        "closed loop (default closed loop)")
    p.add_argument("--arrivals", type=checks.arrivals_arg, action="append", default=None, metavar="SPEC",
                   help="open loop: when batches are sent (repeat to sweep): constant (evenly "
                        "spaced; without --rate the closed loop), poisson, bursty:ON_S,OFF_S "
                        "(with --rate), ramp:R0,R1,SECONDS, step:R1@T1,R2@T2,... (T1 = 0), "
                        "trace:FILE (CSV offset_s,ip:command: its tasks) (default constant)")
    p.add_argument("--timeout", type=checks.seconds_arg, default=d["timeout"], metavar="SECONDS",
                   help="seconds per run before unanswered tasks count as lost (default: the "
                        "run's ideal time x 3 + 10 s; at most 1e6)")
    p.add_argument("--task", metavar="MODULE:FUNCTION",
                   help="run function(ip, command, response, wait) for each task instead of "
                        "the emulated sleep; what it returns is the response")
    p.add_argument("--task-command", metavar="TEMPLATE",
                   help="run this command for each task instead of the emulated sleep, {ip} "
                        "and {command} filled in (no shell); exit status 0 is ok")
    p.add_argument("--task-timeout", type=checks.positive_arg, metavar="SECONDS",
                   help="kill a --task-command still running after this long: the task "
                        f"failed (default {usertask.TIMEOUT_S:g})")
    p.add_argument("--commands", default=None, help="commands file (default: shipped seed)")
    p.add_argument("--map", default=None, help="server map file (default: shipped seed)")
    p.add_argument("--network", action="append", default=[], metavar="CIDR",
                   help="only addresses in CIDR are reachable (repeatable); others are "
                        "answered 'unreachable'")
    _add_host_args(p, d)
    p.add_argument("--name", default=d["name"], type=_plain_name,
                   help="result name: a plain directory name under --results-dir (default "
                        + (d["name"] or "a timestamp") + ")")
    p.add_argument("--results-dir", default=d["results_dir"], type=checks.results_dir_arg,
                   help=f"where results go (default {d['results_dir']})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="do not write figures")
    p.add_argument("--yes", action="store_true",
                   help="start a sweep whose ideal time exceeds 10 min without asking")
    p.add_argument("--fresh", action="store_true",
                   help="start afresh even if the result exists (it is moved aside to "
                        "NAME.<its start time>, not deleted); without it a rerun resumes only "
                        "an identical sweep and refuses otherwise")
    p.set_defaults(func=cmd_sweep)


def _add_host_args(p, d: dict) -> None:
    """Worker hosts, remote workers and addresses of a sweep (comlab.lab.hosts)."""
    p.add_argument("--remote-workers", type=checks.at_least_arg(0), default=d["remote_workers"],
                   metavar="N", help="wait for N workers of worker hosts (comlab worker-host) on each server")
    p.add_argument("--workers-url", type=checks.url_arg(""), help="where worker hosts connect, e.g. tcp://0.0.0.0:5558")
    p.add_argument("--server-address", default=d["server_address"],
                   type=checks.local_address_arg,
                   help="interface of the server's batch socket (default loopback)")
    p.add_argument("--client-address", default=d["client_address"],
                   type=checks.local_address_arg,
                   help="interface of the client's result socket: reachable by worker hosts")
    p.add_argument("--hosts", type=_strs, metavar="ENTRY,ENTRY,...",
                   help="worker hosts the lab starts and stops: ssh://[user@]host[:port], local "
                        "or a command prefix (ip netns exec h1), each optionally followed by "
                        "workers=N python=PATH workdir=DIR name=NAME")
    p.add_argument("--hosts-file", metavar="FILE",
                   help="worker hosts, one entry per line as in --hosts (# comments)")
    p.add_argument("--ssh-config", metavar="FILE", help="ssh client config for the hosts (-F)")
    p.add_argument("--on-host-loss", choices=["stop", "continue"], default=d["on_host_loss"],
                   help="a host lost mid-sweep fails its run; then stop the sweep (default) or "
                        "start the host again and continue")
    p.add_argument("--secure", action="store_true", default=d["secure"],
                   help="CurveZMQ on every socket, with keys made for this sweep (each host "
                        "gets its own over ssh); the default with --hosts")
    p.add_argument("--insecure", dest="secure", action="store_false",
                   help="plain TCP even with --hosts: any peer that reaches the worker "
                        "endpoint can be a worker")


def _transport(text: str) -> str:
    from .lab.plan import TRANSPORTS
    if text not in TRANSPORTS:
        raise ValueError(f"unknown transport {text!r}; use one of {', '.join(TRANSPORTS)}")
    return text


def _plain_name(text: str) -> str:
    from .lab.results import check_name
    try:
        return check_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _csv(values) -> str:
    return ",".join(map(str, values))


# Flags defined by the system's own command lines without a help text of their own.
BORROWED_HELP = {"verbose": "log more (-v info, -vv debug)",
                 "batch_size": "tasks per batch"}


def _borrow_help(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if not action.help and action.dest in BORROWED_HELP:
            action.help = BORROWED_HELP[action.dest]


def _add_system_commands(sub) -> None:
    from .system import worker_host
    for name, module, text in (
            ("server", run_server, "run a server (same arguments as comlab.run_server)"),
            ("client", run_client, "run a client (same arguments as comlab.run_client)"),
            ("worker-host", worker_host, "run worker processes for a server elsewhere (its "
                                         "--workers-url)")):
        p = sub.add_parser(name, help=text, description=text)
        module.add_arguments(p)
        _borrow_help(p)
        p.set_defaults(func=module.run)


def _add_result_commands(sub) -> None:
    pl = sub.add_parser("plot", help="write every figure of a saved result to <result>/figures")
    pl.add_argument("result", help="a result directory, e.g. results/main")
    pl.set_defaults(func=cmd_plot)

    sh = sub.add_parser("show", help="print a saved result: parameters, environment, warnings, "
                                     "summary per configuration")
    sh.add_argument("result", help="a result directory, e.g. results/main")
    sh.set_defaults(func=cmd_show)

    cp = sub.add_parser("compare", help="compare two saved results, configuration by "
                                        "configuration: is B faster than A, and is it real?")
    cp.add_argument("a", metavar="A", help="the baseline result directory")
    cp.add_argument("b", metavar="B", help="the result compared with it (ratios are B / A)")
    cp.add_argument("--csv", metavar="FILE", type=checks.output_file_arg(), help="also write every column of the comparison")
    cp.add_argument("--fail-slower", type=float, metavar="FACTOR",
                    help="for CI: exit 1 when B is slower (confirmed or marked '?') by a "
                         "makespan ratio of FACTOR or more in any configuration, e.g. 1.1; "
                         "exit 2 when A and B ran different workloads")
    cp.set_defaults(func=cmd_compare)

    rp = sub.add_parser("report", help="write one self-contained HTML report of a saved result "
                                       "(figures embedded, tables, metadata, warnings)")
    rp.add_argument("result", help="a result directory, e.g. results/main")
    rp.add_argument("--compare", metavar="OTHER",
                    help="another result to compare with (OTHER is a, this result b)")
    rp.add_argument("-o", "--output", metavar="FILE", type=checks.output_file_arg(),
                    help="where to write (default <result>/report.html)")
    rp.set_defaults(func=cmd_report)


def _add_data_commands(sub) -> None:
    text = "write a workload: client_data.txt (tasks) and server_data.txt (the map)"
    g = sub.add_parser("gen-data", help=text, description=text)
    g.add_argument("out_dir", type=checks.results_dir_arg, help="directory to write the two files into")
    g.add_argument("--hosts", type=checks.at_least_arg(1), default=256,
                   help="addresses, the first of --network (default 256)")
    g.add_argument("--commands", type=_strs, default=["foo", "bar"],
                   help="comma-separated commands per address (default foo,bar)")
    g.add_argument("--network", default="192.168.1.0/24",
                   help="where the addresses come from (default 192.168.1.0/24)")
    g.add_argument("--wait", type=checks.wait_spec_arg, default="constant", metavar="DIST",
                   help="distribution of the waits: constant, uniform, exponential, "
                        "lognormal[:SIGMA], pareto[:ALPHA] (mean --wait-mean each) or "
                        "empirical:FILE (durations in seconds, one a line; default constant)")
    g.add_argument("--popularity", type=_popularity_spec, default="uniform", metavar="DIST",
                   help="which keys the tasks name: uniform or zipf[:S] (rank k weighs "
                        "1/k^S, S default 1); default uniform (with no --tasks: every key "
                        "once, in order)")
    g.add_argument("--tasks", type=checks.at_least_arg(1), default=None,
                   help="tasks in client_data.txt, keys drawn by --popularity (default: one "
                        "per key)")
    g.add_argument("--wait-mean", type=checks.non_negative_arg, default=1.0,
                   help="mean wait in seconds, >= 0 (default 1)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--unknown", type=checks.at_least_arg(0), default=0,
                   help="extra tasks absent from the map (answered 'unknown'; default 0)")
    g.set_defaults(func=cmd_gen_data)

    k = sub.add_parser("keys", help="create CurveZMQ keys: server, client, worker keypairs "
                                    "and DIR/authorized (see comlab.system.security)")
    k.add_argument("dir", help="directory to write the keys into")
    k.add_argument("--force", action="store_true", help="replace existing keys")
    k.add_argument("--host", action="append", default=[], metavar="NAME",
                   help="also a worker keypair of its own for host NAME (repeatable; withdraw "
                        "it by removing DIR/authorized/worker-NAME.key)")
    k.set_defaults(func=cmd_keys)


class _Described(argparse._SubParsersAction):
    """Every verb's --help starts with its one-line description (its help in the list)."""

    def add_parser(self, name, **kwargs):
        kwargs.setdefault("description", kwargs.get("help"))
        return super().add_parser(name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = Parser(prog="comlab", description="ZeroMQ client/server/worker lab")
    p.register("action", "parsers", _Described)
    p.add_argument("--version", action="version", version=f"comlab {__version__}",
                   help="print comlab's version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_system_commands(sub)
    r = sub.add_parser("run", help="the main job: a default sweep on the shipped data (< 2 min)")
    _add_sweep_args(r, "run")
    sw = sub.add_parser("sweep", help="sweep batch sizes, workers, strategies from a shell")
    _add_sweep_args(sw, "sweep")
    _add_result_commands(sub)
    _add_data_commands(sub)
    from .sim.cli import add_parser as add_predict  # comlab.sim's own verb
    add_predict(sub)
    return p


def _print_warning(message, _category, _filename, _lineno, _file=None, _line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    shown, warnings.showwarning = warnings.showwarning, _print_warning  # one plain line each
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown

if __name__ == "__main__":
    sys.exit(main())
