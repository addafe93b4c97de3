"""The ``comlab`` command: server, client, worker-host, keys, gen-data, run, sweep, plot,
show, compare, report (also ``python -m comlab``)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from . import run_client, run_server
from .system import strategies

# The main job: the seed data with waits scaled to 1/100 (10 ms tasks), same shape, < 2 min.
RUN_DEFAULTS = dict(batch_sizes=[1, 4, 16, 64], workers=[1, 4, 16, 32], repeats=2,
                    wait_scale=0.01, name="main")
TABLE_COLUMNS = ["n_repeats", "makespan_s", "makespan_s_spread", "ideal_s", "efficiency",
                 "throughput_tps", "latency_p50_s", "latency_p99_s", "overhead_p99_s", "n_lost"]


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _strs(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def _floats_or_none(text: str) -> list:
    return [None if x in ("none", "max") else float(x) for x in text.split(",") if x]


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


def cmd_sweep(args) -> int:
    import comlab
    from .data import DataError
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
            fresh=args.fresh)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = comlab.summarize(df)
    out = f"{args.results_dir}/{args.name or df['experiment'].iloc[0]}"
    print_table(summary, args.wait_scale)
    print(f"\nrecords: {out}/records.parquet ({len(df)} rows)")
    if not args.no_plots:
        from . import plots
        for path in plots.write_figures(out):
            print(f"figure: {path}")
    bad = summary[["n_failed", "n_lost"]].to_numpy().sum()
    return 1 if bad else 0


def cmd_plot(args) -> int:
    from pathlib import Path

    result = Path(args.result)
    if not (result / "meta.json").is_file():
        what = "no such directory" if not result.is_dir() else "no meta.json in it"
        print(f"error: {result}: not a saved comlab result ({what})", file=sys.stderr)
        return 2
    from . import plots  # matplotlib: seconds to import, so only for a real result
    from .lab.records import InvariantError
    try:
        paths = plots.write_figures(result)
    except (OSError, ValueError, KeyError, InvariantError) as exc:
        print(f"error: {result}: cannot read the saved result: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def cmd_gen_data(args) -> int:
    from .data import generate
    client, server = generate(args.out_dir, hosts=args.hosts, commands=args.commands,
                              network=args.network, wait=args.wait, wait_mean=args.wait_mean,
                              seed=args.seed, unknown=args.unknown)
    print(client)
    print(server)
    return 0


def cmd_keys(args) -> int:
    from .system.security import create_keys
    try:
        for path in create_keys(args.dir, force=args.force):
            print(path)
    except (FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _result_dir(path: str) -> Path | None:
    """A saved result's directory, or None after one line on stderr saying why not."""
    p = Path(path)
    if not (p / "meta.json").is_file():  # worded as comlab plot says it
        what = "no such directory" if not p.is_dir() else "no meta.json in it"
        print(f"error: {p}: not a saved comlab result ({what})", file=sys.stderr)
        return None
    return p


def cmd_show(args) -> int:
    from .lab import report
    if _result_dir(args.result) is None:
        return 2
    print(report.text(report.load(args.result)))
    return 0


def cmd_compare(args) -> int:
    import pandas as pd
    from .lab.compare import compare
    if _result_dir(args.a) is None or _result_dir(args.b) is None:
        return 2
    try:
        cmp = compare(args.a, args.b)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"a = {args.a}, b = {args.b}: ratios b / a of medians over repeats, [95% bootstrap "
          f"interval]; spread = (max - min) / median; verdict from makespan")
    for axis, (va, vb) in cmp.attrs.get("across", {}).items():
        print(f"compared across {axis}: a {va}, b {vb}")
    with pd.option_context("display.width", 220, "display.max_rows", 500,
                           "display.max_columns", 50):
        print(compare_table(cmp).to_string(index=False))
    if args.csv:
        cmp.to_csv(args.csv, index=False)
        print(f"\nevery column: {args.csv}")
    return 0


def compare_table(cmp):
    """The comparison as text columns: makespans, ratios with intervals, spreads, verdict."""
    import pandas as pd
    from .lab.stability import CONFIG_AXES
    axes = [c for c in CONFIG_AXES if c in cmp.columns and cmp[c].notna().any()]
    out = cmp[axes + ["n_a", "n_b"]].copy()
    out["makespan a"] = cmp["makespan_s_a"].map("{:.4g} s".format)
    out["makespan b"] = cmp["makespan_s_b"].map("{:.4g} s".format)
    for m, label in (("makespan_s", "makespan b/a"), ("throughput_tps", "throughput b/a"),
                     ("latency_p50_s", "p50 b/a"), ("latency_p99_s", "p99 b/a")):
        out[label] = [f"{r:.3f} [{lo:.3f}, {hi:.3f}]" if pd.notna(r) else "-" for r, lo, hi in
                      zip(cmp[f"{m}_ratio"], cmp[f"{m}_ratio_lo"], cmp[f"{m}_ratio_hi"])]
    out["spread a/b"] = [f"{a:.0%}/{b:.0%}" if pd.notna(a) and pd.notna(b) else "-"
                         for a, b in zip(cmp["makespan_s_spread_a"], cmp["makespan_s_spread_b"])]
    out["verdict (b)"] = cmp["verdict"]
    return out


