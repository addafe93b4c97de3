"""The server's intake (look-up, runs), without processes or sockets: the look-up and the intake
are built on their own, with stand-ins for the client sockets, and the two ways out of on_batch
(answers to clients for misses, the ledger for work) are captured."""

from __future__ import annotations

import numpy as np
import pytest

from comlab.system import protocol as P
from comlab.system import intake as intake_mod, strategies
from comlab.system.control import Control
from comlab.system.intake import Intake, Lookup
from comlab.system.ledger import Ledger
from comlab.system.server import COUNTERS, Server

TABLE = {"192.168.1.1:foo": (7, 0.0), "192.168.1.1:bar": (8, 0.5),
         "192.168.1.200:foo": (9, 0.25)}


class FakeClients:
    def __init__(self, sent):
        self.sent = sent
        self.connected, self.fed = set(), set()
        self.mark_fed = self.fed.add

    def get(self, url):  # the real one checks a reply URL by connecting: no sockets here
        return None

    def send(self, url, frame):
        self.sent.append((url, P.decode(frame)))
        return True

    def release(self, url):
        self.connected.discard(url)


class FakeLedger:
    full = False

    def __init__(self, work):
        self.submit = work.append


def make_lookup(networks=()):
    return Lookup(TABLE, networks)


def make_intake(networks=(), reply_url="tcp://default:1", ledger=None, send=None):
    sent, work = [], []
    intake = Intake(Lookup(TABLE, networks), strategies.DEFAULT, dict.fromkeys(COUNTERS, 0),
                    clients=FakeClients(sent), ledger=ledger or FakeLedger(work),
                    send=send or (lambda ident, frame: True), info=lambda: {"server": "info"},
                    reply_url=reply_url)
    intake.sent, intake.work = sent, work
    return intake


def batch(batch_id, url, t_sent, ids, keys, run=1):
    """A BATCH (``t_sent``: the client's stamp, not on the wire since version 3)."""
    return P.Batch(run, url, batch_id, P.ids_bytes(ids), keys)


def ids_of(column: bytes) -> list:
    return np.frombuffer(column, P.I64).tolist()


def entries_of(w) -> tuple[list, list]:
    e = np.frombuffer(w.entries, P.ENTRY)
    return e["response"].tolist(), e["wait"].tolist()


def results_of(msg) -> tuple:
    """(batch ids, task ids, statuses, responses) of a RESULTS."""
    heads, ids, statuses = P.check_results(msg, 1 << 40)
    return (heads["batch_id"].tolist(), ids.tolist(), statuses.tolist(),
            np.frombuffer(msg.responses, P.I64).tolist())


def test_status_without_networks_is_unknown():
    s = make_lookup()
    assert s.status_of("10.0.0.1:foo") == P.UNKNOWN
    assert s.status_of("192.168.1.1:nope") == P.UNKNOWN
    assert s.status_of("not-an-ip:foo") == P.UNKNOWN


def test_status_with_networks():
    s = make_lookup(networks=["192.168.1.0/25", "10.0.0.0/8"])
    assert s.status_of("192.168.1.5:nope") == P.UNKNOWN       # in reach, no such entry
    assert s.status_of("10.1.2.3:foo") == P.UNKNOWN
    assert s.status_of("192.168.1.200:foo") == P.UNREACHABLE  # outside every network
    assert s.status_of("172.16.0.1:foo") == P.UNREACHABLE
    assert s.status_of("garbage:foo") == P.UNREACHABLE        # not an address at all


def test_status_is_per_ip_and_cached():
    s = make_lookup(networks=["192.168.1.0/25"])
    assert s.status_of("192.168.1.200:a") == P.UNREACHABLE
    assert s.status_of("192.168.1.200:b") == P.UNREACHABLE
    assert s.ip_status["192.168.1.200"] == P.UNREACHABLE
    assert sum(ip.startswith("192.168.1.200") for ip in s.ip_status) == 1


def test_networks_are_not_strict():
    s = make_lookup(networks=["192.168.1.7/25"])  # host bits set: still 192.168.1.0/25
    assert s.status_of("192.168.1.100:x") == P.UNKNOWN
    assert s.status_of("192.168.1.128:x") == P.UNREACHABLE


