"""Background processes of the lab: a server (with its pool) and the client agent.

Both are plain subprocesses of ``sys.executable -m ...``: nothing is pickled, nothing depends on
the caller's ``__main__`` (so a notebook or a script without a main guard is fine), and each gets
its own session so a terminal's Ctrl-C reaches the lab, which then tears them down in order.
Each watches a stdin pipe from the lab: if the lab dies, the pipe closes and they exit, the
server taking its workers with it (dask's "parent alive" pipe).
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time

from . import agent as agent_mod


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


class _Child:
    """A subprocess with its stderr in a log file, stopped by closing stdin, then SIGTERM."""

    def __init__(self, args: list, log_path: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def failure(self, what: str) -> RuntimeError:
        return RuntimeError(f"{what} (exit code {self.proc.poll()}); its log "
                            f"{self.log_path}:\n{_tail(self.log_path)}")

    def stop(self, grace_s: float = 2.0) -> None:
        """Close stdin (the polite stop), then SIGTERM, then SIGKILL: bounded."""
        proc = self.proc
        if proc.poll() is None:
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(grace_s / 2)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(grace_s / 2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        self._log.close()


class ServerProcess(_Child):
    """``python -m comlab.run_server`` with a control socket, ready when its pool is."""

    def __init__(self, map_file: str, workers: int, workdir: str, *, transport: str = "tcp",
                 networks=(), workers_url: str | None = None, strategy: str | None = None,
                 ready_timeout: float = 60.0, address: str = "127.0.0.1",
                 prefix=(), dispatch: str | None = None, curve_keys: str | None = None,
                 insecure: bool = False) -> None:
        """``address``: the interface its tcp batch socket binds; ``prefix``: a command to run
        it under (e.g. ``ip netns exec NS``, ``taskset -c 0``); ``insecure``: plain-TCP worker
        peers on a ``workers_url`` other hosts reach (run_server --insecure)."""
        self.workdir = workdir
        bind = f"ipc://{workdir}/server" if transport == "ipc" else f"tcp://{address}:*"
        self.control_url = f"ipc://{workdir}/control"
        args = [*prefix, sys.executable, "-m", "comlab.run_server", map_file, bind, "",
                str(workers), "--control", self.control_url, "--watch-stdin", "--ready-json"]
        if strategy:
            args += ["--strategy", strategy]
        if dispatch:
            args += ["--dispatch", dispatch]
        for net in networks:
            args += ["--network", net]
        if workers_url:
            args += ["--workers-url", workers_url]
        if curve_keys:
            args += ["--curve-keys", curve_keys]
        if insecure and workers_url and not curve_keys:
            args += ["--insecure"]
        t0 = time.perf_counter()
        super().__init__(args, os.path.join(workdir, f"server-{workers}-{transport}.log"))
        self.info = self._read_ready(ready_timeout)
        self.start_s = time.perf_counter() - t0
        self.url = self.info["bind"]
        self._ctl = None

    def _read_ready(self, timeout: float) -> dict:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        try:
            while (left := deadline - time.monotonic()) > 0:
                if not sel.select(left):
                    break
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise self.failure("the server exited before it was ready")
                buf += chunk
                if b"\n" in buf:
                    return json.loads(buf.split(b"\n", 1)[0])
        finally:
            sel.close()
        raise self.failure(f"the server was not ready within {timeout:g} s")

    def control(self, *request, timeout: float = 10.0):
        """One request on the control socket; the answer's payload."""
        import zmq
        from ..system import protocol as P
        if self._ctl is None:
            self._zctx = zmq.Context()
            self._ctl = self._zctx.socket(zmq.REQ)
            self._ctl.setsockopt(zmq.LINGER, 0)
            self._ctl.connect(self.control_url)
        op, *args = request
        self._ctl.send(P.Control(op, list(args)).pack())
        if not self._ctl.poll(timeout * 1000):
            raise self.failure(f"the server did not answer {request[0]!r} within {timeout:g} s")
        answer = P.ControlReply.decode(self._ctl.recv())
        if answer.op == "error":
            raise ValueError(answer.payload)
        return answer.payload

    def wait_for_workers(self, n: int, timeout: float, names=()) -> list:
        """Wait until ``n`` workers (local and remote) have joined, among them every one of
        ``names`` (and no more than ``n`` when names are given: a lost host's workers must be
        gone first); their name/host/pid list."""
        deadline = time.monotonic() + timeout
        names = set(names)
        while True:
            workers = self.control("stats")["workers"]
            joined = {str(w["name"]) for w in workers}
            if (len(workers) == n if names else len(workers) >= n) and names <= joined:
                return workers
            if time.monotonic() >= deadline:
                hosts = sorted({str(w["host"]) for w in workers})
                raise self.failure(f"only {len(workers)} of {n} workers joined within "
                                   f"{timeout:g} s (hosts: {', '.join(hosts) or 'none'})")
            time.sleep(0.05)

    def stop(self, grace_s: float = 2.0) -> None:
        if self._ctl is not None:
            self._ctl.close(0)
            self._zctx.term()
            self._ctl = None
        super().stop(grace_s)


class AgentProcess(_Child):
    """``python -m comlab.lab.agent``: runs clients on request (see comlab.lab.agent)."""

    def __init__(self, workdir: str, curve_keys: str | None = None) -> None:
        # If this process dies (no BYE), the agent removes workdir (it notices even mid-run).
        args = [sys.executable, "-m", "comlab.lab.agent", "--lab-pid", str(os.getpid()),
                "--workdir", workdir]
        if curve_keys:
            args += ["--curve-keys", curve_keys]
        super().__init__(args, os.path.join(workdir, "client.log"))
        self._keys_sent = None

    def stop(self, grace_s: float = 2.0) -> None:
        """BYE first: the agent then knows the lab lives on and leaves workdir to it."""
        if self.proc.poll() is None:
            try:
                agent_mod.write_frame(self.proc.stdin, agent_mod.BYE)
            except (OSError, ValueError):
                pass
        super().stop(grace_s)

    def run(self, keys: list, **spec):
        """One client run with ``spec`` (batch_size, bind_url, server_url, timeout, rate,
        log_path: where the agent streams the accepted results); its client.ClientRun."""
        from ..system.client import ClientRun
        from ..system.protocol import Keys
        request = dict(spec)
        if keys is not self._keys_sent:
            packed = keys if isinstance(keys, Keys) else Keys.of(keys)
            request["keys_blob"], request["keys_sizes"] = packed.blob, packed.sizes()
        try:
            agent_mod.write_frame(self.proc.stdin, request)
            self._keys_sent = keys
            answer = agent_mod.read_frame(self.proc.stdout)
        except BrokenPipeError:
            answer = None
        if answer is None:
            raise self.failure("the client process died")
        if not answer["ok"]:
            raise RuntimeError(f"client run failed: {answer['error']}")
        return ClientRun.from_description(answer["run"])


def workdir() -> str:
    """A private directory for ipc endpoints and logs (short path: ipc paths are limited)."""
    return tempfile.mkdtemp(prefix="comlab-lab-")
