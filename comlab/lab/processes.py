"""Background processes of the lab: a server (with its pool) and the client agent.

Both are plain subprocesses of ``sys.executable -m ...``: nothing is pickled, nothing depends on
the caller's ``__main__`` (so a notebook or a script without a main guard is fine), and each gets
its own session so a terminal's Ctrl-C reaches the lab, which then tears them down in order.
Each watches a stdin pipe from the lab: if the lab dies, the pipe closes and they exit, the
server taking its workers with it (dask's "parent alive" pipe).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import agent as agent_mod

POLL_S = 0.1  # how often a wait on a lab process also looks whether it (or the server) died
TAIL_LINES = 3  # of a dead process's log, in its one-line error


class ProcessDied(RuntimeError):
    """A lab process died or failed: one line naming it, its exit code and its log's last
    lines; ``exit_code`` (None: still running when it failed, and killed since)."""

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def tail(path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log ("" when it cannot be read)."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


# -- the lab's one stop policy for the children it starts (here and comlab.lab.hosts) -------
def exit_code(proc: subprocess.Popen) -> int | None:
    """The exit code (as Popen's: -N for signal N), or None while it runs. The child is not
    reaped: while it is a zombie its pid, and so its process group, cannot be reused, and
    ``kill_group`` can still reach what it left in the group."""
    if proc.returncode is not None:
        return proc.returncode
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return proc.poll()
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def exits_within(proc: subprocess.Popen, timeout: float) -> bool:
    """Whether the child exits within ``timeout`` s (not reaped)."""
    deadline = time.monotonic() + timeout
    while exit_code(proc) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, unless it has exited (unreaped: the pid is still the child's)."""
    if exit_code(proc) is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, signal.SIGTERM)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group at once (a pool it is still forking too), then
    reap it."""
    if proc.returncode is None:  # not reaped: the group id is still ours
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def end(proc: subprocess.Popen, grace_s: float, term_s: float) -> None:
    """Stop a child that leads its own session, once asked politely (its stdin closed, by the
    caller): ``grace_s`` to exit, then SIGTERM and ``term_s`` more, then SIGKILL of its group
    and reaped. Bounded: grace_s + term_s and a reap."""
    if not exits_within(proc, grace_s):
        terminate(proc)
        exits_within(proc, term_s)
    kill_group(proc)


def _one_line(text: str, lines: int = TAIL_LINES, width: int = 400) -> str:
    found = [x.strip() for x in text.splitlines() if x.strip()][-lines:]
    return " | ".join(found)[-width:]


class _Child:
    """A subprocess with its stderr in a log file, stopped by closing stdin, then SIGTERM.

    It leads a session (and so a process group) of its own: a terminal's Ctrl-C reaches only
    the lab, and ``kill`` ends the child and everything it forked with one signal, even in the
    middle of a pool start. ``keep_dir``: where its log is copied when it fails (the lab's work
    directory is removed when the sweep ends)."""

    what = "a lab process"

    def __init__(self, args: list, log_path: str, keep_dir=None) -> None:
        self.log_path, self.keep_dir = log_path, keep_dir
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def exit_code(self) -> int | None:
        return exit_code(self.proc)

    def _exits_within(self, timeout: float) -> bool:
        return exits_within(self.proc, timeout)

    def failure(self, what: str) -> ProcessDied:
        """``what`` happened: the one-line error, its log kept in ``keep_dir``."""
        code = self.exit_code()
        state = "still running" if code is None else f"exit code {code}"
        log = self._keep_log()
        last = _one_line(tail(self.log_path))
        return ProcessDied(f"{self.what} (pid {self.proc.pid}, {state}) {what}; its log {log}"
                           + (f" ends: {last}" if last else " is empty"), code)

    def _keep_log(self) -> str:
        if self.keep_dir is None:
            return self.log_path
        try:
            os.makedirs(self.keep_dir, exist_ok=True)
            return shutil.copy(self.log_path, os.path.join(self.keep_dir,
                                                           os.path.basename(self.log_path)))
        except OSError:
            return self.log_path

    def kill(self) -> None:
        kill_group(self.proc)

    def stop(self, grace_s: float = 2.0) -> None:
        """Close stdin (the polite stop), then ``end``: half the grace each to exit before and
        after a SIGTERM, then SIGKILL of its group."""
        proc = self.proc
        if self.exit_code() is None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        end(proc, grace_s / 2, grace_s / 2)
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        self._log.close()


class ServerProcess(_Child):
    """``python -m comlab.run_server`` with a control socket, ready when its pool is."""

    what = "the server"

    def __init__(self, map_file: str, workers: int, workdir: str, *, transport: str = "tcp",
                 networks=(), workers_url: str | None = None, strategy: str | None = None,
                 ready_timeout: float = 60.0, address: str = "127.0.0.1",
                 prefix=(), dispatch: str | None = None, curve_keys: str | None = None,
                 keep_dir=None, insecure: bool = False, task: dict | None = None) -> None:
        """``address``: the interface its tcp batch socket binds; ``prefix``: a command to run
        it under (e.g. ``ip netns exec NS``, ``taskset -c 0``); ``insecure``: plain-TCP worker
        peers on a ``workers_url`` other hosts reach (run_server --insecure); ``task``: the
        server's own task (comlab.system.usertask.spec)."""
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
        if task and "function" in task:
            args += ["--task", task["function"]]
        elif task:
            args += ["--task-command", task["command"], "--task-timeout", repr(task["timeout"])]
        t0 = time.perf_counter()
        self._ctl = None
        super().__init__(args, os.path.join(workdir, f"server-{workers}-{transport}.log"),
                         keep_dir)
        try:
            self.info = self._read_ready(ready_timeout)
        except BaseException as exc:  # Ctrl-C, a timeout: a pool still forking stops now
            self.stop(grace_s=0.0)
            if isinstance(exc, _NotReady):
                raise self.failure(str(exc)) from None
            raise
        self.start_s = time.perf_counter() - t0
        self.url = self.info["bind"]

    def _read_ready(self, timeout: float) -> dict:
        """Its ready line; _NotReady if it exits first (its workers may hold its stdout open:
        the exit is looked for, not an end of file) or does not print it in time."""
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        try:
            while (left := deadline - time.monotonic()) > 0:
                if not sel.select(min(left, POLL_S)):
                    if self.exit_code() is not None:
                        raise _NotReady("exited before it was ready")
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    self._exits_within(1.0)
                    raise _NotReady("exited before it was ready")
                buf += chunk
                if b"\n" in buf:
                    return json.loads(buf.split(b"\n", 1)[0])
        finally:
            sel.close()
        raise _NotReady(f"was not ready within {timeout:g} s (it was killed)")

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
        deadline = time.monotonic() + timeout
        while not self._ctl.poll(POLL_S * 1000):  # no waiting on a server known to be dead
            if self.exit_code() is not None:
                raise self.failure(f"died (asked for {request[0]!r})")
            if time.monotonic() >= deadline:
                raise self.failure(f"did not answer {request[0]!r} within {timeout:g} s")
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