def test_batch_of_hits_is_one_work_item():
    s = make_intake()
    s.on_batch(111, batch(4, "tcp://c:9", 100, [10, 11], ["192.168.1.1:foo", "192.168.1.1:bar"]))
    assert s.sent == []
    assert len(s.work) == 1
    work = s.work[0]
    assert work[:7] == (1, 4, "tcp://c:9", strategies.DEFAULT, 111, work.t_enqueued, 0)
    assert work.t_enqueued >= 111  # stamped after t_in
    assert (ids_of(work.task_ids), entries_of(work)) == ([10, 11], ([7, 8], [0.0, 0.5]))
    assert work.n == 2 and work.cost_s == 0.5  # sequential: the sum of the waits
    assert s.stats["batches"] == 1 and s.stats["tasks"] == 2


def test_batch_splits_misses_from_work():
    s = make_intake(networks=["192.168.1.0/25"])
    keys = ["192.168.1.1:foo", "192.168.1.1:nope", "192.168.1.200:foo", "192.168.1.201:foo",
            "192.168.1.1:bar"]
    s.on_batch(5, batch(2, "", 3, [20, 21, 22, 23, 24], keys))
    # Misses answered at once, to the default reply URL (the batch named none). .200:foo is in
    # the map but out of reach: unreachable too (README: "tasks for addresses outside every
    # network are answered unreachable").
    assert len(s.sent) == 1
    url, msg = s.sent[0]
    assert url == "tcp://default:1"
    assert type(msg) is P.Results and msg.worker == "server" and msg.errors is None
    assert results_of(msg) == ([2], [21, 22, 23], [P.UNKNOWN, P.UNREACHABLE, P.UNREACHABLE],
                               [0, 0, 0])
    assert [ids_of(w.task_ids) for w in s.work] == [[20, 24]]
    assert entries_of(s.work[0])[0] == [7, 8]
    assert s.stats["unknown"] == 1 and s.stats["unreachable"] == 2
    assert s.stats["tasks"] == 5


def test_known_key_out_of_reach_is_unreachable():
    s = make_intake(networks=["192.168.1.0/25"])
    s.on_batch(5, batch(0, "tcp://c:9", 3, [0], ["192.168.1.200:foo"]))
    assert s.work == []
    assert [results_of(m)[1:3] for _, m in s.sent] == [([0], [P.UNREACHABLE])]
    assert TABLE["192.168.1.200:foo"] == (9, 0.25)  # the caller's table is left alone


def test_batch_of_only_misses_dispatches_nothing():
    s = make_intake()
    s.on_batch(5, batch(0, "tcp://c:9", 3, [0, 1], ["1.1.1.1:a", "1.1.1.1:b"]))
    assert s.work == []
    assert [(u, *results_of(m)[1:3]) for u, m in s.sent] == \
        [("tcp://c:9", [0, 1], [P.UNKNOWN] * 2)]


def test_client_message_with_bad_key_is_dropped():
    s = make_intake()
    s.on_client_frame(batch(0, "tcp://c:1", 0, [0], [123]).pack())
    s.on_client_frame(batch(0, "tcp://c:1", 0, [0], [["list"]]).pack())
    s.on_client_frame(batch(0, "tcp://c:1", 0, [0], [{"a": 1}]).pack())
    s.on_client_frame(b"\xc1 garbage")
    s.on_client_frame(b"\x91" * 1000 + b"\x01")  # nested 1,000 deep: repr would raise
    assert s.sent == [] and s.work == []
    assert s.stats["dropped"] == 5


def test_batches_of_an_ended_run_are_stale():
    s = make_intake()
    s.on_batch(1, batch(0, "tcp://c:1", 0, [0], ["192.168.1.1:foo"], run=1))
    s.runs["tcp://c:1"] = 2  # a new client said HELLO on the same URL
    s.on_batch(1, batch(1, "tcp://c:1", 0, [1], ["192.168.1.1:foo"], run=1))
    assert len(s.work) == 1 and s.stats["stale"] == 1


def test_strategy_is_checked_at_construction():
    with pytest.raises(ValueError):
        Server(TABLE, "tcp://127.0.0.1:0", "", 1, strategy="nope")


