"""Numbers that stay true when peers are unlucky or hostile (issue 13, the system side):
run identity, departed clients, untrusted worker peers, stopped workers, dead reply URLs,
thread and socket bounds. Each test names the finding it keeps fixed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import msgpack
import pytest
import zmq

from comlab.system import protocol as P
from conftest import DISPATCH
from comlab.system.client import Client
from comlab.system.clients import ClientSockets, TooManyClients
from comlab.system.gang import Gang

from test_faults import ClientThread, keys_of, lab_server, status_names, wait_for


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dispatch", DISPATCH)
def test_timed_out_run_does_not_poison_the_next_on_the_same_url(make_data, free_url, dispatch):
    """Finding: a run that times out left its queued batches running, and the next client on
    the same result URL accepted their results (no run identity)."""
    client_file, server_file = make_data(n=32, wait=0.2)
    keys = keys_of(client_file)
    url = free_url()
    with lab_server(server_file, 1, dispatch=dispatch) as server:
        first = Client(keys, 1, url, server.url, timeout=0.5).run()  # 32 x 0.2 s on 1 worker
        assert 0 < first.summary()["lost"] < 32
        second = Client(keys, 32, url, server.url, timeout=20).run()  # same URL, at once
        stats = server.control("stats")
    assert status_names(second.columns()) == ["ok"] * 32
    assert second.accepted == 32 and second.duplicates == 0
    # Every result it took was computed after it started: none of the first run's.
    assert second.columns()["t_started"].min() >= second.t_start
    assert second.summary()["elapsed_s"] < 2.0  # not behind 6 s of the first run's queue
    assert stats["runs_ended"] >= 1 and stats["dropped_tasks"] > 0, stats


_SLOW_CLIENT = """
import sys
from comlab.system.client import Client
keys = sys.argv[3].split(",")
print("ready", flush=True)
Client(keys, 1, sys.argv[1], sys.argv[2], timeout=60).run()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dispatch", DISPATCH)
def test_killed_client_queued_work_is_dropped(make_data, free_url, dispatch):
    """Finding: a SIGKILLed client's queued work kept running; the next runs took 5 s instead
    of 1 s for about 15 s."""
    client_file, server_file = make_data(n=64, wait=0.2)
    keys = keys_of(client_file)
    with lab_server(server_file, 1, dispatch=dispatch) as server:
        doomed = subprocess.Popen([sys.executable, "-c", _SLOW_CLIENT, free_url(), server.url,
                                   ",".join(keys)], stdout=subprocess.PIPE, text=True)
        try:
            assert doomed.stdout.readline().strip() == "ready"
            wait_for(lambda: sum(server.control("stats")[k] for k in ("pending", "queued")) > 10,
                     10, "a queue of batches")
        finally:
            doomed.kill()
            doomed.wait(5)
            doomed.stdout.close()
        wait_for(lambda: server.control("stats")["runs_ended"] >= 1, 5,
                 "the server noticed the client left")
        t0 = time.monotonic()
        run = Client(keys[:4], 4, free_url(), server.url, timeout=20).run()
        took = time.monotonic() - t0
        stats = server.control("stats")
    assert status_names(run.columns()) == ["ok"] * 4
    assert took < 2.0, f"the next run waited behind the departed client's work ({took:.1f} s)"
    assert stats["dropped_tasks"] > 0, stats


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dispatch", DISPATCH)
def test_stopped_local_worker_is_noticed_and_its_batch_retried(make_data, dispatch):
    """Finding: a SIGSTOPped local worker was never noticed; its batch waited for the
    client's timeout."""
    client_file, server_file = make_data(n=4, wait=0.3)
    keys = keys_of(client_file)
    with lab_server(server_file, 1, dispatch=dispatch) as server:
        client = ClientThread(keys, 2, server.url, timeout=30)
        wait_for(lambda: server.control("stats")["busy"] >= 1, 10, "the worker inside a batch")
        victim = server.control("stats")["workers"][0]["pid"]
        os.kill(victim, signal.SIGSTOP)
        try:
            run = client.result(30)
        finally:
            try:
                os.kill(victim, signal.SIGCONT)
            except ProcessLookupError:
                pass
        stats = server.control("stats")
    assert status_names(run.columns()) == ["ok"] * 4
    assert stats["workers_lost"] >= 1 and stats["retried"] >= 1, stats
    assert run.summary()["elapsed_s"] < 10  # heartbeat (3 s) + probe, not the 30 s timeout


