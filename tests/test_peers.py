"""Peers that are not who they say (issue 24, items 2, 6, 7): a HELLO naming another client's
URL, a flood of HELLOs, BATCHes above the wire's limits, a peer holding a worker's routing id,
plain-TCP worker endpoints other hosts reach, per-host worker keys and their withdrawal.
Each test names the finding it keeps fixed; the heavy versions are scenarios of bench/chaos.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import psutil
import pytest
import zmq

from comlab.system import protocol as P
from comlab.system.client import Client, NoServer

from conftest import free_tcp_url
from test_faults import ClientThread, keys_of, lab_server, status_names, wait_for
from test_chaos import cli, one_line_error


def _push(ctx, url: str) -> zmq.Socket:
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    return sock


def unknown_batch(run: int, url: str, n: int, batch_id: int = 0) -> bytes:
    """A BATCH of ``n`` distinct unknown keys (the 58 MB finding's shape, smaller)."""
    keys = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:nope" for i in range(n)]
    return P.Batch(run, url, batch_id, P.ids_bytes(range(n)), keys).pack()


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2 ** 20


# -- item 6: runs cannot be ended or starved by others -----------------------------------------
@pytest.mark.timeout(60)
def test_hello_naming_an_active_runs_url_costs_it_nothing(make_data):
    """Finding: a HELLO naming a running client's result URL ended its run (192-196 of 512
    tasks lost)."""
    client_file, server_file = make_data(n=64, wait=0.02)
    keys = keys_of(client_file)
    with lab_server(server_file, 1) as server:
        client = ClientThread(keys, 2, server.url, timeout=30)
        wait_for(client.started, 10, "the client's run started")
        ctx = zmq.Context()
        try:
            push = _push(ctx, server.url)
            for run in range(1, 4):  # new runs on its URL, while it runs
                push.send(P.Hello(run, client.client.reply_url, 1, b"").pack())
                time.sleep(0.1)
            run = client.result(30)
            stats = server.control("stats")
        finally:
            ctx.destroy(linger=0)
    assert status_names(run.columns()) == ["ok"] * 64
    assert stats["refused"] >= 2, stats  # the first waited for the run to end


@pytest.mark.timeout(90)
def test_hello_flood_leaves_legitimate_clients_served(make_data):
    """Finding: 300 HELLOs to fresh URLs took all 256 client slots for a minute; legitimate
    clients were refused. 1,000 over 4 s; 8 clients start during the flood: all served."""
    client_file, server_file = make_data(n=16, wait=0.0)
    keys = keys_of(client_file)
    with lab_server(server_file, 1) as server:
        ctx = zmq.Context()
        stop = threading.Event()
        fds = []

        def flood():
            push = _push(ctx, server.url)
            t0 = time.monotonic()
            for i in range(1000):
                if stop.is_set():
                    return
                # a port on another loopback address: nobody listens there
                push.send(P.Hello(10**6 + i, f"tcp://127.0.0.2:{20000 + i}", 1, b"").pack())
                time.sleep(max(0.0, t0 + 0.004 * (i + 1) - time.monotonic()))
                if i % 100 == 0:
                    fds.append(psutil.Process(server.proc.pid).num_fds())

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        try:
            clients = []
            for _ in range(8):
                time.sleep(0.4)
                clients.append(ClientThread(keys, 4, server.url, timeout=20))
            runs = [c.result(40) for c in clients]
            flooder.join(20)
            stats = server.control("stats")
        finally:
            stop.set()
            ctx.destroy(linger=0)
    for run in runs:
        assert status_names(run.columns()) == ["ok"] * 16
    assert stats["runs_reclaimed"] > 0, stats
    assert max(fds) < 4 * 256 + 64, fds  # a socket, its monitor pair, its connection each


# -- item 7: bounded work per message ------------------------------------------------------------
@pytest.mark.timeout(60)
def test_batch_above_the_limits_is_refused_before_any_work(make_data):
    """Finding: four 58 MB BATCH frames of 4.4 M unknown keys with fresh reply URLs held the
    loop 7-13 s each and left the server 700 MiB bigger for good. Here: frames of the same shape
    that fit the byte limit but not the task limit, one above the byte limit, then a run."""
    client_file, server_file = make_data(n=16, wait=0.0)
    keys = keys_of(client_file)
    n = P.MAX_BATCH_TASKS + 1
    with lab_server(server_file, 1) as server:
        ctx = zmq.Context()
        try:
            rss0 = rss_mib(server.proc.pid)
            pull = ctx.socket(zmq.PULL)
            pull.setsockopt(zmq.LINGER, 0)
            url = f"tcp://127.0.0.1:{pull.bind_to_random_port('tcp://127.0.0.1')}"
            push = _push(ctx, server.url)
            secret = b"s" * 16
            push.send(P.Hello(7, url, 1, secret).pack())
            assert pull.poll(10_000) and P.Welcome.decode(pull.recv()).run == 7
            push.send(unknown_batch(7, url, n, batch_id=3))  # its client hears why
            assert pull.poll(10_000), "no answer to a BATCH above the task limit"
            refusal = P.Welcome.decode(pull.recv())
            assert refusal.run == 7 and f"{n} tasks" in refusal.info["refused"]
            assert refusal.info["token"] == P.batch_token(secret, 3)
            for i in range(4):  # fresh reply URLs nobody listens at
                push.send(unknown_batch(100 + i, free_tcp_url(), 4 * n))
            wait_for(lambda: server.control("stats")["refused_batches"] >= 5, 20,
                     "the batches refused")
            big = _push(ctx, server.url)  # above the byte limit: libzmq drops the sender
            big.send(b"\x00" * (P.MAX_BATCH_BYTES + 1))
            stats = server.control("stats")
            wait_for(lambda: rss_mib(server.proc.pid) < rss0 + 50, 10,
                     "the server's memory back within 50 MiB of its start")
        finally:
            ctx.destroy(linger=0)
        run = Client(keys, 4, "tcp://127.0.0.1:*", server.url, timeout=20).run()
    assert status_names(run.columns()) == ["ok"] * 16
    assert (stats["tasks"], stats["unknown"], stats["batches"]) == (0, 0, 0), stats


@pytest.mark.timeout(60)
def test_answers_to_urls_nobody_listens_at_are_bounded_and_freed(make_data):
    """Finding: results for unknown tasks queued to fresh reply URLs stayed in the server (its
    RSS did not come back). 20 batches of 60,000 unknown keys (about 1.6 MB of answers each),
    each to its own URL nobody listens at: at most 16 MiB wait, and within seconds the sockets
    are let go."""
    client_file, server_file = make_data(n=16, wait=0.0)
    with lab_server(server_file, 1) as server:
        ctx = zmq.Context()
        try:
            rss0 = rss_mib(server.proc.pid)
            push = _push(ctx, server.url)
            for i in range(20):
                push.send(unknown_batch(200 + i, free_tcp_url(), 60_000))
            wait_for(lambda: server.control("stats")["batches"] >= 20, 20, "the batches read")
            stats = server.control("stats")
            wait_for(lambda: server.control("stats")["clients"] == 0, 10,
                     "the sockets to URLs nobody listens at let go")
            wait_for(lambda: rss_mib(server.proc.pid) < rss0 + 50, 10,
                     "the server's memory back within 50 MiB of its start")
        finally:
            ctx.destroy(linger=0)
        run = Client(keys_of(client_file), 4, "tcp://127.0.0.1:*", server.url, timeout=20).run()
    assert stats["client_drops"] >= 8, stats  # 20 x 1.6 MB > 16 MiB: the rest dropped
    assert status_names(run.columns()) == ["ok"] * 16


def test_client_refuses_to_build_a_batch_above_the_limits():
    keys = [f"10.0.{i >> 8 & 255}.{i & 255}:x" for i in range(P.MAX_BATCH_TASKS + 1)]
    with pytest.raises(ValueError, match="limit of 65536 tasks"):
        Client(keys, P.MAX_BATCH_TASKS + 1, "tcp://127.0.0.1:*", "tcp://127.0.0.1:1")
    Client(keys, P.MAX_BATCH_TASKS, "tcp://127.0.0.1:*", "tcp://127.0.0.1:1")  # at the limit
    long = ["10.0.0.1:" + "x" * 200] * 50_000
    with pytest.raises(ValueError, match="bytes per batch"):
        Client(long, 50_000, "tcp://127.0.0.1:*", "tcp://127.0.0.1:1")


# A client whose own check is off (another version, say): the server's refusal ends it.
_UNCHECKED_CLIENT = """
import sys
import comlab.system.client as C
C.check_batch_limits = lambda keys, size: None
from comlab.run_client import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.timeout(60)
def test_refused_batch_is_one_line_and_exit_2(make_data, tmp_path, free_url):
    _, server_file = make_data(n=8)
    n = P.MAX_BATCH_TASKS + 1
    big = tmp_path / "big.txt"
    big.write_text("".join(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:foo\n"
                           for i in range(n)))
    proc = cli("comlab.run_client", big, n, free_url(), "tcp://127.0.0.1:1", "--timeout", 5)
    assert proc.returncode == 2 and "limit of 65536 tasks" in one_line_error(proc)
    with lab_server(server_file, 1) as server:
        proc = subprocess.run([sys.executable, "-c", _UNCHECKED_CLIENT, str(big), str(n),
                               free_url(), server.url, "--timeout", "20"],
                              capture_output=True, text=True, timeout=50)
        assert server.control("stats")["refused_batches"] == 1
    assert proc.returncode == 2, proc.stderr
    assert "refused a batch" in one_line_error(proc)


# -- item 6: worker routing ids, a worker that reconnects ----------------------------------------
@pytest.mark.timeout(60)
def test_frozen_worker_rejoins_and_its_routing_id_cannot_be_taken(make_data, tmp_path):
    """Finding: a remote worker frozen 5 s while a peer connected with its routing id
    (``host/pid/n``): 500 of 512 lost, the real worker never rejoined."""
    from test_remote import WorkerHosts, control, wait_workers, workers_of
    client_file, server_file = make_data(n=64, wait=0.01)
    keys = keys_of(client_file)
    wurl, ctl = free_tcp_url(), f"ipc://{tmp_path}/ctl"
    hosts = WorkerHosts()
    ctx = zmq.Context()
    victim = None
    try:
        with lab_server(server_file, 0, workers_url=wurl) as server:
            host = hosts.start(wurl, 1, host="remote-a")
            ctl = server.control_url
            name = host.info["workers"][0]
            assert [w["name"] for w in wait_workers(ctl, 1)] == [name]
            victim = workers_of(host)[0].pid
            os.kill(victim, signal.SIGSTOP)
            wait_for(lambda: "remote-a" not in {w["host"] for w in control(ctl, "stats")
                                                ["workers"]}, 10,
                     "the frozen worker lost (heartbeat)")
            peer = ctx.socket(zmq.DEALER)
            peer.setsockopt(zmq.LINGER, 0)
            peer.setsockopt(zmq.ROUTING_ID, name.encode())  # the id it had before
            peer.connect(wurl)
            peer.send(P.Ready("peer", "peer-host", 1).pack())  # then silent: takes nothing
            wait_for(lambda: "peer" in {w["name"] for w in control(ctl, "stats")["workers"]},
                     10, "the peer joined")
            os.kill(victim, signal.SIGCONT)
            victim = None
            wait_for(lambda: name in {w["name"] for w in control(ctl, "stats")["workers"]},
                     10, "the worker rejoined")
            run = Client(keys, 4, "tcp://127.0.0.1:*", server.url, timeout=20).run()
    finally:
        if victim is not None:
            os.kill(victim, signal.SIGCONT)
        ctx.destroy(linger=0)
        hosts.close()
    cols = run.columns()
    assert status_names(cols) == ["ok"] * 64 and set(cols["host"]) == {"remote-a"}


# -- item 2: who may be a worker ---------------------------------------------------------------
@pytest.mark.timeout(60)
def test_reachable_worker_endpoint_needs_curve_or_insecure(make_data, free_url):
    """Finding: a plain-TCP peer on --workers-url took 94 % of the batches and answered none."""
    _, server_file = make_data(n=8)
    port = free_url().rsplit(":", 1)[1]
    proc = cli("comlab.run_server", server_file, free_url(), "", 1,
               "--workers-url", f"tcp://0.0.0.0:{port}", "--ready-json")
    assert proc.returncode == 2 and "--insecure" in one_line_error(proc)
    with pytest.raises(ValueError, match="reachable from other hosts"):
        import comlab
        comlab.run_experiment(batch_sizes=[1], workers=[1], remote_workers=1,
                              workers_url=f"tcp://0.0.0.0:{port}", commands=["10.0.0.1:a"],
                              server_map={"10.0.0.1": {"a": (1, 0.0)}}, progress=False)
    proc = subprocess.Popen([sys.executable, "-m", "comlab.run_server", str(server_file),
                             free_url(), "", "1", "--workers-url", f"tcp://0.0.0.0:{port}",
                             "--insecure", "--ready-json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().startswith("{")  # ready
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    warnings = [line for line in err.splitlines() if "insecure" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: --insecure"), err


def test_lab_hosts_are_secure_by_default_with_a_key_each(tmp_path):
    from comlab import data
    from comlab.lab.hosts import parse_hosts
    from comlab.lab.session import Session
    from comlab.system.security import AUTHORIZED
    smap = data.ServerMap({"10.0.0.1": {"a": (1, 0.0)}})
    hosts = parse_hosts(["local name=a", "local name=b"])
    assert Session(smap, hosts=hosts).secure
    opt_out = Session(smap, hosts=hosts, secure=False)
    assert not opt_out.secure and opt_out.insecure
    session = Session(smap, hosts=hosts)
    session.workdir = str(tmp_path)
    session.keys_dir = session._make_keys()
    a, b = session._host_keys("a"), session._host_keys("b")
    assert a["public"] != b["public"] and a["secret"] != b["secret"]
    assert session._host_keys("a") == a  # one per host, kept for its restarts
    authorized = sorted(os.listdir(tmp_path / "keys" / AUTHORIZED))
    assert authorized == ["client.key", "server.key", "worker-a.key", "worker-b.key"]


@pytest.mark.timeout(60)
def test_withdrawn_host_key_is_refused(make_data, tmp_path):
    """One host's key is not every host's, and can be withdrawn while the server runs."""
    from test_remote import WorkerHosts, control, wait_workers
    keys_dir = tmp_path / "keys"
    out = cli("comlab.cli", "keys", keys_dir, "--host", "a", "--host", "b")
    assert out.returncode == 0, out.stderr
    client_file, server_file = make_data(n=16, wait=0.0)
    wurl = free_tcp_url()
    hosts = WorkerHosts()
    try:
        with lab_server(server_file, 0, workers_url=wurl, curve_keys=str(keys_dir)) as server:
            ctl = server.control_url
            hosts.start(wurl, 1, "--curve-keys", str(keys_dir), "--host-key", "a", host="a")
            assert [w["host"] for w in wait_workers(ctl, 1)] == ["a"]
            os.remove(keys_dir / "authorized" / "worker-b.key")  # withdrawn
            wait_for(lambda: "authorized keys re-read" in open(server.log_path).read(), 10,
                     "the server re-read its authorized keys")
            hosts.start(wurl, 1, "--curve-keys", str(keys_dir), "--host-key", "b", host="b")
            hosts.start(wurl, 1, "--curve-keys", str(keys_dir), "--host-key", "a", host="a2")
            wait_workers(ctl, 2)  # a2, started after b, joined: b had as long to
            joined = control(ctl, "stats")["workers"]
    finally:
        hosts.close()
    assert sorted(w["host"] for w in joined) == ["a", "a2"]
