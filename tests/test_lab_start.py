"""The lab's processes at their edges (issue 25, items 1, 2, 3, 6): what a sweep may start is
checked against the machine before anything starts; a pool start is cancelled within 2 s by
the readiness timeout, Ctrl-C or the lab's death; a batch size is bounded by the tasks; a lab
process that dies is one line naming it, its exit code and its log's last lines, the log kept
in the result folder, and the lab does not wait on it.

Pool starts are made slow on purpose with COMLAB_TEST_FORK_DELAY_S (comlab.system.pool), so a
few dozen workers stand for the thousands of the issue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from comlab.lab.processes import ProcessDied, ServerProcess, workdir as make_workdir
from comlab.system.pool import FORK_DELAY_ENV

from conftest import descendants, wait_gone


def _tagged(tag: str) -> list[psutil.Process]:
    """Live processes whose environment carries COMLAB_TEST_TAG=tag."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("COMLAB_TEST_TAG") == tag and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def _wait_for(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)
    return value


def _servers(tag: str) -> list[psutil.Process]:
    """The tagged server process and the workers it forked (they share its command line)."""
    out = []
    for p in _tagged(tag):
        try:
            if "comlab.run_server" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _sweep(tmp_path, tag: str, *args: str, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "comlab", "sweep", "--results-dir",
                             str(tmp_path / "r"), "--name", "n", "--no-plots", "--no-progress",
                             "--yes", "--repeats", "1", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            env={**os.environ, "COMLAB_TEST_TAG": tag, **(env or {})})


def _finish(proc: subprocess.Popen, tag: str) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    proc.stderr.close()
    for p in _tagged(tag):
        p.kill()


# -- item 2: a pool start is cancellable --------------------------------------------------------
@pytest.mark.timeout(60)
def test_readiness_timeout_kills_a_pool_still_starting(make_data, monkeypatch):
    """Before: the lab raised, and the server it left went on forking its pool. Now the
    server's whole process group is killed at once: nothing is left within 2 s."""
    _, server_file = make_data(n=8)
    monkeypatch.setenv(FORK_DELAY_ENV, "0.2")  # 40 workers: an 8 s start
    wd = make_workdir()
    t0 = time.monotonic()
    with pytest.raises(ProcessDied, match=r"the server \(pid \d+, exit code -9\) was not ready "
                                          r"within 1 s"):
        ServerProcess(str(server_file), 40, wd, ready_timeout=1.0)
    assert time.monotonic() - t0 < 3.0
    assert not wait_gone(descendants(), 2.0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_ctrl_c_or_sigkill_of_the_lab_during_a_pool_start(sig, tmp_path):
    """Ctrl-C (the lab's own teardown) or SIGKILL (the server finds its stdin closed between
    two forks) while 60 workers start: every process is gone within 2 s."""
    tag = uuid.uuid4().hex
    lab = _sweep(tmp_path, tag, "--workers", "60", "--batch-sizes", "1",
                 env={FORK_DELAY_ENV: "0.2"})
    try:
        _wait_for(lambda: len(_servers(tag)) >= 4, 30, "the pool start under way")
        lab.send_signal(sig)
        t0 = time.monotonic()
        assert lab.wait(5) == (130 if sig == signal.SIGINT else -sig)
        left = wait_gone(_tagged(tag), max(0.1, 2.0 - (time.monotonic() - t0)))
        assert not left, [" ".join(p.cmdline())[:80] for p in left]
    finally:
        _finish(lab, tag)


# -- item 6: a lab process that dies is named ---------------------------------------------------
@pytest.mark.timeout(90)
@pytest.mark.parametrize("victim", ["server", "agent"])
def test_a_lab_process_killed_mid_run_is_one_line_with_its_kept_log(victim, make_data,
                                                                    tmp_path):
    """SIGKILL the server or the client agent mid-run. Before: a traceback naming a log in
    the lab's temporary directory (already removed), and a lab that waited out the run or
    10 s for a dead server's stats. Now: one line (which process, exit code -9, its log's last
    lines), the log kept in results/NAME/logs/, the lab ends at once, exit 1."""
    client_file, server_file = make_data(n=64, wait=0.2)
    tag = uuid.uuid4().hex
    lab = _sweep(tmp_path, tag, "--workers", "1", "--batch-sizes", "1",
                 "--commands", str(client_file), "--map", str(server_file))
    try:
        marker = "comlab.run_server" if victim == "server" else "comlab.lab.agent"
        _wait_for(lambda: (tmp_path / "r" / "n" / "meta.json").exists()
                  and any(marker in " ".join(p.cmdline()) for p in _tagged(tag)), 30,
                  "the first run under way")
        time.sleep(0.5)  # well inside the run (12.8 s ideal)
        target = [p for p in _tagged(tag) if marker in " ".join(p.cmdline())
                  and p.ppid() == lab.pid]
        assert len(target) == 1, target
        target[0].kill()
        t0 = time.monotonic()
        code = lab.wait(10)
        took = time.monotonic() - t0
        err = lab.stderr.read().strip().splitlines()
        assert code == 1, err
        assert len(err) == 1 and "Traceback" not in err[0], err
        what = "the server" if victim == "server" else "the client agent"
        assert err[0].startswith(f"error: {what} (pid {target[0].pid}, exit code -9) died"), err
        log = tmp_path / "r" / "n" / "logs" / ("server-1-tcp.log" if victim == "server"
                                               else "client.log")
        assert f"its log {log}" in err[0] and log.exists(), err
        assert took < 4.0, took
        assert not wait_gone(_tagged(tag), 2.0)
    finally:
        _finish(lab, tag)
