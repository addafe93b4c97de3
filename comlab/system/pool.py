"""Supervision of local worker processes, for the server and the worker host alike.

A ``Pool`` starts workers (``comlab.system.worker.main``), watches their sentinels through the
owner's poller (``watch``/``unwatch`` callables), replaces one that dies (after a back-off when
it lived less than ``backoff_s``, so a worker that cannot start does not spin) and stops them
all within a bound: ``stop_processes`` waits, then terminates, then kills.

Local workers are named ``<prefix><n>`` (what records show; a worker host's ``host/pid/n``) and
connect with the routing id ``<name>-<token>``: the token is random per worker (64 bits), so no
peer on a server's remote worker endpoint can guess, and so take, a routing id a worker holds or
will need (a peer holding a worker's id would keep that worker out when it reconnects).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import time

log = logging.getLogger("comlab.pool")
# Tests only: seconds added to every worker start, so a pool start is slow on purpose (what
# thousands of workers cost) and its cancellation can be tested with a few.
FORK_DELAY_ENV = "COMLAB_TEST_FORK_DELAY_S"


class Pool:
    def __init__(self, target, args, *, prefix: str = "w", start_method: str = "forkserver",
                 watch=None, unwatch=None, backoff_s: float = 0.0,
                 name_of=None, kwargs_of=None) -> None:
        """``target(name, *args, ident=..., **kwargs_of(ident))`` runs a worker; ``name_of(n)``
        may name worker n."""
        self.kwargs_of = kwargs_of or (lambda ident: {})
        self.target, self.args = target, args
        self.prefix = prefix
        self.mp = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            self.mp.set_forkserver_preload(["comlab.system.worker"])
        self.watch, self.unwatch = watch, unwatch
        self.backoff_s = backoff_s
        self.name_of = name_of or (lambda n: f"{self.prefix}{n}")
        self.procs: dict[int, tuple] = {}   # sentinel -> (Process, routing id, started at)
        self.local: set[bytes] = set()      # routing ids of the running workers
        self.restarts: list[float] = []     # due times of delayed replacements
        self.deaths = 0
        self._next = 0
        self.fork_delay_s = float(os.environ.get(FORK_DELAY_ENV) or 0)

    def start(self, mp=None) -> bytes:
        """Start one worker (``mp``: another start method, e.g. fork before any thread)."""
        if self.fork_delay_s:
            time.sleep(self.fork_delay_s)
        name = self.name_of(self._next)
        self._next += 1
        ident = f"{name}-{secrets.token_hex(8)}"
        kwargs = {"ident": ident, **self.kwargs_of(ident.encode())}
        proc = (mp or self.mp).Process(target=self.target, name=f"comlab-{name}", daemon=True,
                                       args=(name, *self.args), kwargs=kwargs)
        proc.start()
        ident = ident.encode()
        self.local.add(ident)
        self.procs[proc.sentinel] = (proc, ident, time.monotonic())
        if self.watch is not None:
            self.watch(proc.sentinel)
        return ident

    def idents(self) -> set[bytes]:
        return set(self.local)

    def exited(self, sentinel: int) -> tuple:
        """A worker's sentinel fired: forget it, schedule a replacement; (Process, ident)."""
        proc, ident, started = self.procs.pop(sentinel)
        self.local.discard(ident)
        if self.unwatch is not None:
            self.unwatch(sentinel)
        proc.join(0)
        self.deaths += 1
        lived = time.monotonic() - started
        log.warning("worker %s (pid %s) exited with code %s after %.1f s; replacing it",
                    proc.name, proc.pid, proc.exitcode, lived)
        if lived < self.backoff_s:
            self.restarts.append(time.monotonic() + self.backoff_s)
        else:
            self.replace()
        return proc, ident

    def replace(self) -> None:
        """Start a replacement; if that fails (the forkserver died too), try again later."""
        try:
            self.start()
        except (OSError, EOFError) as exc:
            log.warning("could not start a worker (%s); retrying in %.1f s", exc,
                        max(self.backoff_s, 1.0))
            self.restarts.append(time.monotonic() + max(self.backoff_s, 1.0))

    def restart_due(self) -> float | None:
        """Start the replacements that are due; seconds until the next one (None: none)."""
        if not self.restarts:
            return None
        t = time.monotonic()
        for due in [d for d in self.restarts if d <= t]:
            self.restarts.remove(due)
            self.replace()
        return max(0.0, min(self.restarts) - t) if self.restarts else None

    def kill(self, ident: bytes) -> None:
        """SIGKILL one worker (stopped or wedged); its sentinel then fires as for any death.
        Returns once it is dead (at most a second), so what it held is read after its last
        write (the shared queue's slots)."""
        for proc, i, _ in self.procs.values():
            if i == ident and proc.is_alive():
                proc.kill()
                proc.join(1.0)

    def stop(self, grace_s: float, term_wait_s: float = 0.3) -> None:
        procs = [p for p, _, _ in self.procs.values()]
        stop_processes(procs, grace_s, term_wait_s)
        if self.unwatch is not None:
            for sentinel in list(self.procs):
                self.unwatch(sentinel)
        self.procs.clear()
        self.local.clear()
        self.restarts.clear()


def stop_processes(procs, grace_s: float, term_wait_s: float = 0.3) -> None:
    """Wait for processes to stop, then terminate, then kill: bounded, nothing survives."""
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + term_wait_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(1.0)
