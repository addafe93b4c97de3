"""The server's look-up, without processes or sockets: a Server is built but never run, and the
two ways out of on_batch (to_client for misses, dispatch for work) are captured."""

from __future__ import annotations

import pytest

from comlab.system import protocol as P
from comlab.system import strategies
from comlab.system.server import Server

TABLE = {"192.168.1.1:foo": (7, 0.0), "192.168.1.1:bar": (8, 0.5),
         "192.168.1.200:foo": (9, 0.25)}


def make_server(networks=(), reply_url="tcp://default:1", **kw):
    server = Server(TABLE, "tcp://127.0.0.1:0", reply_url, 0, networks=networks, **kw)
    server.sent, server.work = [], []
    server.to_client = lambda url, frame: server.sent.append((url, P.unpack(frame)))
    server.client_socket = lambda url: None  # checks a reply URL by connecting: no sockets here
    server.dispatch = server.work.append
    return server


def test_status_without_networks_is_unknown():
    s = make_server()
    assert s.status_of("10.0.0.1:foo") == P.UNKNOWN
    assert s.status_of("192.168.1.1:nope") == P.UNKNOWN
    assert s.status_of("not-an-ip:foo") == P.UNKNOWN


def test_status_with_networks():
    s = make_server(networks=["192.168.1.0/25", "10.0.0.0/8"])
    assert s.status_of("192.168.1.5:nope") == P.UNKNOWN       # in reach, no such entry
    assert s.status_of("10.1.2.3:foo") == P.UNKNOWN
    assert s.status_of("192.168.1.200:foo") == P.UNREACHABLE  # outside every network
    assert s.status_of("172.16.0.1:foo") == P.UNREACHABLE
    assert s.status_of("garbage:foo") == P.UNREACHABLE        # not an address at all


def test_status_is_per_ip_and_cached():
    s = make_server(networks=["192.168.1.0/25"])
    assert s.status_of("192.168.1.200:a") == P.UNREACHABLE
    assert s.status_of("192.168.1.200:b") == P.UNREACHABLE
    assert s.ip_status["192.168.1.200"] == P.UNREACHABLE
    assert sum(ip.startswith("192.168.1.200") for ip in s.ip_status) == 1


def test_networks_are_not_strict():
    s = make_server(networks=["192.168.1.7/25"])  # host bits set: still 192.168.1.0/25
    assert s.status_of("192.168.1.100:x") == P.UNKNOWN
    assert s.status_of("192.168.1.128:x") == P.UNREACHABLE


def test_batch_of_hits_is_one_work_item():
    s = make_server()
    s.on_batch(111, 4, "tcp://c:9", 100, [10, 11], ["192.168.1.1:foo", "192.168.1.1:bar"])
    assert s.sent == []
    assert len(s.work) == 1
    work = s.work[0]
    assert work[:9] == [P.VERSION, P.WORK, 4, "tcp://c:9", strategies.DEFAULT, 100, 111,
                        work[7], 0]
    assert work[7] >= 111  # t_enqueued: stamped after t_in
    assert work[9:] == [[10, 11], [7, 8], [0.0, 0.5]]
    assert s.stats["batches"] == 1 and s.stats["tasks"] == 2


def test_batch_splits_misses_from_work():
    s = make_server(networks=["192.168.1.0/25"])
    keys = ["192.168.1.1:foo", "192.168.1.1:nope", "192.168.1.200:foo", "192.168.1.201:foo",
            "192.168.1.1:bar"]
    s.on_batch(5, 2, "", 3, [20, 21, 22, 23, 24], keys)
    # Misses answered at once, to the default reply URL (the batch named none). .200:foo is in
    # the map but out of reach: unreachable too (README: "tasks for addresses outside every
    # network are answered unreachable").
    assert len(s.sent) == 1
    url, msg = s.sent[0]
    assert url == "tcp://default:1"
    assert msg[1] == P.RESULTS and msg[2] == 2 and msg[3] == "server"
    assert msg[9] == [21, 22, 23] and msg[10] == [P.UNKNOWN, P.UNREACHABLE, P.UNREACHABLE]
    assert msg[11] == [None] * 3 and msg[14] is None
    assert [w[9] for w in s.work] == [[20, 24]]
    assert s.work[0][10] == [7, 8]
    assert s.stats["unknown"] == 1 and s.stats["unreachable"] == 2
    assert s.stats["tasks"] == 5


def test_known_key_out_of_reach_is_unreachable():
    s = make_server(networks=["192.168.1.0/25"])
    s.on_batch(5, 0, "tcp://c:9", 3, [0], ["192.168.1.200:foo"])
    assert s.work == []
    assert [(m[9], m[10]) for _, m in s.sent] == [([0], [P.UNREACHABLE])]
    assert TABLE["192.168.1.200:foo"] == (9, 0.25)  # the caller's table is left alone


def test_batch_of_only_misses_dispatches_nothing():
    s = make_server()
    s.on_batch(5, 0, "tcp://c:9", 3, [0, 1], ["1.1.1.1:a", "1.1.1.1:b"])
    assert s.work == []
    assert [(u, m[9], m[10]) for u, m in s.sent] == [("tcp://c:9", [0, 1], [P.UNKNOWN] * 2)]


def test_client_message_with_bad_key_is_dropped():
    s = make_server()
    s.on_client_message(P.pack([P.VERSION, P.BATCH, 0, "tcp://c:1", 0, [0], [123]]))
    s.on_client_message(P.pack([P.VERSION, P.BATCH, 0, "tcp://c:1", 0, [0], [["list"]]]))
    s.on_client_message(b"\xc1 garbage")
    assert s.sent == [] and s.work == []
    assert s.stats["dropped"] == 3


def test_strategy_is_checked_at_construction():
    with pytest.raises(ValueError):
        Server(TABLE, "tcp://127.0.0.1:0", "", 0, strategy="nope")
