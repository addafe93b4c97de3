"""Command line of the client: ``python -m comlab.run_client COMMANDS_FILE TASKS_PER_BATCH BIND_URL REMOTE_URL``.

Prints the sum of the responses and the time taken; with --json, one JSON object as the last line.
Exit status 0 only when every task came back ok, unknown or unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import arrivals, data
from .lab.checks import batch_size_arg, positive_arg, seconds_arg, url_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("commands_file", help="tasks: lines ip:command (- with --arrivals "
                                         "trace:FILE: the trace's tasks)")
    p.add_argument("batch_size", type=batch_size_arg, metavar="TASKS_PER_BATCH",
                   help="tasks per batch, at least 1")
    p.add_argument("bind_url", type=url_arg("BIND_URL"), help="where results come back, e.g. tcp://127.0.0.1:5556")
    p.add_argument("remote_url", type=url_arg("REMOTE_URL"), help="the server, e.g. tcp://127.0.0.1:5557")
    p.add_argument("--timeout", type=seconds_arg, default=60.0, metavar="SECONDS",
                   help="seconds to wait for all results (default 60; at most 1e6); the "
                        "handshake with the server has min(10, this) seconds")
    p.add_argument("--rate", type=positive_arg,
                   help="open loop: send this many tasks per second (> 0)")
    p.add_argument("--arrivals", metavar="SPEC",
                   help="open loop: when batches are sent (comlab.arrivals): constant or "
                        "poisson or bursty:ON_S,OFF_S (with --rate), ramp:R0,R1,SECONDS, "
                        "step:R1@T1,R2@T2,..., trace:FILE (CSV offset_s,ip:command)")
    p.add_argument("--seed", type=int, default=0,
                   help="the schedule's random seed (default 0)")
    p.add_argument("--advertise", type=url_arg("--advertise"), help="result URL to give the server, when binding a wildcard")
    p.add_argument("--lenient", action="store_true", help="skip malformed lines (reported)")
    p.add_argument("--curve-keys", metavar="DIR", help="CurveZMQ keys directory")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")


def check_connect_url(url: str, what: str) -> None:
    """A URL libzmq cannot connect to is the user's mistake: say which argument, before any
    file is read or socket bound (a ValueError naming it, not a ZMQError traceback)."""
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    try:
        sock.connect(url)
    except zmq.ZMQError as exc:
        raise ValueError(f"bad {what} {url!r}: {exc.strerror}") from None
    finally:
        sock.close(0)
        ctx.term()


def run(args: argparse.Namespace) -> int:
    from .system.client import Client, NoServer
    from .system.role import AddressInUse
    try:
        check_connect_url(args.remote_url, "REMOTE_URL (the server)")
        process = arrivals.parse(args.arrivals) if args.arrivals else None
        if process is not None and not process.needs_rate and args.rate is not None:
            raise ValueError(f"--arrivals {process.spec} sets its own rate: leave --rate unset")
        if process is not None and process.trace is not None:
            if args.commands_file != "-":
                raise ValueError("with --arrivals trace:FILE the tasks are the trace's: give "
                                 "COMMANDS_FILE as -")
            tasks = [tuple(k.split(":")) for k in process.trace.keys]
        else:
            tasks = data.read_commands(args.commands_file, lenient=args.lenient)
        security = None
        if args.curve_keys:
            from .system.security import Curve
            security = Curve.load(args.curve_keys, role="client")
        if args.batch_size > len(tasks) > 0:
            print(f"note: TASKS_PER_BATCH {args.batch_size:,} is more than the {len(tasks):,} "
                  f"tasks: one batch of {len(tasks):,}", file=sys.stderr)
        schedule = None
        if process is not None and (args.rate is not None or process.name != "constant"):
            size = min(args.batch_size, len(tasks)) or 1
            schedule = process.offsets(-(-len(tasks) // size), size, args.rate, args.seed)
        client = Client([f"{ip}:{cmd}" for ip, cmd in tasks], args.batch_size, args.bind_url,
                        args.remote_url, timeout=args.timeout, rate=args.rate,
                        schedule=schedule, advertise=args.advertise, security=security,
                        task_offsets=None if process is None or process.trace is None
                        else process.trace.offsets)
        result = client.run()
    except (data.DataError, ValueError, NoServer, AddressInUse, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    summary = result.summary()
    print(f"sum of responses: {summary['sum']}")
    print(f"time taken: {summary['elapsed_s']:.4f} s")
    bad = summary["failed"] + summary["lost"]
    if bad:
        print(f"error: {summary['lost']} tasks lost (no result within {args.timeout:g} s), "
              f"{summary['failed']} failed", file=sys.stderr)
    if args.json:
        print(json.dumps({k: summary[k] for k in ("tasks", "ok", "unknown", "unreachable",
                                                  "failed", "lost", "sum", "elapsed_s")}))
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m comlab.run_client", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
