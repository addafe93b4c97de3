"""A worker host: N worker processes on this machine serving a server elsewhere.

``comlab worker-host SERVER_URL --workers N [--curve-keys DIR]`` starts N workers (forkserver,
target ``comlab.system.worker.main``) whose DEALERs connect to SERVER_URL, the server's
``--workers-url``. Each has a unique name ``host/pid/index`` (a replacement gets a fresh index)
and a routing id no peer can guess (the name and a random token, see comlab.system.pool). The
workers reconnect by themselves when the server restarts or the network comes back, and
announce themselves again (READY) to a server they have not met.

It runs until SIGINT or SIGTERM (a wakeup fd polled with the workers' sentinels, as in the
server, so no signal waits for an event), then stops the workers within 2 s: SIGTERM, then
SIGKILL. A worker that dies is replaced (after 1 s if it lived less than that, so a worker that
cannot start does not spin). The workers die with the host in any case (PR_SET_PDEATHSIG and the
parent's sentinel), so a SIGKILLed host leaves nothing behind; the server notices the lost
connections (ZMTP heartbeats) and retries their batches elsewhere.

Host names: ``COMLAB_HOST`` (environment) overrides the machine's host name in READY and
RESULTS, for hosts that share one (containers, network namespaces).

Started by the lab (comlab.lab.hosts, over SSH or a command prefix), it is tied to the lab's
life through its stdin: ``--watch-stdin`` stops it when stdin closes (the lab exited or was
killed, or its SSH channel closed), and ``--death-timeout S`` also when no byte (the lab's
heartbeat) came for S seconds (a lab frozen, or cut off without the channel closing).
``--keys-stdin`` reads the CurveZMQ worker keys as the first line of stdin (JSON, z85), so keys
never touch the remote disk.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import selectors
import signal
import sys
import time

from ..lab.checks import url_arg  # stdlib only: the port range every URL argument keeps
from .pool import Pool
from .role import HOST
from .signals import WakeupPipe

log = logging.getLogger("comlab.worker_host")

STOP_GRACE_S = 1.5        # SIGTERM to SIGKILL; everything is gone within 2 s
RESTART_BACKOFF_S = 1.0
KEYS_TIMEOUT_S = 10.0     # --keys-stdin: the lab writes them at once


class WorkerHost:
    def __init__(self, server_url: str, workers: int, *, security=None,
                 log_level: int = logging.WARNING, start_method: str = "forkserver",
                 on_ready=None, watch_fd: int | None = None,
                 death_timeout: float | None = None) -> None:
        """``watch_fd``: stop when it reaches end of file, or when nothing was read from it for
        ``death_timeout`` seconds (None: never)."""
        if workers < 1:
            raise ValueError("a worker host needs at least 1 worker")
        self.server_url = server_url
        self.n = workers
        self.on_ready = on_ready
        self.watch_fd, self.death_timeout = watch_fd, death_timeout
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
        if self.watch_fd is not None:
            os.set_blocking(self.watch_fd, False)
            self.sel.register(self.watch_fd, selectors.EVENT_READ)
        self._last_word = time.monotonic()
        try:
            for _ in range(self.n):
                if self.watch_fd is not None:
                    self._read_watch()  # a lab gone while many start: stop between two
                    if self._stop:
                        break
                self.pool.start()
            if self.on_ready is not None and not self._stop:
                self.on_ready(self.info())
            timeout = self._death_due()
            while not self._stop:
                for key, _ in self.sel.select(timeout):
                    if wakeup is not None and key.fd == wakeup[0].fd:
                        wakeup[0].drain()
                    elif key.fd == self.watch_fd:
                        self._read_watch()
                    elif key.fd in self.pool.procs and not self._stop:
                        self.pool.exited(key.fd)
                if not self._stop and (due := self._death_due()) is not None and due <= 0:
                    self._stop_because(f"no word from the lab for {self.death_timeout:g} s")
                timeout = None if self._stop else _earliest(self.pool.restart_due(),
                                                            self._death_due())
            return 0
        finally:
            self.stop()
            self.sel.close()
            if wakeup is not None:
                wakeup[0].close()
                for signum, handler in wakeup[1].items():
                    signal.signal(signum, handler)

    def _read_watch(self) -> None:
        try:
            data = os.read(self.watch_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._last_word = time.monotonic()
        else:
            self._stop_because("the lab closed the connection")

    def _death_due(self) -> float | None:
        if self.watch_fd is None or self.death_timeout is None:
            return None
        return max(0.0, self._last_word + self.death_timeout - time.monotonic())

    def _stop_because(self, why: str) -> None:
        log.warning("stopping: %s", why)
        self._stop = True

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


def _earliest(*timeouts):
    found = [t for t in timeouts if t is not None]
    return min(found) if found else None


def read_keys(fd: int, timeout: float = KEYS_TIMEOUT_S):
    """The worker keys the lab writes as stdin's first line: {"server_public", "public",
    "secret"} in z85. Reads byte by byte so nothing after the line (heartbeats) is consumed."""
    from .security import Curve
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    line = b""
    deadline = time.monotonic() + timeout
    try:
        while not line.endswith(b"\n"):
            if len(line) > 4096:
                raise ValueError("the keys line on stdin is too long")
            if not sel.select(max(0.0, deadline - time.monotonic())):
                raise ValueError(f"no keys on stdin within {timeout:g} s")
            byte = os.read(fd, 1)
            if not byte:
                raise ValueError("stdin closed before the keys line")
            line += byte
    finally:
        sel.close()
    try:
        keys = json.loads(line)
        return Curve(keys["public"].encode(), keys["secret"].encode(),
                     keys["server_public"].encode())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"the keys line on stdin is not valid: {exc}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("server_url", type=url_arg("SERVER_URL"), help="the server's --workers-url, e.g. tcp://10.0.0.5:5558")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes on this host (default: one per CPU)")
    p.add_argument("--curve-keys", metavar="DIR",
                   help="CurveZMQ keys directory (needs server.key and worker.key*)")
    p.add_argument("--host-key", metavar="NAME",
                   help="with --curve-keys: this host's own keypair, worker-NAME.key_secret "
                        "(comlab keys DIR --host NAME)")
    p.add_argument("--keys-stdin", action="store_true",
                   help="read the CurveZMQ worker keys as stdin's first line (JSON, z85)")
    p.add_argument("--watch-stdin", action="store_true",
                   help="stop when stdin closes (the lab that started this host is gone)")
    p.add_argument("--death-timeout", type=float, metavar="SECONDS",
                   help="with --watch-stdin: also stop after SECONDS without a byte on stdin")
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
            security = Curve.load(args.curve_keys, role="worker", host=args.host_key)
        elif args.keys_stdin:
            security = read_keys(0)
        if args.death_timeout is not None and not args.death_timeout > 0:
            raise ValueError(f"--death-timeout must be > 0, got {args.death_timeout:g}")
        from . import limits
        limits.check_workers(args.workers, limits.WORKER_THREADS + 1,
                             f"--workers {args.workers}")  # batches of 1 at least
        host = WorkerHost(args.server_url, args.workers, security=security, log_level=level,
                          on_ready=lambda info: _ready(info, args.ready_json),
                          watch_fd=0 if args.watch_stdin else None,
                          death_timeout=args.death_timeout)
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
    p = argparse.ArgumentParser(prog="python -m comlab.system.worker_host", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
