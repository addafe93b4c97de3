"""Workers die at any moment, the server pauses: nothing wedges, nothing is lost (issue 24, item 1).

Under every dispatch design; the shared queue (``queue``) was the one that wedged: an idle
worker waited in ``multiprocessing.Queue.get`` holding the queue's reader lock, and one killed
there (or killed by the server after a pause) left every later client with nothing. The heavy
versions are bench/chaos.py's ``idle-kill``, ``sigstop-server-long`` and ``worker-churn``
scenarios (under ``/queue`` too).
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from comlab.system import protocol as P
from comlab.system.client import Client
from comlab.system.server import HEARTBEAT_IVL_MS

from conftest import DISPATCH, wait_gone
from test_faults import ClientThread, keys_of, lab_server, status_names, wait_for


def local_pids(server) -> list[int]:
    return [w["pid"] for w in server.control("stats")["workers"]]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dispatch", DISPATCH)
def test_idle_workers_killed_then_a_client_is_served(make_data, dispatch):
    """Kill every idle worker once (one of them holds the queue's reader lock, if it has one);
    the next client gets all its 512 tasks."""
    client_file, server_file = make_data(n=512)
    keys = keys_of(client_file)
    with lab_server(server_file, 2, dispatch=dispatch) as server:
        for pid in local_pids(server):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: server.control("stats")["worker_deaths"] == 2
                 and len(local_pids(server)) == 2, 10, "both workers replaced")
        run = Client(keys, 4, "tcp://127.0.0.1:*", server.url, timeout=10).run()
    assert status_names(run.columns()) == ["ok"] * 512


@pytest.mark.timeout(90)
@pytest.mark.parametrize("dispatch", DISPATCH)
def test_server_paused_loses_nothing(make_data, server_proc, dispatch):
    """SIGSTOP the server for 5 s, SIGCONT: it finds its workers' connections gone (they
    dropped it after the heartbeat TTL) and kills them; the next client gets every task."""
    client_file, server_file = make_data(n=512)
    keys = keys_of(client_file)
    server = server_proc(server_file, 2, "--dispatch", dispatch)
    workers = [p for p in server.tree()[1:] if "multiprocessing" not in " ".join(p.cmdline())]
    assert len(workers) == 2
    # Not synchronisation: the workers must have had a heartbeat (with its TTL) before the
    # pause, or they never drop the server; the first comes HEARTBEAT_IVL_MS after connecting.
    time.sleep(1.5 * HEARTBEAT_IVL_MS / 1000)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        time.sleep(5.0)  # the fault itself (3.5 s is not always enough to drop the workers)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    wait_gone(workers, 5.0)  # it kills them within a second or so (not a promise: no assert)
    run = Client(keys, 4, "tcp://127.0.0.1:*", server.url, timeout=10).run()
    assert status_names(run.columns()) == ["ok"] * 512


@pytest.mark.timeout(90)
@pytest.mark.parametrize("dispatch", DISPATCH)
def test_worker_churn_every_task_has_one_record(make_data, dispatch):
    """SIGKILL a worker every 0.1 s while a run goes on (idle, taking, running, or just done
    with its results still queued on a connection not yet up): every task ends in exactly one
    record, none lost (a batch lost twice fails)."""
    client_file, server_file = make_data(n=600, wait=0.005)
    keys = keys_of(client_file)
    rng = random.Random(7)
    with lab_server(server_file, 2, dispatch=dispatch) as server:
        client = ClientThread(keys, 2, server.url, timeout=20)
        wait_for(client.started, 10, "the handshake")
        kills = 0
        while client.is_alive() and kills < 40:
            pids = local_pids(server)
            if pids:
                try:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
            client.join(0.1)
        run = client.result(40)
        after = Client(keys[:64], 4, "tcp://127.0.0.1:*", server.url, timeout=10).run()
    cols = run.columns()
    names = status_names(cols)
    assert kills >= 3, "the run ended before the churn"
    assert names.count("lost") == 0, f"{names.count('lost')} of {len(keys)} lost"
    assert names.count("ok") + names.count("failed") == len(keys)
    assert run.accepted == len(keys)  # a retried batch may answer twice: the client keeps one
    failed = cols["status"] == P.FAILED
    assert (cols["attempt"][failed] == 1).all()
    assert status_names(after.columns()) == ["ok"] * 64
