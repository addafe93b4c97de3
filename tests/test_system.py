"""End to end: a real server process with its workers, the client command line and the Client
class. Free ports only; every test has a timeout; the conftest leak check guards every test."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from comlab import data
from comlab.system import protocol as P
from comlab.system.client import Client
from conftest import wait_gone


def run_client(client_file, batch, server_url, bind_url, *extra, timeout=60.0):
    """The client command line; returns (CompletedProcess, parsed --json line or None, wall s)."""
    cmd = [sys.executable, "-m", "comlab.run_client", str(client_file), str(batch), bind_url,
           server_url, "--json", *map(str, extra)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    summary = None
    lines = proc.stdout.strip().splitlines()
    if lines and lines[-1].startswith("{"):
        summary = json.loads(lines[-1])
    return proc, summary, wall


def client_keys(client_file):
    return [f"{ip}:{cmd}" for ip, cmd in data.read_commands(client_file)]


def run_in_process(client_file, batch, server_url, bind_url, timeout=30.0):
    run = Client(client_keys(client_file), batch, bind_url, server_url, timeout=timeout).run()
    return run, run.columns()


def assert_ok(proc, summary, n, total):
    assert proc.returncode == 0, proc.stderr
    assert summary is not None, proc.stdout
    assert summary["tasks"] == n and summary["ok"] == n, summary
    assert summary["lost"] == summary["failed"] == 0, summary
    assert summary["sum"] == total
    assert f"sum of responses: {total}" in proc.stdout


@pytest.mark.timeout(60)
def test_seed_shaped_run(make_data, server_proc, free_url):
    client_file, server_file = make_data(n=64, wait=0.05, response=3)
    server = server_proc(server_file, 4)
    assert server.info["workers"] == 4 and server.info["bind"] == server.url

    proc, summary, _ = run_client(client_file, 16, server.url, free_url())
    assert_ok(proc, summary, 64, 64 * 3)

    run, cols = run_in_process(client_file, 16, server.url, free_url())
    ids = np.concatenate([np.frombuffer(P.Results.decode(f).task_ids, P.I64)
                          for f, _ in run.log])
    assert sorted(ids.tolist()) == list(range(64))  # every task id exactly once
    assert run.duplicates == 0 and run.garbage == 0
    assert (cols["status"] == P.OK).all()
    assert (cols["response"] == 3).all()
    assert (cols["t_started"] <= cols["t_finished"]).all()
    assert (cols["t_sent"] <= cols["t_server_in"]).all()
    assert (cols["t_finished"] - cols["t_started"] >= 0.05e9 * 0.9).all()  # each task waited
    assert {w.split("-")[0] for w in cols["worker"]} <= {"w0", "w1", "w2", "w3"}  # + a token


@pytest.mark.timeout(60)
@pytest.mark.parametrize("spec", ["thread-per-task", "thread-pool", "thread-pool:2",
                                  "sequential", "cpu-bound", "faulty:2"])
def test_strategy_on_server(spec, make_data, server_proc, free_url):
    client_file, server_file = make_data(n=32, wait=0.005)
    server = server_proc(server_file, 2, "--strategy", spec)
    assert server.info["strategy"] == spec
    run, cols = run_in_process(client_file, 8, server.url, free_url())
    assert run.duplicates == 0 and run.garbage == 0
    status = cols["status"]
    if spec.startswith("faulty"):
        # Every 2nd task of each batch fails, with the error text; the others are ok.
        second = (np.arange(32) % 8) % 2 == 1
        assert (status[second] == P.FAILED).all() and (status[~second] == P.OK).all()
        assert all("injected fault" in e for e in cols["error"][second])
    else:
        assert (status == P.OK).all(), np.bincount(status)
        assert cols["response"].sum() == 32


@pytest.mark.timeout(60)
def test_unknown_tasks_answered_at_once(make_data, server_proc, free_url, tmp_path):
    client_file, server_file = make_data(n=8, wait=0.0, unknown=3)  # 8 known + 3 unknown
    server = server_proc(server_file, 2)

    # Mixed in: one batch holds the 8 known tasks and the 3 unknown ones.
    proc, summary, wall = run_client(client_file, 11, server.url, free_url(), "--timeout", 30)
    assert proc.returncode == 0, proc.stderr
    assert (summary["ok"], summary["unknown"], summary["lost"]) == (8, 3, 0), summary
    assert summary["sum"] == 8
    assert wall < 10, "the client waited for its timeout"

    # Alone: batches made only of unknown tasks.
    alone = tmp_path / "unknown_only.txt"
    alone.write_text("10.9.9.9:nothing\n192.168.1.1:nope\n10.9.9.9:nothing\n")
    proc, summary, wall = run_client(alone, 2, server.url, free_url(), "--timeout", 30)
    assert proc.returncode == 0, proc.stderr
    assert (summary["tasks"], summary["unknown"], summary["ok"], summary["lost"]) == (3, 3, 0, 0)
    assert summary["sum"] == 0
    assert wall < 10, "the client waited for its timeout"


@pytest.mark.timeout(60)
def test_network_makes_outside_tasks_unreachable(make_data, server_proc, free_url):
    client_file, server_file = make_data(n=512, wait=0.0)  # 192.168.1.0 - .255, foo and bar
    server = server_proc(server_file, 2, "--network", "192.168.1.0/25")

    proc, summary, _ = run_client(client_file, 64, server.url, free_url(), "--timeout", 30)
    assert proc.returncode == 0, proc.stderr
    assert (summary["ok"], summary["unreachable"], summary["lost"]) == (256, 256, 0), summary

    keys = client_keys(client_file)
    _, cols = run_in_process(client_file, 64, server.url, free_url())
    status = dict(zip(keys, cols["status"].tolist()))
    assert status["192.168.1.200:foo"] == status["192.168.1.200:bar"] == P.UNREACHABLE
    assert status["192.168.1.128:foo"] == P.UNREACHABLE
    assert status["192.168.1.127:foo"] == status["192.168.1.5:bar"] == P.OK


@pytest.mark.timeout(30)
def test_client_without_server_fails(make_data, free_url):
    client_file, _ = make_data(n=8)
    proc, summary, wall = run_client(client_file, 4, free_url(), free_url(), "--timeout", 1,
                                     timeout=20)
    assert proc.returncode != 0
    assert "error" in proc.stderr and "no server" in proc.stderr, proc.stderr
    assert "sum of responses" not in proc.stdout and summary is None
    assert wall < 1 + 5


@pytest.mark.timeout(30)
def test_server_port_in_use(make_data, free_url):
    _, server_file = make_data(n=8)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        url = f"tcp://127.0.0.1:{holder.getsockname()[1]}"
        cmd = [sys.executable, "-m", "comlab.run_server", str(server_file), url, "", "1",
               "--ready-json"]
        proc = subprocess.run(cmd,
                              capture_output=True, text=True, timeout=20,
                              start_new_session=True)
    assert proc.returncode != 0
    assert url in proc.stderr and "in use" in proc.stderr, proc.stderr
    assert proc.stdout == ""  # never reported ready


@pytest.mark.timeout(30)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_server_stop_leaves_nothing(signum, make_data, server_proc, free_url):
    client_file, server_file = make_data(n=32)
    server = server_proc(server_file, 3)
    # A run just before the signal: it lands while the server still handles the workers' DONE
    # messages (a SIGTERM there used to be lost until the next message came).
    run, _ = run_in_process(client_file, 4, server.url, free_url())
    assert run.accepted == 32
    tree = server.tree()
    pids = {p.pid for p in tree}
    assert server.pid in pids
    assert len(tree) >= 1 + 3, f"expected the server and 3 workers, found {tree}"
    workers = [p for p in tree if p.pid != server.pid]
    assert all(p.is_running() for p in workers)

    server.proc.send_signal(signum)
    left = wait_gone(tree, 2.0)
    assert not left, f"alive 2 s after {signal.Signals(signum).name}: {[p.pid for p in left]}"
    rc = server.proc.wait(1)
    if signum == signal.SIGKILL:
        assert rc == -signal.SIGKILL
    else:
        assert rc == 0, server.stderr()


@pytest.mark.timeout(30)
def test_idle_server_uses_no_cpu(make_data, server_proc):
    _, server_file = make_data(n=8)
    server = server_proc(server_file, 2)
    tree = server.tree()
    assert len(tree) >= 3

    def cpu():
        total = 0.0
        for p in tree:
            t = p.cpu_times()
            total += t.user + t.system
        return total

    time.sleep(0.2)  # let start-up settle (the ready line comes as the last worker is ready)
    before = cpu()
    time.sleep(1.0)
    used = cpu() - before
    assert used < 0.2, f"idle server tree used {used:.3f} s of CPU in 1 s"


@pytest.mark.timeout(60)
def test_zero_wait_soak(make_data, server_proc, free_url):
    n = 50_000
    client_file, server_file = make_data(n=n, wait=0.0)
    server = server_proc(server_file, 2)
    proc, summary, wall = run_client(client_file, 64, server.url, free_url(), "--timeout", 30,
                                     timeout=45)
    assert_ok(proc, summary, n, n)
    assert wall < 30
