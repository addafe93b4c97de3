"""Numbers a hostile worker peer cannot fool (issue 24, items 3-5): DONE without results, batches
held, results forged under a valid token, clock samples nobody asked for. Each test fails on the
code before the fix (version 3 of the protocol); the heavy versions are scenarios in
bench/chaos.py."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from comlab.lab import clocks, stability
from comlab.system import protocol as P
from comlab.system.ledger import Ledger

from test_faults import ClientThread, keys_of, lab_server, status_names, wait_for


class Peers(threading.Thread):
    """``n`` worker peers on --workers-url (DEALERs, one thread): each says READY, joins every
    client (JOINED), and answers the batches it is given as ``mode`` says: "done" (DONE at once,
    no results), "hold" (keeps them), "forge" (results with response 999 and the batch's true
    token, then DONE)."""

    def __init__(self, url: str, mode: str, n: int = 1, host: str = "evil") -> None:
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        self.mode = mode
        self.socks = []
        for i in range(n):
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.ROUTING_ID, f"mallory-{i}".encode())
            s.connect(url)
            s.send(P.Ready(f"mallory-{i}", host, 1000 + i).pack())
            self.socks.append(s)
        self.given = 0
        self.pushes: dict[str, zmq.Socket] = {}
        self.stop = threading.Event()
        self.start()

    def run(self) -> None:
        poller = zmq.Poller()
        for s in self.socks:
            poller.register(s, zmq.POLLIN)
        while not self.stop.is_set():
            for s, _ in poller.poll(20):
                msg = P.decode(s.recv())
                if type(msg) is P.Connect:
                    s.send(P.Joined(msg.reply_url).pack())
                elif type(msg) is P.Assign:
                    self.given += 1
                    self.answer(s, msg)

    def answer(self, s, a: P.Assign) -> None:
        heads, entries = P.check_assign(a)
        last = int(heads["batch_id"][-1])
        if self.mode == "hold":
            return
        if self.mode == "forge":
            push = self.pushes.get(a.reply_url)
            if push is None:
                push = self.pushes[a.reply_url] = self.ctx.socket(zmq.PUSH)
                push.setsockopt(zmq.LINGER, 0)
                push.connect(a.reply_url)
            n = len(entries)
            t = P.ids_bytes([time.monotonic_ns()] * n)
            push.send(P.Results(a.run, "mallory", "evil", a.heads, a.task_ids, bytes(n),
                                P.ids_bytes([999] * n), t, t, None).pack())
        s.send(P.Done(a.run, last).pack())

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.ctx.destroy(linger=0)


def _run_with_peers(make_data, free_url, mode: str, n_peers: int = 1, n: int = 32,
                    wait: float = 0.2, batch: int = 2):
    client_file, server_file = make_data(n=n, wait=wait)
    keys = keys_of(client_file)
    wurl = free_url()
    with lab_server(server_file, 1, workers_url=wurl) as server:
        peers = Peers(wurl, mode, n_peers)
        try:
            wait_for(lambda: len(server.control("stats")["workers"]) == 1 + n_peers, 10,
                     "the peers joined")
            run = ClientThread(keys, batch, server.url, timeout=30).result(40)
            stats = server.control("stats")
        finally:
            peers.close()
    return run, stats, peers


@pytest.mark.timeout(60)
def test_done_without_results_is_retried_and_the_worker_quarantined(make_data, free_url):
    """Issue 24: a worker peer that says READY, then DONE without running, took 94 % of the
    batches and 480 of 512 tasks were lost. Now the client acknowledges what it took, and a
    DONE whose results never came is retried elsewhere and its worker quarantined."""
    run, stats, peers = _run_with_peers(make_data, free_url, "done")
    cols = run.columns()
    assert peers.given >= 1  # the peer did take batches
    assert status_names(cols) == ["ok"] * 32 and run.summary()["sum"] == 32
    assert set(cols["worker"]) != {"mallory-0"}
    assert stats["quarantined"] == 1 and stats["unacked"] >= 1, stats
    assert any("mallory-0 quarantined: results of batch" in w
               for w in stats["quarantined_workers"]), stats["quarantined_workers"]


@pytest.mark.timeout(60)
def test_forged_results_fail_and_name_the_worker(make_data, free_url):
    """Issue 24: a worker peer that answered its batches with response 999 (echoing their
    tokens) made every task "ok" with a wrong sum. Now the seal over the responses catches it:
    those tasks fail, naming the worker, and the server quarantines it."""
    run, stats, peers = _run_with_peers(make_data, free_url, "forge")
    cols = run.columns()
    names = status_names(cols)
    ok = cols["status"] == P.OK
    assert peers.given >= 1
    assert (cols["response"][ok] == 1).all()  # no forged response is taken for a true one
    assert run.forged >= 1
    assert set(names) <= {"ok", "failed"} and "lost" not in names
    failed = np.flatnonzero(cols["status"] == P.FAILED)
    assert len(failed) >= 1
    assert all("mallory" in e and "seal" in e for e in cols["error"][failed])
    assert stats["forged"] >= 1 and stats["quarantined"] == 1, stats


@pytest.mark.timeout(60)
def test_peers_holding_batches_cannot_fail_tasks(make_data, free_url):
    """Issue 24: 200 peers that take a batch and hold it failed 296 of 512 tasks (blamed on
    "worker ... died"): a batch released from one holder was retried on the next. Now a retry
    goes to a worker whose results the client acknowledged (here the server's own worker)."""
    run, stats, peers = _run_with_peers(make_data, free_url, "hold", n_peers=20, n=32,
                                        wait=0.05)
    assert peers.given >= 5
    assert status_names(run.columns()) == ["ok"] * 32, run.summary()
    assert stats["retried"] >= 5 and stats["failed"] == 0, stats


def test_a_held_batch_fails_as_held_not_died():
    """A batch released from its holder twice fails "held by worker W", not "W died"."""
    failed, sent = [], []
    led = Ledger(lambda i, w: sent.append((i, w)) or True,
                 lambda w, name, why: failed.append(why))
    led.ready(b"a", "a", "h", 1)
    led.ready(b"b", "b", "h", 2)
    led.submit(P.work(1, 0, "", "", [0], [1], [0.0]))
    holder = sent[-1][0]
    led.release(holder)
    led.release(sent[-1][0])
    assert failed and "held by worker" in failed[0] and "died" not in failed[0]


def test_retries_wait_for_a_proven_worker():
    """A retried batch is not handed to a worker whose results were never acknowledged while
    one whose results were is there; fresh batches still go to anyone."""
    sent = []
    led = Ledger(lambda i, w: sent.append((i, w)) or True, lambda *a: None, tracked={1})
    for name in (b"good", b"good2"):
        led.ready(name, name.decode(), "h", 1)
    for b in range(2):
        led.submit(P.work(1, b, "", "", [b], [1], [0.0]))
    for i, w in list(sent):
        assert led.done(i, 1, w.batch_id)
    led.ack(1, P.ids_bytes([0, 0, 1, 0]), [])
    led.judge_unacked()  # settles the acknowledgements
    assert led.proven == {b"good", b"good2"}
    for b in (2, 3):  # one each
        led.submit(P.work(1, b, "", "", [b], [1], [0.0]))
    holder = {w.batch_id: i for i, w in sent}
    for i in range(3):
        led.ready(b"new%d" % i, "new", "h", 10 + i)
    led.release(holder[3])  # holds batch 3 too long: retried, and no longer proven
    assert led.proven == {holder[2]}
    # The retry queues behind the proven worker's batch (adaptive broker: one ahead), not at
    # one of the three idle new ones.
    assert [(i, w.batch_id, w.attempt) for i, w in sent if w.attempt] == [(holder[2], 3, 1)]
    led.submit(P.work(1, 4, "", "", [4], [1], [0.0]))
    assert sent[-1][0].startswith(b"new") and sent[-1][1].batch_id == 4  # fresh: anyone


def test_unacked_done_is_blamed_only_on_evidence():
    """A DONE with no ACK is blamed on its worker only when the client acknowledged a batch
    DONE after it (it is alive and taking results)."""
    t = [0.0]
    sent = []
    led = Ledger(lambda i, w: sent.append((i, w)) or True, lambda *a: None,
                 clock=lambda: t[0], tracked={1})
    led.ready(b"liar", "liar", "h", 1)
    led.ready(b"honest", "honest", "h", 2)
    for b in range(2):
        led.submit(P.work(1, b, "", "", [b], [1], [0.0]))
    by = {w.batch_id: i for i, w in sent}
    assert set(by.values()) == {b"liar", b"honest"}
    led.done(by[0], 1, 0)
    t[0] = 1.0
    led.done(by[1], 1, 1)
    led.ack(1, P.ids_bytes([1, 0]), [])
    t[0] = 2.5
    led.judge_unacked()
    assert list(led.quarantined) == [by[0]] and "never arrived" in led.quarantined[by[0]]
    assert led.counts["unacked"] == 1 and by[1] in led.proven
    assert [(w.batch_id, w.attempt) for _, w in sent[2:]] == [(0, 1)]  # retried
    assert sent[-1][0] == by[1]  # on the proven worker


def test_a_client_that_acknowledges_nothing_blames_nobody():
    """No evidence either way (the client stalled, or never acknowledges): no blame, and the
    batch is retried only after ACK_GIVE_UP_S."""
    from comlab.system import acks
    t = [0.0]
    book = acks.AckBook({2}, clock=lambda: t[0])
    work = P.work(2, 0, "", "", [0], [1], [0.0])
    book.done(b"w", [work], 0.0)
    book.settle()
    t[0] = acks.ACK_WAIT_S + 1
    assert book.overdue() == []
    t[0] = acks.ACK_GIVE_UP_S + 1
    [(entry, blamed)] = book.overdue()
    assert entry.work is work and not blamed and not book.waiting


def test_an_ack_before_its_done_counts():
    """The worker sends results, then DONE: the client's ACK may reach the server first."""
    from comlab.system import acks
    book = acks.AckBook({1}, clock=lambda: 0.0)
    book.ack(1, P.ids_bytes([0, 0]))
    assert book.settle() == []
    book.done(b"w", [P.work(1, 0, "", "", [0], [1], [0.0])], 0.0)
    assert book.settle() == [b"w"]
    assert not book.waiting and not book.early[1]
    book.ack(3, P.ids_bytes([0, 0]))
    assert book.settle() == [] and 3 not in book.early  # a run not tracked


def test_unsolicited_pongs_move_no_clock(make_data, free_url):
    """Issue 24: a peer claiming a host's name sent PONGs nobody asked for, and that host's
    clock offset moved from -11 us to +2.000 s. Now a PONG counts only as the answer to the
    PING the server sent (its nonce) to that routing id."""
    _, server_file = make_data(n=4, wait=0.0)
    wurl = free_url()
    ctx = zmq.Context()
    try:
        with lab_server(server_file, 1, workers_url=wurl) as server:
            socks = {}
            for name in (b"mallory", b"honest"):  # the later of a host's idle workers is asked
                s = socks[name] = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.ROUTING_ID, name)
                s.connect(wurl)
                s.send(P.Ready(name.decode(), "hostA", 1).pack())
                wait_for(lambda: name.decode() in {w["name"] for w in
                                                    server.control("stats")["workers"]},
                         10, "the peer joined")
            assert server.control("clock-workers", 4) == ["hostA"]
            lie = 2 * 10 ** 9
            for k in range(50):  # stamps around now: one is sure to look like a short trip
                t = time.monotonic_ns() + k * 20_000
                socks[b"mallory"].send(P.Pong(t, t + lie).pack())
            answered = 0
            while answered < 4 and socks[b"honest"].poll(5000):
                msg = P.decode(socks[b"honest"].recv())
                if type(msg) is P.Ping and msg.nonce is not None:
                    socks[b"honest"].send(P.Pong(msg.nonce, time.monotonic_ns()).pack())
                    answered += 1
            assert answered == 4
            wait_for(lambda: server.control("worker-clocks").get("hostA", {})
                     .get("samples", 0) >= 4, 5, "the samples counted")
            found = server.control("worker-clocks")["hostA"]
            stats = server.control("stats")
    finally:
        ctx.destroy(linger=0)
    assert abs(found["offset_ns"]) < 50_000_000, found  # one clock: ~0, not +2 s
    assert stats["refused_pongs"] >= 50


