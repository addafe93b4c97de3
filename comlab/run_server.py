"""Command line of the server: ``python -m comlab.run_server MAP_FILE BIND_URL REMOTE_URL MAX_WORKERS``.

Runs until SIGINT or SIGTERM, then stops its workers and exits (bounded: within 2 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

import zmq

from . import data
from .lab.checks import url_arg
from .system import dispatch, limits, strategies, usertask


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("map_file", help="server map: lines ip:command:response:wait")
    p.add_argument("bind_url", type=url_arg("BIND_URL"), help="where clients send batches, e.g. tcp://127.0.0.1:5557")
    p.add_argument("remote_url", type=url_arg("REMOTE_URL"), help="default client result URL, for batches that name none")
    p.add_argument("max_workers", type=int, help="local worker processes (0: remote only)")
    p.add_argument("--strategy", default=strategies.DEFAULT,
                   help=f"how workers run a batch: {strategies.usage()} "
                        f"(default {strategies.DEFAULT})")
    p.add_argument("--dispatch", default=dispatch.DEFAULT,
                   help=f"how batches reach workers: {dispatch.usage()} "
                        f"(default {dispatch.DEFAULT})")
    p.add_argument("--task", metavar="MODULE:FUNCTION",
                   help="run this function for each task instead of the emulated sleep, as "
                        "function(ip, command, response, wait) -> response (see the how-to "
                        "'your own task')")
    p.add_argument("--task-command", metavar="TEMPLATE",
                   help="run this command for each task instead of the emulated sleep, {ip} "
                        "and {command} filled in (split like a shell would, run without one); "
                        "exit status 0 is ok")
    p.add_argument("--task-timeout", type=float, metavar="SECONDS",
                   help=f"kill a --task-command still running after this long: the task "
                        f"failed (default {usertask.TIMEOUT_S:g})")
    p.add_argument("--network", action="append", default=[], metavar="CIDR",
                   help="addresses within reach (repeatable); tasks outside are 'unreachable'")
    p.add_argument("--workers-url", type=url_arg("--workers-url"), help="also accept remote worker hosts here, "
                                         "e.g. tcp://0.0.0.0:5558")
    p.add_argument("--insecure", action="store_true",
                   help="accept plain-TCP worker peers on a --workers-url other hosts can reach "
                        "(without it, that needs --curve-keys)")
    p.add_argument("--control", dest="control_url", type=url_arg("--control"), help="control endpoint (used by the lab)")
    p.add_argument("--lenient", action="store_true", help="skip malformed map lines (reported)")
    p.add_argument("--curve-keys", metavar="DIR", help="CurveZMQ keys directory (see comlab keys)")
    p.add_argument("--watch-stdin", action="store_true",
                   help="exit when standard input closes (the lab's parent-alive pipe)")
    p.add_argument("--ready-json", action="store_true",
                   help="print one JSON line on stdout when ready")
    p.add_argument("-v", "--verbose", action="count", default=0)


def _stop(signum, frame):
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from .system.server import ParentGone, Server
    try:
        from .run_client import check_connect_url
        if args.remote_url:  # '' (the lab's): every batch names its client
            check_connect_url(args.remote_url, "REMOTE_URL (the default client result URL)")
        table = data.read_server_map(args.map_file, lenient=args.lenient).flat()
        dispatch.check(args.dispatch)
        if args.max_workers < 0:
            raise ValueError(f"MAX_WORKERS must be >= 0, not {args.max_workers}")
        if args.max_workers == 0 and not args.workers_url:
            raise ValueError("MAX_WORKERS 0 needs --workers-url: a server with no local "
                             "workers and no way for remote ones to join could never work")
        from .lab.checks import warm_threads
        # Batches of 1 at least: what the clients will ask for is not known yet.
        limits.check_workers(args.max_workers,
                             limits.WORKER_THREADS + warm_threads(args.strategy, 1),
                             f"MAX_WORKERS {args.max_workers}")
        strategies.set_threads(limits.check_server(args.max_workers))  # a pool must fit
        strategies.check(args.strategy)
        task = usertask.spec(args.task, args.task_command, args.task_timeout)
        if task is not None and args.workers_url:
            raise ValueError("--task and --task-command run on the server's local workers "
                             "only: not with --workers-url")
        security = None
        if args.curve_keys:
            from .system.security import Curve
            security = Curve.load(args.curve_keys, role="server")
        from .system.server import check_workers_url
        check_workers_url(args.workers_url, security, args.insecure)
    except (data.DataError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    started = False

    def on_ready(info):
        nonlocal started
        started = True
        if args.insecure and args.workers_url and security is None:
            print(f"warning: --insecure: any peer that reaches {args.workers_url} can take and "
                  "answer work", file=sys.stderr, flush=True)
        if args.ready_json:
            print(json.dumps(info), flush=True)
        print(f"comlab server ready on {info['bind']} with {info['workers']} workers "
              f"(strategy {info['strategy']}, dispatch {info['dispatch']}, "
              + (f"task {info['task']}, " if info.get("task") else "") +
              f"started in {info['startup_s']:.2f} s)",
              file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, _stop)
    server = Server(table, args.bind_url, args.remote_url, args.max_workers,
                    strategy=args.strategy, dispatch=args.dispatch, networks=args.network,
                    workers_url=args.workers_url,
                    control_url=args.control_url, watch_fd=0 if args.watch_stdin else None,
                    on_ready=on_ready, security=security, log_level=level,
                    insecure=args.insecure, task=task)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    except ParentGone as exc:  # the lab left while the pool started: its workers are stopped
        print(f"comlab server: {exc}", file=sys.stderr)
        return 1
    except (OSError, zmq.ZMQError) as exc:
        if started:  # not a start-up mistake: keep the whole story
            raise
        # A port in use, a URL libzmq refuses (bind, --workers-url, --control): the user's.
        print(f"error: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m comlab.run_server", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
