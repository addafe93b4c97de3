"""Shared fixtures: process-leak check, free ports, a server subprocess factory, small data files.

Every test runs under ``no_process_leak`` (autouse): processes a test leaves behind fail it.
"""

from __future__ import annotations

import functools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from comlab import data

# Every process a test starts inherits this mark, so the orphan scan only ever touches processes
# of this pytest run (never another engineer's server that happens to be an orphan too).
RUN_MARK = "COMLAB_TEST_RUN"
RUN_ID = uuid.uuid4().hex
os.environ[RUN_MARK] = RUN_ID

LEAK_GRACE_S = 3.0
READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 3.0


# -- process leaks -------------------------------------------------------------------------------
def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_own_helper(proc: psutil.Process) -> bool:
    """multiprocessing's forkserver / resource tracker of the test process itself: they live as
    long as the test process by design (started by any in-process use of the forkserver)."""
    try:
        if proc.ppid() != os.getpid():
            return False
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return ("multiprocessing.forkserver import main" in cmd
            or "multiprocessing.resource_tracker import main" in cmd)


def _ppid_map() -> dict[int, int]:
    """pid -> parent pid of every process, in one cheap scan (this check runs twice a test)."""
    scan = getattr(psutil, "_ppid_map", None)  # what Process.children() itself uses
    if scan is not None:
        try:
            return scan()
        except Exception:
            pass
    return {p.pid: p.info["ppid"] for p in psutil.process_iter(["ppid"])}


def _processes(pids) -> set[psutil.Process]:
    procs = set()
    for pid in pids:
        try:
            procs.add(psutil.Process(pid))
        except psutil.Error:
            pass
    return procs


def descendants(ppids: dict[int, int] | None = None) -> set[psutil.Process]:
    """Live descendants of the test process (recursive), not counting its own mp helpers."""
    ppids = _ppid_map() if ppids is None else ppids
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], list(children.get(os.getpid(), ()))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return {p for p in _processes(found) if _alive(p) and not _is_own_helper(p)}


def orphans(ppids: dict[int, int] | None = None) -> set[psutil.Process]:
    """comlab processes re-parented to init (parent pid 1) that this pytest run started."""
    ppids = _ppid_map() if ppids is None else ppids
    found = set()
    for p in _processes(pid for pid, ppid in ppids.items() if ppid == 1):
        try:
            if not any("comlab" in a for a in p.cmdline()):
                continue
            if p.environ().get(RUN_MARK) != RUN_ID:
                continue
        except psutil.Error:
            continue
        if _alive(p):
            found.add(p)
    return found


def _suspects() -> set[psutil.Process]:
    ppids = _ppid_map()
    return descendants(ppids) | orphans(ppids)