def test_clock_offset_that_jumps_is_flagged_not_applied():
    """An estimate that moved beyond its uncertainty since the last one is flagged in
    meta.json and not applied; the next that agrees with it is applied again."""

    class FakeServer:
        info = {"host": "serverhost"}

        def __init__(self, offset):
            self.offset = offset

        def control(self, op, *args):
            if op == "clock":
                return time.monotonic_ns() + self.offset
            return []

    previous = {}
    first = clocks.estimate(FakeServer(0), client_host="me", previous=previous)
    assert first["hosts"]["serverhost"]["applied"]
    jumped = clocks.estimate(FakeServer(2 * 10 ** 9), client_host="me", previous=previous)
    entry = jumped["hosts"]["serverhost"]
    assert not entry["applied"] and "serverhost" not in jumped["offsets_ns"]
    assert entry["jump_s"] == pytest.approx(2.0, abs=0.01) and "not applied" in entry["error"]
    again = clocks.estimate(FakeServer(2 * 10 ** 9), client_host="me", previous=previous)
    assert again["hosts"]["serverhost"]["applied"]


def test_quarantined_workers_reach_the_runs_meta():
    """The workers a run quarantined are named in its meta.json entry (RunConditions)."""

    class FakeServer:
        def __init__(self):
            self.stats = {"quarantined": 0, "quarantined_workers": []}

        def control(self, op):
            return dict(self.stats)

    server = FakeServer()
    before = stability.RunConditions.start(server)
    server.stats = {"quarantined": 1,
                    "quarantined_workers": ["worker m quarantined: results of batch 3 never "
                                            "arrived"]}
    entry = before.end(server)
    assert entry["server"]["quarantined"] == 1
    assert entry["quarantined_workers"] == server.stats["quarantined_workers"]