def cmd_report(args) -> int:
    from .lab import report
    if _result_dir(args.result) is None or (args.compare and _result_dir(args.compare) is None):
        return 2
    try:
        print(report.write_report(args.result, compare=args.compare, out=args.output))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _add_sweep_args(p, defaults: dict) -> None:
    d = {"batch_sizes": [1, 4, 16], "workers": [1, 4, 16], "repeats": 3, "wait_scale": 1.0,
         **defaults}
    p.add_argument("--batch-sizes", type=_ints, default=d["batch_sizes"], metavar="B,B,...",
                   help=f"tasks per batch, comma-separated to sweep (default {_csv(d['batch_sizes'])})")
    p.add_argument("--workers", type=_ints, default=d["workers"], metavar="W,W,...",
                   help=f"local worker processes, comma-separated to sweep (default "
                        f"{_csv(d['workers'])})")
    p.add_argument("--repeats", type=int, default=d["repeats"],
                   help=f"runs of each configuration (default {d['repeats']}; 2 or more to "
                        f"see noise)")
    p.add_argument("--strategy", type=_strs, default=[strategies.DEFAULT],
                   help="comma-separated: " + ", ".join(strategies.STRATEGIES))
    p.add_argument("--transport", type=_strs, default=["tcp"], help="tcp, ipc or both")
    p.add_argument("--dispatch", type=_strs, default=["broker"],
                   help="how batches reach workers, comma-separated to sweep: broker (adaptive "
                        "prefetch), broker:K (prefetch K), queue (the seed's shared queue)")
    p.add_argument("--wait-scale", type=float, default=d["wait_scale"], metavar="S",
                   help=f"multiply every task's wait by S (default {d['wait_scale']:g}: same "
                        f"shape, quicker)")
    p.add_argument("--rate", type=_floats_or_none, default=None,
                   help="open loop: tasks per second (comma-separated to sweep)")
    p.add_argument("--timeout", type=float, default=None, help="per run (default from ideal)")
    p.add_argument("--commands", default=None, help="commands file (default: shipped seed)")
    p.add_argument("--map", default=None, help="server map file (default: shipped seed)")
    p.add_argument("--network", action="append", default=[], metavar="CIDR",
                   help="only addresses in CIDR are reachable (repeatable); others are "
                        "answered 'unreachable'")
    p.add_argument("--remote-workers", type=int, default=0, metavar="N",
                   help="wait for N workers of worker hosts (comlab worker-host) on each server")
    p.add_argument("--workers-url", help="where worker hosts connect, e.g. tcp://0.0.0.0:5558")
    p.add_argument("--server-address", default="127.0.0.1",
                   help="interface of the server's batch socket (default loopback)")
    p.add_argument("--client-address", default="127.0.0.1",
                   help="interface of the client's result socket: reachable by worker hosts")
    p.add_argument("--name", default=d.get("name"),
                   help="result name: a plain directory name under --results-dir (default "
                        + (d["name"] if d.get("name") else "a timestamp") + ")")
    p.add_argument("--results-dir", default="results", help="where results go (default results)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="do not write figures")
    p.add_argument("--fresh", action="store_true",
                   help="start afresh even if the result exists (it is moved aside to "
                        "NAME.<its start time>, not deleted); without it a rerun resumes only "
                        "an identical sweep and refuses otherwise")
    p.set_defaults(func=cmd_sweep)


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
    cp.add_argument("--csv", metavar="FILE", help="also write every column of the comparison")
    cp.set_defaults(func=cmd_compare)

    rp = sub.add_parser("report", help="write one self-contained HTML report of a saved result "
                                       "(figures embedded, tables, metadata, warnings)")
    rp.add_argument("result", help="a result directory, e.g. results/main")
    rp.add_argument("--compare", metavar="OTHER",
                    help="another result to compare with (OTHER is a, this result b)")
    rp.add_argument("-o", "--output", metavar="FILE",
                    help="where to write (default <result>/report.html)")
    rp.set_defaults(func=cmd_report)


def _add_data_commands(sub) -> None:
    g = sub.add_parser("gen-data", help="write client_data.txt and server_data.txt")
    g.add_argument("out_dir", help="directory to write the two files into")
    g.add_argument("--hosts", type=int, default=256, help="addresses (default 256)")
    g.add_argument("--commands", type=_strs, default=["foo", "bar"],
                   help="comma-separated commands per address (default foo,bar)")
    g.add_argument("--network", default="192.168.1.0/24",
                   help="where the addresses come from (default 192.168.1.0/24)")
    g.add_argument("--wait", choices=["constant", "uniform", "exponential"], default="constant",
                   help="distribution of the waits (default constant)")
    g.add_argument("--wait-mean", type=float, default=1.0, help="mean wait in s (default 1)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--unknown", type=int, default=0, help="extra tasks absent from the map")
    g.set_defaults(func=cmd_gen_data)

    k = sub.add_parser("keys", help="create CurveZMQ keys: server, client, worker keypairs "
                                    "and DIR/authorized (see comlab.security)")
    k.add_argument("dir", help="directory to write the keys into")
    k.add_argument("--force", action="store_true", help="replace existing keys")
    k.set_defaults(func=cmd_keys)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(prog="comlab", description="ZeroMQ client/server/worker lab")
    p.add_argument("--version", action="version", version=f"comlab {__version__}",
                   help="print comlab's version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_system_commands(sub)
    r = sub.add_parser("run", help="the main job: a default sweep on the shipped data (< 2 min)")
    _add_sweep_args(r, RUN_DEFAULTS)
    sw = sub.add_parser("sweep", help="sweep batch sizes, workers, strategies from a shell")
    _add_sweep_args(sw, {})
    _add_result_commands(sub)
    _add_data_commands(sub)
    from .sim.cli import add_parser as add_predict  # comlab.sim's own verb
    add_predict(sub)
    return p


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
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