def _describe(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        cmd = "?"
    return f"pid {proc.pid}: {cmd[:160]}"


def wait_gone(procs, timeout: float) -> list[psutil.Process]:
    """Poll until every process is gone (zombies count as gone); return those still alive."""
    deadline = time.monotonic() + timeout
    left = [p for p in procs if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if _alive(p)]
    return left


# Tests that build network namespaces run one after another on one xdist worker (they are
# self-contained, but a namespace set-up is heavy and its names are per process).
NETNS_FILES = {"test_ssh_hosts.py", "test_sshd_fixture.py", "test_remote.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in NETNS_FILES or "namespace" in item.name or "partition" in item.name:
            item.add_marker(pytest.mark.xdist_group("netns"))


@pytest.fixture(autouse=True)
def no_process_leak():
    before = _suspects()
    yield
    new = _suspects() - before
    left = wait_gone(new, LEAK_GRACE_S)
    if not left:
        return
    # Take the tree again: a leftover may have started more processes meanwhile.
    for p in list(left):
        try:
            left.extend(c for c in p.children(recursive=True) if c not in left)
        except psutil.Error:
            pass
    names = [_describe(p) for p in left]
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=3)
    pytest.fail(f"{len(left)} process(es) still alive {LEAK_GRACE_S:g} s after the test "
                f"(killed): " + "; ".join(names), pytrace=False)


# -- ports ---------------------------------------------------------------------------------------
def free_tcp_url() -> str:
    """tcp://127.0.0.1:PORT with a port the OS just handed out (never a fixed port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


# Fault tests run under every dispatch design (comlab.system.dispatch).
DISPATCH = ["broker", "broker:0", "queue"]


@pytest.fixture
def free_url():
    """The ``free_tcp_url`` helper, as a fixture: call it for each URL needed."""
    return free_tcp_url


# -- data ----------------------------------------------------------------------------------------
def small_data(tmp_path, n: int = 64, wait: float = 0.0, **kwargs) -> tuple[Path, Path]:
    """Write a client file of ``n`` tasks (plus ``unknown=...`` extra unknown ones) and the
    matching server map with a constant ``wait``; return (client path, server path)."""
    commands = kwargs.pop("commands", ("foo", "bar") if n % 2 == 0 else ("foo",))
    hosts = n // len(commands)
    if hosts * len(commands) != n:
        raise ValueError(f"{n} tasks cannot be made of {len(commands)} commands per host")
    network = kwargs.pop("network", "192.168.1.0/24" if hosts <= 256 else "10.0.0.0/8")
    return data.generate(tmp_path, hosts=hosts, commands=commands, network=network,
                         wait="constant", wait_mean=wait, **kwargs)


@pytest.fixture
def make_data(tmp_path):
    """``small_data`` bound to this test's tmp_path: ``make_data(n=64, wait=0.0, **kw)``."""
    return functools.partial(small_data, tmp_path)


# -- a server subprocess -------------------------------------------------------------------------
class _Drain(threading.Thread):
    """Reads a pipe to its end so the child never blocks on a full pipe; keeps the text."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.chunks = pipe, []
        self.start()

    def run(self):
        for chunk in iter(lambda: self.pipe.read1(65536), b""):
            self.chunks.append(chunk)

    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")


@dataclass
class ServerHandle:
    url: str
    proc: subprocess.Popen
    info: dict
    _stderr: _Drain | None = field(repr=False, default=None)
    _stdout: _Drain | None = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self._stderr.text() if self._stderr is not None else ""

    def tree(self) -> list[psutil.Process]:
        """The server and all its descendants (forkserver, workers, resource tracker)."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root] + root.children(recursive=True)
        except psutil.Error:
            return []


def server_command(map_file, bind_url: str, n_workers: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "comlab.run_server", str(map_file), bind_url, "", str(n_workers),
            *map(str, extra)]


def _read_ready_line(proc: subprocess.Popen, timeout: float) -> tuple[dict | None, bytes]:
    """Wait for one line on the child's stdout, with a deadline; (info or None, raw bytes)."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return None, buf
            chunk = os.read(fd, 65536)
            if not chunk:  # the server exited (or closed stdout) before it was ready
                return None, buf
            buf += chunk
    line = buf.split(b"\n", 1)[0]
    try:
        return json.loads(line), buf
    except ValueError:
        return None, buf


def stop_server(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL (the server only: what its tree leaves
    behind is for the leak check to see)."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _close_pipes(proc: subprocess.Popen, drains) -> None:
    """Close the pipes whose reader saw EOF. A pipe a leaked descendant still holds stays open
    (closing it would block on the reader thread); the leak check kills the holder."""
    for pipe, drain in zip((proc.stdout, proc.stderr), drains):
        if drain is not None:
            drain.join(0.5)
        if pipe is not None and (drain is None or not drain.is_alive()):
            pipe.close()


@pytest.fixture
def server_proc(no_process_leak, free_url):
    """Factory: ``server_proc(map_file, n_workers=2, *extra_args, bind=None)`` starts
    ``python -m comlab.run_server MAP BIND "" N [extra] --ready-json`` and returns a
    ServerHandle once the server printed its ready line. Stopped at teardown."""
    started: list[tuple] = []  # (Popen, (stdout drain, stderr drain))

    def start(map_file, n_workers: int = 2, *extra: str, bind: str | None = None) -> ServerHandle:
        url = bind or free_url()
        proc = subprocess.Popen(server_command(map_file, url, n_workers, *extra, "--ready-json"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        started.append((proc, (None, None)))
        stderr = _Drain(proc.stderr)
        info, raw = _read_ready_line(proc, READY_TIMEOUT_S)
        if info is None:
            stop_server(proc)
            stderr.join(2)
            started[-1] = (proc, (None, stderr))
            pytest.fail(f"server did not report ready within {READY_TIMEOUT_S:g} s "
                        f"(exit code {proc.poll()}); stdout {raw[:500]!r}; "
                        f"stderr {stderr.text()[-2000:]!r}")
        stdout = _Drain(proc.stdout)  # keep stdout flowing after the ready line
        started[-1] = (proc, (stdout, stderr))
        return ServerHandle(url=url, proc=proc, info=info, _stderr=stderr, _stdout=stdout)

    yield start
    for proc, _ in started:
        stop_server(proc)
    for proc, drains in started:
        _close_pipes(proc, drains)
