"""A worker host: N worker processes on this machine serving a server elsewhere.

``comlab worker-host SERVER_URL --workers N [--curve-keys DIR]`` starts N workers (forkserver,
target ``comlab.system.worker.main``) whose DEALERs connect to SERVER_URL, the server's
``--workers-url``. Each has a unique name ``host/pid/index`` (the server's ROUTER routing id; a
replacement gets a fresh index, never a name the server may still hold). The workers reconnect by
themselves when the server restarts or the network comes back, and announce themselves again
(READY) to a server they have not met.

It runs until SIGINT or SIGTERM (a wakeup fd polled with the workers' sentinels, as in the
server, so no signal waits for an event), then stops the workers within 2 s: SIGTERM, then
SIGKILL. A worker that dies is replaced (after 1 s if it lived less than that, so a worker that
cannot start does not spin). The workers die with the host in any case (PR_SET_PDEATHSIG and the
parent's sentinel), so a SIGKILLed host leaves nothing behind; the server notices the lost
connections (ZMTP heartbeats) and retries their batches elsewhere.

Host names: ``COMLAB_HOST`` (environment) overrides the machine's host name in READY and
RESULTS, for hosts that share one (containers, network namespaces).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import selectors
import signal
import sys

from .pool import Pool
from .role import HOST
from .signals import WakeupPipe

log = logging.getLogger("comlab.worker_host")

STOP_GRACE_S = 1.5        # SIGTERM to SIGKILL; everything is gone within 2 s
RESTART_BACKOFF_S = 1.0


class WorkerHost:
    def __init__(self, server_url: str, workers: int, *, security=None,
                 log_level: int = logging.WARNING, start_method: str = "forkserver",
                 on_ready=None) -> None:
        if workers < 1:
            raise ValueError("a worker host needs at least 1 worker")
        self.server_url = server_url
        self.n = workers
        self.on_ready = on_ready
        from . import worker
        self.pool = Pool(worker.main, (server_url, log_level, security),
                         start_method=start_method, backoff_s=RESTART_BACKOFF_S,
                         name_of=lambda n: f"{HOST}/{os.getpid()}/{n}")
        self._stop = False

    @property
    def deaths(self) -> int:
        return self.pool.deaths

    def run(self) -> int:
        self.sel = selectors.DefaultSelector()
        self.pool.watch = lambda fd: self.sel.register(fd, selectors.EVENT_READ)
        self.pool.unwatch = self.sel.unregister
        wakeup = self._catch_signals()
        try:
            for _ in range(self.n):
                self.pool.start()
            if self.on_ready is not None:
                self.on_ready(self.info())
            timeout = None
            while not self._stop:
                for key, _ in self.sel.select(timeout):
                    if wakeup is not None and key.fd == wakeup[0].fd:
                        wakeup[0].drain()
                    elif key.fd in self.pool.procs and not self._stop:
                        self.pool.exited(key.fd)
                timeout = None if self._stop else self.pool.restart_due()
            return 0
        finally:
            self.stop()
            self.sel.close()
            if wakeup is not None:
                wakeup[0].close()
                for signum, handler in wakeup[1].items():
                    signal.signal(signum, handler)

    def info(self) -> dict:
        return {"host": HOST, "pid": os.getpid(), "server": self.server_url,
                "workers": [p.name.removeprefix("comlab-") for p, _, _ in
                            self.pool.procs.values()]}

    def stop(self) -> None:
        """SIGTERM every worker, SIGKILL what is left after STOP_GRACE_S."""
        self._stop = True
        self.pool.stop(0.0, term_wait_s=STOP_GRACE_S)

    def _catch_signals(self):
        """SIGINT/SIGTERM set the stop flag; the wakeup pipe makes the select return at once."""
        wakeup = WakeupPipe.open()
        if wakeup is None:
            return None

        def handler(signum, frame):
            self._stop = True

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        self.sel.register(wakeup.fd, selectors.EVENT_READ)
        return wakeup, old


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("server_url", help="the server's --workers-url, e.g. tcp://10.0.0.5:5558")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes on this host (default: one per CPU)")
    p.add_argument("--curve-keys", metavar="DIR",
                   help="CurveZMQ keys directory (needs server.key and worker.key*)")
    p.add_argument("--ready-json", action="store_true",
                   help="print one JSON line on stdout once the workers are started")
    p.add_argument("-v", "--verbose", action="count", default=0)


def run(args: argparse.Namespace) -> int:
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        security = None
        if args.curve_keys:
            from .security import Curve
            security = Curve.load(args.curve_keys, role="worker")
        host = WorkerHost(args.server_url, args.workers, security=security, log_level=level,
                          on_ready=lambda info: _ready(info, args.ready_json))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return host.run()


def _ready(info: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info), flush=True)
    print(f"comlab worker-host {info['host']}: {len(info['workers'])} workers for "
          f"{info['server']}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m comlab.worker_host", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
