"""The ``comlab`` command: server, client, worker-host, keys, gen-data, run, sweep, plot."""

from __future__ import annotations

import argparse
import sys

from . import run_client, run_server
from .system import strategies

# The main job: the seed data with waits scaled to 1/100 (10 ms tasks), same shape, < 2 min.
RUN_DEFAULTS = dict(batch_sizes=[1, 4, 16, 64], workers=[1, 4, 16, 32], repeats=2,
                    wait_scale=0.01, name="main")
TABLE_COLUMNS = ["batch_size", "workers", "strategy", "n_tasks", "n_ok", "makespan_s", "ideal_s",
                 "efficiency", "throughput_tps", "latency_p50_s", "overhead_p99_s"]


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _strs(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def _floats_or_none(text: str) -> list:
    return [None if x in ("none", "max") else float(x) for x in text.split(",") if x]


def print_table(summary) -> None:
    import pandas as pd
    cols = [c for c in TABLE_COLUMNS if c in summary]
    agg = summary.groupby(["batch_size", "workers", "strategy"], observed=True)[cols[3:]].median()
    with pd.option_context("display.width", 160, "display.max_rows", 200,
                           "display.float_format", "{:.4g}".format):
        print(agg.reset_index().to_string(index=False))


def cmd_sweep(args) -> int:
    import comlab
    from .data import DataError
    try:
        df = comlab.run_experiment(
            batch_sizes=args.batch_sizes, workers=args.workers, repeats=args.repeats,
            commands=args.commands, server_map=args.map, strategy=args.strategy,
            transport=args.transport, wait_scale=args.wait_scale, timeout=args.timeout,
            rate=args.rate if args.rate else None, progress=not args.no_progress,
            results_dir=args.results_dir, name=args.name, networks=args.network,
            remote_workers=args.remote_workers, workers_url=args.workers_url,
            server_address=args.server_address, client_address=args.client_address)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = comlab.summarize(df)
    print_table(summary)
    out = f"{args.results_dir}/{df['experiment'].iloc[0]}"
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


def _add_sweep_args(p, defaults: dict) -> None:
    p.add_argument("--batch-sizes", type=_ints, default=defaults.get("batch_sizes", [1, 4, 16]))
    p.add_argument("--workers", type=_ints, default=defaults.get("workers", [1, 4, 16]))
    p.add_argument("--repeats", type=int, default=defaults.get("repeats", 3))
    p.add_argument("--strategy", type=_strs, default=[strategies.DEFAULT],
                   help="comma-separated: " + ", ".join(strategies.STRATEGIES))
    p.add_argument("--transport", type=_strs, default=["tcp"], help="tcp, ipc or both")
    p.add_argument("--wait-scale", type=float, default=defaults.get("wait_scale", 1.0))
    p.add_argument("--rate", type=_floats_or_none, default=None,
                   help="open loop: tasks per second (comma-separated to sweep)")
    p.add_argument("--timeout", type=float, default=None, help="per run (default from ideal)")
    p.add_argument("--commands", default=None, help="commands file (default: shipped seed)")
    p.add_argument("--map", default=None, help="server map file (default: shipped seed)")
    p.add_argument("--network", action="append", default=[], metavar="CIDR")
    p.add_argument("--remote-workers", type=int, default=0, metavar="N",
                   help="wait for N workers of worker hosts (comlab worker-host) on each server")
    p.add_argument("--workers-url", help="where worker hosts connect, e.g. tcp://0.0.0.0:5558")
    p.add_argument("--server-address", default="127.0.0.1",
                   help="interface of the server's batch socket (default loopback)")
    p.add_argument("--client-address", default="127.0.0.1",
                   help="interface of the client's result socket: reachable by worker hosts")
    p.add_argument("--name", default=defaults.get("name"))
    p.add_argument("--results-dir", default="results")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=cmd_sweep)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="comlab", description="ZeroMQ client/server/worker lab")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("server", help="run a server (same arguments as comlab.run_server)")
    run_server.add_arguments(s)
    s.set_defaults(func=run_server.run)

    c = sub.add_parser("client", help="run a client (same arguments as comlab.run_client)")
    run_client.add_arguments(c)
    c.set_defaults(func=run_client.run)

    from .system import worker_host
    wh = sub.add_parser("worker-host", help="run worker processes for a server elsewhere "
                                            "(its --workers-url)")
    worker_host.add_arguments(wh)
    wh.set_defaults(func=worker_host.run)

    r = sub.add_parser("run", help="the main job: a default sweep on the shipped data (< 2 min)")
    _add_sweep_args(r, RUN_DEFAULTS)

    sw = sub.add_parser("sweep", help="sweep batch sizes, workers, strategies from a shell")
    _add_sweep_args(sw, {})

    pl = sub.add_parser("plot", help="write every figure of a saved result to <result>/figures")
    pl.add_argument("result", help="a result directory, e.g. results/main")
    pl.set_defaults(func=cmd_plot)

    g = sub.add_parser("gen-data", help="write client_data.txt and server_data.txt")
    g.add_argument("out_dir")
    g.add_argument("--hosts", type=int, default=256)
    g.add_argument("--commands", type=_strs, default=["foo", "bar"])
    g.add_argument("--network", default="192.168.1.0/24")
    g.add_argument("--wait", choices=["constant", "uniform", "exponential"], default="constant")
    g.add_argument("--wait-mean", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--unknown", type=int, default=0, help="extra tasks absent from the map")
    g.set_defaults(func=cmd_gen_data)

    k = sub.add_parser("keys", help="create CurveZMQ keys: server, client, worker keypairs "
                                    "and DIR/authorized (see comlab.security)")
    k.add_argument("dir")
    k.add_argument("--force", action="store_true", help="replace existing keys")
    k.set_defaults(func=cmd_keys)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
