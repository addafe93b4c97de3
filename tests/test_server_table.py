"""The server's intake (look-up, runs), without processes or sockets: a Server is built but never
run, and the two ways out of on_batch (answers to clients for misses, the ledger for work) are
captured."""

from __future__ import annotations

import numpy as np
import pytest

from comlab.system import protocol as P
from comlab.system import strategies
from comlab.system.server import Server

TABLE = {"192.168.1.1:foo": (7, 0.0), "192.168.1.1:bar": (8, 0.5),
         "192.168.1.200:foo": (9, 0.25)}


class FakeClients:
    def __init__(self, sent):
        self.sent = sent

    def get(self, url):  # the real one checks a reply URL by connecting: no sockets here
        return None

    def send(self, url, frame):
        self.sent.append((url, P.decode(frame)))
        return True


class FakeLedger:
    full = False

    def __init__(self, work):
        self.submit = work.append


def make_intake(networks=(), reply_url="tcp://default:1", **kw):
    server = Server(TABLE, "tcp://127.0.0.1:0", reply_url, 0, networks=networks,
                    workers_url="tcp://127.0.0.1:0", **kw)
    intake = server.intake
    intake.sent, intake.work = [], []
    intake.clients = FakeClients(intake.sent)
    intake.ledger = FakeLedger(intake.work)
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
    s = make_intake()
    assert s.status_of("10.0.0.1:foo") == P.UNKNOWN
    assert s.status_of("192.168.1.1:nope") == P.UNKNOWN
    assert s.status_of("not-an-ip:foo") == P.UNKNOWN


def test_status_with_networks():
    s = make_intake(networks=["192.168.1.0/25", "10.0.0.0/8"])
    assert s.status_of("192.168.1.5:nope") == P.UNKNOWN       # in reach, no such entry
    assert s.status_of("10.1.2.3:foo") == P.UNKNOWN
    assert s.status_of("192.168.1.200:foo") == P.UNREACHABLE  # outside every network
    assert s.status_of("172.16.0.1:foo") == P.UNREACHABLE
    assert s.status_of("garbage:foo") == P.UNREACHABLE        # not an address at all


def test_status_is_per_ip_and_cached():
    s = make_intake(networks=["192.168.1.0/25"])
    assert s.status_of("192.168.1.200:a") == P.UNREACHABLE
    assert s.status_of("192.168.1.200:b") == P.UNREACHABLE
    assert s.ip_status["192.168.1.200"] == P.UNREACHABLE
    assert sum(ip.startswith("192.168.1.200") for ip in s.ip_status) == 1


def test_networks_are_not_strict():
    s = make_intake(networks=["192.168.1.7/25"])  # host bits set: still 192.168.1.0/25
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
