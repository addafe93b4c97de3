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

import comlab
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
        # The agent starts with the first run, once the server is ready.
        _wait_for(lambda: any("comlab.lab.agent" in " ".join(p.cmdline())
                              for p in _tagged(tag)), 30, "the first run under way")
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


# -- item 1: resource guards before anything starts ---------------------------------------------
@pytest.fixture
def small_machine(monkeypatch):
    """A machine with room for 1,000 processes/threads and 2 GiB (both budgets are halved)."""
    from comlab.system import limits
    monkeypatch.setattr(limits, "tasks_max", lambda: 2000)
    monkeypatch.setattr(limits, "tasks_in_use", lambda: 0)
    monkeypatch.setattr(limits, "nproc_limit", lambda: None)
    monkeypatch.setattr(limits, "available_memory", lambda: 2 << 30)


@pytest.mark.parametrize("kwargs, names", [
    # 100 workers x (3 + 64 warm threads) = 6,700 > 1,000: (1,000 - 16) // 67 = 14 fit
    ({"workers": [1, 100], "batch_sizes": [1, 64]}, "workers 100: 100 workers of 67 threads "
     "each need 6,716 processes and threads; this machine has room for 1,000 (pid_max 2000, 0 in "
     "use, comlab takes at most 50% of the rest): at most 14 workers fit"),
    # both strategies' threads are kept: 3 + 16 + 4
    ({"workers": [50], "batch_sizes": [16], "strategy": ["thread-per-task", "thread-pool:4"]},
     "workers 50: 50 workers of 23 threads each"),
    # memory: 300 x (4 MiB + 0 threads kept) = 1,200 MiB > 1,024 MiB: 256 fit
    ({"workers": [300], "batch_sizes": [1], "strategy": "sequential"},
     "workers 300: 300 workers need about 1,200 MiB (4.0 MiB each); this machine has room "
     "for 1,024 MiB (MemAvailable 2,048 MiB, comlab takes at most 50%): at most 256 workers fit"),
    # worker hosts on this machine count; a batch above the 512 tasks keeps 512 threads
    ({"workers": [1], "batch_sizes": [10**6], "hosts": ["local workers=2"]},
     "workers 1 (+2 on worker hosts here): 3 workers of 515 threads"),
])
def test_workers_beyond_the_machine_are_refused_before_anything_starts(
        kwargs, names, small_machine, tmp_path, monkeypatch):
    from comlab.lab import experiment, hosts
    monkeypatch.setattr(hosts, "probe_all", lambda *a: pytest.fail("a host was probed"))
    monkeypatch.setattr(experiment, "Session", lambda *a, **k: pytest.fail("a session started"))
    with pytest.raises(ValueError) as err:
        experiment.run_experiment(results_dir=tmp_path, progress=False, **kwargs)
    assert names in str(err.value) and "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())


def test_run_server_refuses_workers_beyond_the_machine(small_machine, capsys, monkeypatch):
    from comlab import data, run_server
    from comlab.system import server
    monkeypatch.setattr(server.Server, "prepare", lambda self: pytest.fail("a pool started"))
    assert run_server.main([str(data.seed_path("server_data.txt")), "tcp://127.0.0.1:1", "",
                            "300"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: MAX_WORKERS 300: 300 workers of 4 threads each need 1,216 processes "
                   "and threads; this machine has room for 1,000 (pid_max 2000, 0 in use, comlab "
                   "takes at most 50% of the rest): at most 246 workers fit"]


# -- item 3: memory follows the tasks, not the batch size ---------------------------------------
def test_a_batch_size_above_the_tasks_costs_nothing():
    """Before: ClientRun.columns repeated each batch's send stamp batch_size times (8 bytes
    each: 7.9 GB at 10**9, MemoryError beyond), and the client sent that size to the server."""
    import numpy as np
    from array import array
    from comlab.system.client import Client, ClientRun
    assert Client(["10.0.0.1:foo"], 10**13, "tcp://127.0.0.1:*",
                  "tcp://127.0.0.1:1").batch_size == 1
    run = ClientRun(3, 10**13, "tcp://127.0.0.1:1")
    run.t_sent = array("q", [123])
    run.t_intended = np.array([100], np.int64)
    cols = run.columns()
    assert cols["t_sent"].tolist() == [123] * 3 and cols["t_intended"].tolist() == [100] * 3
    assert cols["batch_id"].tolist() == [0, 0, 0]


@pytest.mark.timeout(60)
def test_a_sweep_with_a_batch_above_its_tasks_runs_them_as_one_batch(make_data, tmp_path):
    """Said once (a warning); the runs, records and meta.json say the batch it ran."""
    import json
    from comlab.lab import experiment
    client_file, server_file = make_data(n=4)
    with pytest.warns(comlab.ComlabWarning, match="batch sizes above the 4 tasks run as 4") as caught:
        df = experiment.run_experiment(batch_sizes=[10**13, 2, 4], workers=[1], repeats=1,
                                       commands=str(client_file), server_map=str(server_file),
                                       results_dir=tmp_path, name="b", progress=False)
    assert sum("batch sizes above" in str(w.message) for w in caught) == 1
    assert sorted(df["batch_size"].unique()) == [2, 4] and len(df) == 8
    assert (df["status"] == "ok").all()
    assert json.loads((tmp_path / "b" / "meta.json").read_text())["params"]["batch_sizes"] \
        == [4, 2]


def test_worker_host_refuses_workers_beyond_the_machine(small_machine, capsys, monkeypatch):
    from comlab.system import worker_host
    monkeypatch.setattr(worker_host, "WorkerHost", lambda *a, **k: pytest.fail("host started"))
    assert worker_host.main(["tcp://127.0.0.1:1", "--workers", "300"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --workers 300: 300 workers of 4 threads")
    assert err[0].endswith("at most 246 workers fit")


@pytest.mark.timeout(60)
def test_worker_host_stops_its_pool_start_when_the_lab_leaves(free_url):
    """A worker host (what the lab starts on each host) whose stdin closes while its 40
    workers start (slowly, on purpose) stops between two forks: all gone within 2 s."""
    proc = subprocess.Popen([sys.executable, "-m", "comlab.system.worker_host", free_url(),
                             "--workers", "40", "--watch-stdin"], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, FORK_DELAY_ENV: "0.2"})
    try:
        root = psutil.Process(proc.pid)
        _wait_for(lambda: len(root.children(recursive=True)) >= 5, 30, "the pool start under way")
        tree = [root] + root.children(recursive=True)
        proc.stdin.close()
        assert not wait_gone(tree + root.children(recursive=True), 2.0)
        assert "the lab closed the connection" in proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        proc.stderr.close()
