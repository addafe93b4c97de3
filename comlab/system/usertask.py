"""The operator's own task: what workers run instead of the emulated sleep.

Only whoever starts the server chooses it (``--task``/``--task-command`` of ``run_server``,
``task=``/``task_command=`` of ``comlab.run_experiment``): it is a start argument of the server,
never part of a message, so no client can make a worker run anything.

* A **function** ``"module:function"`` is imported once per worker (at its start; the server and
  the lab import it first, so a bad spec is refused before anything starts) and called in the
  strategy's thread as ``function(ip, command, response, wait) -> int`` with the server map's
  entry of the task. What it returns is the task's response (the record's ``response``); None
  answers the map's response. An exception fails that task (``failed``, the error text).
* A **command** template (``"ping -c1 -W1 {ip}"``) runs once per task: the template is split
  like a shell would (``shlex.split``) but no shell runs it; ``{ip}`` and ``{command}`` are filled
  into each argument from the map's entry. Exit status 0 is ``ok`` (the response: the last line
  of its stdout if that is an integer, else the map's response), another status is ``failed``
  with the tail of its stderr, and a command still running after ``timeout`` s is killed and
  ``failed`` ("timeout"). Output is read as it comes, keeping the last OUTPUT_TAIL bytes of
  each stream; at most ``procs`` commands run at once per worker (limits.command_share).

How the entry reaches the worker without a change to the protocol: in task mode the server puts
the entry's index in the map (not its response) in the WORK's ENTRY record, and every worker
holds the same list of entries (``entries``). The batch token then seals the task ids only
(comlab.system.protocol.Seal): the worker, not the server, makes the response; the server's
WELCOME says so (``task``).
"""

from __future__ import annotations

import importlib
import operator
import os
import selectors
import shlex
import string
import subprocess
import threading
import time

from .protocol import INT64_MAX, INT64_MIN, preview

TIMEOUT_S = 10.0   # a command's default time limit
OUTPUT_TAIL = 4096  # bytes of a command's stdout and of its stderr kept
FIELDS = ("ip", "command")


class CommandTimeout(Exception):
    """A command ran past its timeout (it was killed)."""


class CommandFailed(Exception):
    """A command exited with a status other than 0."""


def spec(task: str | None = None, command: str | None = None,
         timeout: float | None = None) -> dict | None:
    """The server's task from its start arguments (None: the emulated sleep), checked: the
    function imported, the template parsed; ValueError (one line) naming what is wrong."""
    if task is not None and command is not None:
        raise ValueError("task and task_command exclude each other: choose one")
    if timeout is not None and command is None:
        raise ValueError("task_timeout applies to task_command only")
    if task is not None:
        load(task)
        return {"function": task}
    if command is not None:
        timeout = TIMEOUT_S if timeout is None else timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0 < timeout <= 86400:
            raise ValueError(f"task_timeout must be a number of seconds in (0, 86400], "
                             f"not {timeout!r}")
        template(command)
        return {"command": command, "timeout": float(timeout)}
    return None


def for_server(task: dict | None, workers_url: str | None) -> dict | None:
    """A server's task from its ``task`` argument (keys function, command, timeout), checked
    (``spec``); a task runs on the server's local workers only."""
    if task is None:
        return None
    if workers_url:
        raise ValueError("a task of your own runs on the server's local workers only: not "
                         "with a workers URL (remote worker hosts)")
    return spec(task.get("function"), task.get("command"), task.get("timeout"))


def worker_kwargs(task: dict, table: dict, procs: int) -> dict:
    """What each local worker is started with: the task, the map's entries (ip, command,
    response) in the table's order (an ENTRY carries the index), and its command share."""
    entries = [(*k.split(":", 1), r) for k, (r, _) in table.items()]
    return {"task": {**task, "procs": procs}, "entries": entries}


def describe(task: dict) -> str:
    """One line for logs and the server's info."""
    if "function" in task:
        return task["function"]
    return f"command {task['command']} (timeout {task['timeout']:g} s)"


def load(name: str):
    """The function a ``"module:function"`` spec names; ValueError (one line) if it cannot."""
    if not isinstance(name, str) or name.count(":") != 1 or not all(name.split(":")):
        raise ValueError(f"task {preview(name)}: expected 'module:function' "
                         "(e.g. comlab.tasks:spin)")
    module, _, attr = name.partition(":")
    try:
        found = importlib.import_module(module)
        for part in attr.split("."):
            found = getattr(found, part)
    except Exception as exc:  # ImportError, AttributeError, whatever its import raised
        raise ValueError(f"task {name!r} cannot be imported: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not callable(found):
        raise ValueError(f"task {name!r} is a {type(found).__name__}, not a function")
    return found


def template(command: str) -> list[str]:
    """The template's arguments (shlex.split); ValueError unless each field is {ip} or
    {command} (literal braces are written {{ and }})."""
    if not isinstance(command, str):
        raise ValueError(f"task_command must be a string, not {type(command).__name__}")
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"task_command {command!r}: {exc}") from None
    if not argv:
        raise ValueError("task_command is empty")
    for arg in argv:
        try:
            bad = [f for _, f, spec_, conv in string.Formatter().parse(arg)
                   if f is not None and (f not in FIELDS or spec_ or conv)]
        except ValueError as exc:
            raise ValueError(f"task_command argument {arg!r}: {exc} (write {{{{ and }}}} for "
                             "a literal brace)") from None
        if bad:
            raise ValueError(f"task_command argument {arg!r}: unknown field {{{bad[0]}}}; "
                             "use {ip} and {command}")
    return argv


