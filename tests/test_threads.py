"""A thread budget (issue 24, item 8): warm threads follow the tasks a client will have in flight,
a server's workers share the machine's threads (comlab.system.limits.thread_share), a
thread-per-task batch larger than that share runs in waves that the ideal time and the
server's overdue rule both know, and a pool that cannot fit is refused in one line."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from comlab.lab import ideal
from comlab.system import limits, strategies
from comlab.system.client import Client
from comlab.system.strategies import ThreadPerTask

from test_faults import keys_of, lab_server, status_names, wait_for


def worker_threads(server) -> list[int]:
    pids = [w["pid"] for w in server.control("stats")["workers"]]
    return [psutil.Process(pid).num_threads() for pid in pids]


@pytest.mark.timeout(60)
def test_warm_threads_follow_the_tasks_not_the_batch_size(make_data):
    """Issue 24: ``run_client FILE 1000000000`` made every idle worker park 1,024 threads (32
    workers: the machine ran out of pids). 64 tasks need 64 threads at most."""
    client_file, server_file = make_data(n=64, wait=0.001)
    keys = keys_of(client_file)
    with lab_server(server_file, 2) as server:
        before = worker_threads(server)
        run = Client(keys, 1_000_000_000, "tcp://127.0.0.1:*", server.url, timeout=10).run()
        after = worker_threads(server)
    assert status_names(run.columns()) == ["ok"] * 64
    assert all(a - b <= 64 for a, b in zip(after, before)), (before, after)


@pytest.mark.timeout(120)
def test_a_batch_in_waves_completes_and_counters_stay_within_the_tasks(make_data, monkeypatch):
    """The 140,000-task run, small: one thread-per-task batch of 4,096 tasks of 1 ms runs in 4
    waves of 1,024 (ideal 4 ms, real ~0.5 s) under a 0.3 s slack. The old rule (4 x ideal +
    slack) killed the worker twice and failed the batch; now every task is ok, no worker is
    overdue, and the server never counts more tasks failed than it was sent."""
    monkeypatch.setenv("COMLAB_OVERDUE_SLACK_S", "0.3")
    client_file, server_file = make_data(n=4096, wait=0.001)
    keys = keys_of(client_file)
    with lab_server(server_file, 2) as server:
        run = Client(keys, 4096, "tcp://127.0.0.1:*", server.url, timeout=60).run()
        stats = server.control("stats")
    assert status_names(run.columns()) == ["ok"] * 4096
    assert stats["overdue"] == 0 and stats["worker_deaths"] == 0, stats
    assert stats["failed"] <= stats["tasks"] == 4096


def test_thread_share_splits_the_machine_between_workers():
    assert limits.thread_share(1) == limits.GANG_MAX or \
        limits.thread_share(1) == limits.static_budget() - limits.WORKER_BASE_TASKS
    many = 10 * limits.static_budget() // limits.GANG_MAX
    share = limits.thread_share(many)
    assert share < limits.GANG_MAX
    assert many * (share + limits.WORKER_BASE_TASKS) <= limits.static_budget()


def test_a_gang_stays_within_the_share_and_the_ideal_time_knows_the_waves(monkeypatch):
    monkeypatch.setattr(strategies, "THREADS", 8)
    s = ThreadPerTask()
    try:
        rows = s.map(list(range(50)), [0.001] * 50)
        assert [r[0] for r in rows] == list(range(50))
        assert len(s.gang._all) <= 8
    finally:
        s.close()
    assert ThreadPerTask.duration([0.001] * 50) == pytest.approx(0.007)  # 7 waves
    workers = 10 * limits.static_budget() // limits.GANG_MAX
    wave = limits.thread_share(workers)
    waits = [[1.0] * (2 * wave)]
    assert ideal.ideal_makespan(waits, workers, "thread-per-task") == 2.0


def _run_server(map_file, url, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "comlab.run_server", str(map_file), url, "",
                           *map(str, args), "--ready-json"], capture_output=True, text=True,
                          timeout=30, start_new_session=True)


@pytest.mark.timeout(60)
def test_a_pool_that_cannot_fit_is_refused_in_one_line(make_data, free_url):
    """Checked before anything forks (the old server would have tried to start them all)."""
    _, server_file = make_data(n=8)
    budget, _ = limits.task_budget()
    n = budget  # a process and its threads each: never fits
    proc = _run_server(server_file, free_url(), n)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    # the lab's guard (threads and memory per worker) speaks first, the server's share after it
    assert f"{n:,} workers" in lines[0] and "room for" in lines[0]
    assert proc.stdout == ""


@pytest.mark.timeout(60)
def test_a_thread_pool_beyond_the_share_is_refused_in_one_line(make_data, free_url):
    _, server_file = make_data(n=8)
    workers = 64
    share = limits.thread_share(workers)
    if share >= limits.GANG_MAX:
        pytest.skip("this machine's share per worker is the gang's maximum")
    proc = _run_server(server_file, free_url(), workers, "--strategy",
                       f"thread-pool:{share + 1}")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"share is {share} per worker" in lines[0], proc.stderr