def test_a_retry_that_never_arrives_either_fails_naming_the_quarantined_worker():
    """Every task ends in one record: a batch whose second attempt's results never arrive
    fails, and its error names the quarantined worker."""
    t = [0.0]
    sent, failed = [], []
    led = Ledger(lambda i, w: sent.append((i, w)) or True,
                 lambda w, name, why: failed.append((w.batch_id, why)), clock=lambda: t[0],
                 tracked={1})
    led.ready(b"liar", "liar", "h", 1)
    led.ready(b"honest", "honest", "h", 2)
    led.submit(P.work(1, 0, "", "", [0], [1], [0.0])._replace(attempt=1))  # a retry already
    led.submit(P.work(1, 1, "", "", [1], [1], [0.0]))
    by = {w.batch_id: i for i, w in sent}
    led.done(by[0], 1, 0)
    t[0] = 1.0
    led.done(by[1], 1, 1)
    led.ack(1, P.ids_bytes([1, 0]), [])
    t[0] = 2.5
    led.judge_unacked()
    assert failed == [(0, f"worker {by[0].decode()} quarantined: results of batch 0 never "
                          "arrived")]


def test_the_last_worker_is_not_quarantined():
    """A client's word (its ACKs) is what blames a worker: it cannot leave a server with no
    worker at all for other clients."""
    led = Ledger(lambda i, w: True, lambda *a: None, tracked={1})
    led.ready(b"only", "only", "h", 1)
    led.quarantine(b"only", "worker only quarantined: ...")
    assert not led.quarantined and b"only" in led.idle
    led.ready(b"other", "other", "h", 2)
    led.quarantine(b"only", "worker only quarantined: ...")
    assert list(led.quarantined) == [b"only"] and b"only" not in led.idle