class _NotReady(Exception):
    """Why a server did not become ready (turned into its ProcessDied)."""


class AgentProcess(_Child):
    """``python -m comlab.lab.agent``: runs clients on request (see comlab.lab.agent)."""

    what = "the client agent"

    def __init__(self, workdir: str, curve_keys: str | None = None, keep_dir=None) -> None:
        # If this process dies (no BYE), the agent removes workdir (it notices even mid-run).
        args = [sys.executable, "-m", "comlab.lab.agent", "--lab-pid", str(os.getpid()),
                "--workdir", workdir]
        if curve_keys:
            args += ["--curve-keys", curve_keys]
        super().__init__(args, os.path.join(workdir, "client.log"), keep_dir)
        self._keys_sent = None

    def stop(self, grace_s: float = 2.0) -> None:
        """BYE first: the agent then knows the lab lives on and leaves workdir to it."""
        if self.exit_code() is None:
            try:
                agent_mod.write_frame(self.proc.stdin, agent_mod.BYE)
            except (OSError, ValueError):
                pass
        super().stop(grace_s)

    def run(self, keys: list, server: ServerProcess | None = None, **spec):
        """One client run with ``spec`` (batch_size, bind_url, server_url, timeout, rate,
        log_path: where the agent streams the accepted results); its client.ClientRun.
        ``server``: a server that dies meanwhile ends the wait at once (ProcessDied)."""
        from ..system.client import ClientRun
        from ..system.protocol import Keys
        request = dict(spec)
        if keys is not self._keys_sent:
            packed = keys if isinstance(keys, Keys) else Keys.of(keys)
            request["keys_blob"], request["keys_sizes"] = packed.blob, packed.sizes()
        try:
            agent_mod.write_frame(self.proc.stdin, request)
            self._keys_sent = keys
            self._wait_answer(server)
            answer = agent_mod.read_frame(self.proc.stdout)
        except BrokenPipeError:
            answer = None
        if answer is None:
            self._exits_within(1.0)
            raise self.failure("died during a run")
        if not answer["ok"]:
            raise RuntimeError(f"client run failed: {answer['error']}")
        return ClientRun.from_description(answer["run"])


    def _wait_answer(self, server: ServerProcess | None) -> None:
        """Until the agent's answer starts (or it dies), looking at the server meanwhile."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while not sel.select(POLL_S):
                if server is not None and server.exit_code() is not None:
                    raise server.failure("died during a run")
                if self.exit_code() is not None:
                    return  # its answer, if any, is read; else the end of file says it died


def workdir() -> str:
    """A private directory for ipc endpoints and logs (short path: ipc paths are limited)."""
    return tempfile.mkdtemp(prefix="comlab-lab-")