def as_response(out) -> int:
    """A task's return value as a response (a signed 64-bit integer)."""
    try:
        value = operator.index(out)
    except TypeError:
        raise TypeError(f"the task returned {preview(out)} ({type(out).__name__}), "
                        "not an int") from None
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"the task returned {value}, outside the signed 64-bit range")
    return value


class Bound:
    """The task as a strategy calls it, ``(index, wait) -> response``: the map's entry by its
    index (what the ENTRY record carries in task mode), then the operator's function."""

    def __init__(self, function, entries: list) -> None:
        self.function, self.entries = function, entries

    def __call__(self, index: int, wait: float) -> int:
        if not 0 <= index < len(self.entries):
            raise IndexError(f"map entry {index} out of range")
        ip, command, response = self.entries[index]
        out = self.function(ip, command, response, wait)
        return response if out is None else as_response(out)

    def close(self) -> None:
        close = getattr(self.function, "close", None)
        if close is not None:
            close()


def make(task: dict, entries: list, procs: int = 1) -> Bound:
    """A worker's task (at its start): the function imported, or the command's runner."""
    if "function" in task:
        return Bound(load(task["function"]), entries)
    return Bound(Command(task["command"], task["timeout"], procs), entries)


class Command:
    """Runs the template once per task, at most ``procs`` at once (a semaphore)."""

    def __init__(self, command: str, timeout: float, procs: int) -> None:
        self.argv, self.timeout = template(command), timeout
        self.slots = threading.BoundedSemaphore(max(1, procs))
        self.running: set = set()  # killed at close (the worker's end)
        self.lock = threading.Lock()
        self.closed = False

    def __call__(self, ip: str, command: str, response: int, wait: float) -> int:
        argv = [a.format(ip=ip, command=command) for a in self.argv]
        with self.slots:
            code, out, err = self.run(argv)
        if code != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            raise CommandFailed(f"exit status {code}" + (f": {' | '.join(tail)[-400:]}"
                                                          if tail else ""))
        last = out.strip().rsplit(b"\n", 1)[-1].strip()
        try:
            return as_response(int(last))
        except ValueError:
            return response

    def run(self, argv: list) -> tuple[int, bytes, bytes]:
        """(exit status, stdout tail, stderr tail); CommandTimeout after ``timeout`` s."""
        deadline = time.monotonic() + self.timeout
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        with self.lock:
            if self.closed:
                proc.kill()
            self.running.add(proc)
        try:
            tails = _read_until_exit(proc, deadline)
            try:
                code = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise CommandTimeout(f"timeout: still running after {self.timeout:g} s "
                                     "(killed)") from None
            return code, bytes(tails[proc.stdout]), bytes(tails[proc.stderr])
        finally:
            with self.lock:
                self.running.discard(proc)
            proc.stdout.close()
            proc.stderr.close()

    def close(self) -> None:
        """The worker ends: no command outlives it (those running are killed)."""
        with self.lock:
            self.closed = True
            for proc in self.running:
                proc.kill()


def _read_until_exit(proc: subprocess.Popen, deadline: float) -> dict:
    """Read both pipes, keeping each one's last OUTPUT_TAIL bytes, until both close, the
    process exits (a child it left may hold them open: its pidfd says) or the deadline."""
    tails = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    pidfd = os.pidfd_open(proc.pid) if hasattr(os, "pidfd_open") else None
    with selectors.DefaultSelector() as sel:
        for pipe in tails:
            sel.register(pipe, selectors.EVENT_READ)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ)
        try:
            open_pipes, exited = len(tails), False
            while open_pipes:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ready = sel.select(0 if exited else left)
                if exited and not ready:
                    break  # it exited and what it wrote is read (a child may keep the pipes)
                for key, _ in ready:
                    if key.fileobj == pidfd:
                        sel.unregister(pidfd)
                        exited = True
                        continue
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        open_pipes -= 1
                        continue
                    buf = tails[key.fileobj]
                    buf += chunk
                    del buf[:-OUTPUT_TAIL]
        finally:
            if pidfd is not None:
                os.close(pidfd)
    return tails