class HostileWorker:
    """A DEALER on the server's worker endpoint that says what it likes."""

    def __init__(self, url: str, name: bytes = b"mallory") -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, name)
        self.sock.connect(url)

    def send(self, msg) -> None:
        self.sock.send(msg.pack())

    def recv(self, kinds, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while self.sock.poll(max(0.0, deadline - time.monotonic()) * 1000):
            msg = P.decode(self.sock.recv())
            if type(msg) in kinds:
                return msg
            if type(msg) is P.Connect:  # joins clients like a worker (else it gets no work)
                self.send(P.Joined(msg.reply_url))
        pytest.fail(f"no {kinds} within {timeout} s")

    def close(self) -> None:
        self.ctx.destroy(linger=0)


@pytest.mark.timeout(60)
def test_hostile_worker_peer_cannot_lose_or_forge_a_run(make_data, free_url):
    """Findings: DONE for a batch a peer does not hold was accepted (~90 % of tasks lost);
    READY while holding forced retries; forged results of a run were accepted."""
    client_file, server_file = make_data(n=16, wait=0.05)
    keys = keys_of(client_file)
    workers_url = free_url()
    with lab_server(server_file, 1, workers_url=workers_url) as server:
        peer = HostileWorker(workers_url)
        try:
            peer.send(P.Ready("mallory", "evil", 1))
            wait_for(lambda: len(server.control("stats")["workers"]) == 2, 10, "the peer joined")
            client = ClientThread(keys, 2, server.url, timeout=30)
            peer_work = peer.recv((P.Assign,))
            peer_batch = int(P.read_heads(peer_work.heads, "WORK")["batch_id"][0])
            # Claims: done with batches it never held, ready again while holding one.
            for batch_id in range(8):
                peer.send(P.Done(peer_work.run, batch_id + 100))
            peer.send(P.Done(peer_work.run + 1, peer_batch))
            peer.send(P.Ready("mallory", "evil", 1))
            # Forged results straight to the client: it cannot know the run, and a result
            # for the batch it holds is at most its own batch's answer.
            forger = peer.ctx.socket(zmq.PUSH)
            forger.setsockopt(zmq.LINGER, 0)
            forger.connect(client.client.reply_url)
            n = len(peer_work.task_ids) // 8
            forger.send(P.results(peer_work.run + 1, "x", "x", [(0, 0, 1, 1, 0, 16)],
                                  list(range(16)), [P.OK] * 16, [999] * 16, [1] * 16,
                                  [1] * 16).pack())
            wait_for(lambda: client.client.result.stale >= 1, 10, "the forgery refused")
            # The peer goes silent holding its batch: the batch is retried once it is overdue
            # or the peer is gone; here it disconnects.
            time.sleep(0.2)
            peer.close()
            run = client.result(30)
            stats = server.control("stats")
        finally:
            peer.close()
    assert stats["refused_done"] >= 9 and stats["refused_ready"] >= 1, stats
    cols = run.columns()
    assert status_names(cols) == ["ok"] * 16
    assert run.summary()["sum"] == 16 and run.stale >= 1  # 1 per task: nothing forged counted
    assert n > 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dispatch", DISPATCH)
def test_dead_reply_url_does_not_block_workers(make_data, free_url, dispatch):
    """Finding: a batch whose reply URL has no listener made each worker queue results, then
    block 10 s per batch; a legitimate client arriving meanwhile lost every task."""
    client_file, server_file = make_data(n=8, wait=0.0)
    keys = keys_of(client_file)
    with lab_server(server_file, 1, dispatch=dispatch) as server:
        ctx = zmq.Context()
        try:
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.connect(server.url)
            nowhere = free_url()  # nobody listens there
            for b in range(3000):  # beyond a PUSH socket's high-water mark (1000)
                push.send(P.Batch(42, nowhere, b, P.ids_bytes([0]), keys[:1]).pack())
            wait_for(lambda: server.control("stats")["batches"] >= 3000, 20, "batches read")
        finally:
            ctx.destroy(linger=0)
        t0 = time.monotonic()
        run = Client(keys, 4, free_url(), server.url, timeout=20).run()
        assert time.monotonic() - t0 < 5
    assert status_names(run.columns()) == ["ok"] * 8


def test_gang_survives_a_thread_that_cannot_start(monkeypatch):
    """Finding: when threads ran out, the gang raised halfway, the threads it started were never
    parked, and the worker failed every later batch."""
    gang = Gang("t")
    real_start = threading.Thread.start
    started = []

    def start(self):
        if self.name.startswith("t-") and len(started) >= 3:
            raise RuntimeError("can't start new thread")
        started.append(self)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    results = gang.map(lambda x: x * 2, [(i,) for i in range(5)])
    assert results[:3] == [0, 2, 4]
    assert all(isinstance(r, RuntimeError) for r in results[3:])
    monkeypatch.setattr(threading.Thread, "start", real_start)
    assert gang.map(lambda x: x + 1, [(i,) for i in range(3)]) == [1, 2, 3]  # kept, reused
    assert len(gang._all) == 3
    gang.close()


def test_gang_runs_a_huge_call_in_bounded_waves(monkeypatch):
    from comlab.system import gang as gang_mod
    monkeypatch.setattr(gang_mod, "MAX_THREADS", 8)
    g = Gang("w")
    assert g.map(lambda x: x, [(i,) for i in range(50)]) == list(range(50))
    assert len(g._all) <= 8
    g.close()


class _FakeRole:
    def __init__(self):
        self.ctx = zmq.Context()
        self.closed = []

    def socket(self, kind, curve_server=None, **options):
        return self.ctx.socket(kind)

    def own(self, sock):
        return sock

    def close_socket(self, sock, linger_ms=None):
        self.closed.append(sock)
        sock.close(0)


def test_client_sockets_are_bounded_and_never_evict_an_active_client():
    """Finding: 32 cached sockets, the oldest closed with linger 0: results queued for a slow
    client were discarded; departed clients were reconnected to forever."""
    clock = type("C", (), {"t": 0.0, "__call__": lambda self: self.t})()
    role = _FakeRole()
    socks = ClientSockets(role, max_clients=2, min_idle_s=5, idle_s=60, clock=clock)
    try:
        socks.get("tcp://127.0.0.1:1")
        socks.get("tcp://127.0.0.1:2")
        with pytest.raises(TooManyClients):
            socks.get("tcp://127.0.0.1:3")  # both in use just now: refused, none evicted
        assert len(socks) == 2 and not role.closed
        clock.t = 10.0
        socks.get("tcp://127.0.0.1:2")
        socks.get("tcp://127.0.0.1:3")  # :1 idle for 10 s: it makes room
        assert set(socks.socks) == {"tcp://127.0.0.1:2", "tcp://127.0.0.1:3"}
        clock.t = 100.0
        assert sorted(socks.expire()) == ["tcp://127.0.0.1:2", "tcp://127.0.0.1:3"]
        assert len(socks) == 0
        assert not socks.send("bad url", b"x") and socks.dropped == 1
    finally:
        socks.close_all()
        role.ctx.term()


def test_deeply_nested_value_to_a_client_is_garbage(make_data):
    """Finding: a ~1 KB msgpack value nested ~1,000 deep killed a client with a traceback."""
    client_file, server_file = make_data(n=2, wait=0.3)
    keys = keys_of(client_file)
    with lab_server(server_file, 1) as server:
        client = ClientThread(keys, 1, server.url, timeout=20)
        wait_for(client.started, 10, "the handshake")
        ctx = zmq.Context()
        try:
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.connect(client.client.reply_url)
            push.send(b"\x91" * 1000 + b"\x01")
            push.send(msgpack.packb([P.VERSION, "R", msgpack.unpackb(b"\x91" * 900 + b"\x01")]))
            wait_for(lambda: client.client.result.garbage >= 2, 5, "garbage counted")
        finally:
            ctx.destroy(linger=0)
        run = client.result(20)
    assert status_names(run.columns()) == ["ok"] * 2