def test_no_local_workers_and_no_worker_endpoint_is_refused():
    with pytest.raises(ValueError, match="workers-url"):
        Server(TABLE, "tcp://127.0.0.1:0", "", 0)


def test_intake_and_ledger_stand_alone_through_a_hello(monkeypatch):
    """No server, no socket: an intake on a real ledger. A HELLO goes to the idle workers; one
    that never joins is marked silent in the ledger (its owner) and is not waited for by the
    next HELLO until it shows life; the run is tracked for acknowledgements until its BYE."""
    monkeypatch.setattr(intake_mod, "HELLO_WAIT_S", 0.0)  # deadlines are due at once
    ledger = Ledger(lambda ident, work: True, lambda *a: None)
    for ident in (b"w1", b"w2"):
        ledger.ready(ident, ident.decode(), "h", 1)
    to_workers = []
    s = make_intake(ledger=ledger, send=lambda i, f: to_workers.append((i, P.decode(f))) or True)
    s.clients.connected.add("tcp://c:1")
    s.on_hello(P.Hello(7, "tcp://c:1", 0, b"k" * 32))
    assert sorted(i for i, m in to_workers if type(m) is P.Connect) == [b"w1", b"w2"]
    s.stop_waiting_for(b"w1")  # w1 joined; w2 never does: the deadline passes
    assert ledger.silent == {b"w2"} and ledger.idle_answering() == {b"w1"}
    assert [(u, type(m), m.info) for u, m in s.sent] == [("tcp://c:1", P.Welcome,
                                                          {"server": "info"})]
    assert 7 in ledger.acks.tracked
    ledger.heard_from(b"w2")  # any message from it (WorkerSide.on_frame)
    assert ledger.idle_answering() == {b"w1", b"w2"}
    s.on_bye(P.Bye(7, "tcp://c:1"))
    assert 7 not in ledger.acks.tracked and s.stats["runs_ended"] == 1
    assert [i for i, m in to_workers if type(m) is P.Forget] == [b"w1", b"w2"]


class Clocks:
    clocks = {"h": {"offset_ns": 5}}

    def __init__(self):
        self.asked = []

    def sample_clocks(self, chosen, samples):
        self.asked.append((chosen, samples))
        return sorted(chosen)


def test_control_formats_a_snapshot_without_a_server():
    workers = [{"ident": b"a", "name": "a", "host": "h1", "pid": 1, "local": False, "idle": False},
               {"ident": b"b", "name": "b", "host": "h1", "pid": 2, "local": False, "idle": True},
               {"ident": b"c", "name": "c", "host": "h1", "pid": 3, "local": False, "idle": False},
               {"ident": b"l", "name": "l", "host": "me", "pid": 4, "local": True, "idle": True}]
    snap = {"counters": {"batches": 3}, "dispatch": "broker", "pending": 1, "queued": 0,
            "busy": 2, "idle": 1, "clients": 1, "client_drops": 0, "refused_pongs": 0,
            "workers": workers, "quarantined_workers": ["why"]}
    clocks, intake = Clocks(), make_intake()
    answer = Control(lambda: {"ping": 1}, lambda: snap, intake, clocks).answer

    def ask(op, *args):
        reply = P.decode(answer(P.Control(op, list(args)).pack()))
        return reply.op, reply.payload

    assert ask("stats") == ("stats", {
        "batches": 3, "dispatch": "broker", "pending": 1, "queued": 0, "busy": 2, "idle": 1,
        "clients": 1, "client_drops": 0, "refused_pongs": 0,
        "workers": [{"name": n, "host": h, "pid": p} for n, h, p in
                    (("a", "h1", 1), ("b", "h1", 2), ("c", "h1", 3), ("l", "me", 4))],
        "quarantined_workers": ["why"]})
    assert ask("clock-workers", 3) == ("clock-workers", ["h1"])
    assert clocks.asked == [({"h1": b"b"}, 3)]  # the remote host's idle worker
    assert ask("worker-clocks") == ("worker-clocks", Clocks.clocks)
    assert ask("strategy", "thread-per-task") == ("strategy", "thread-per-task")
    assert intake.strategy == "thread-per-task"
    assert ask("ping") == ("ping", {"ping": 1})
    assert P.decode(answer(b"a", b"b")).op == "error"
