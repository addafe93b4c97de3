"""The wire format: every builder round-trips; unpack and check_batch refuse what is not a
comlab message of this version."""

from __future__ import annotations

import msgpack
import pytest

from comlab.system import protocol as P

BUILT = [
    pytest.param(P.hello("tcp://127.0.0.1:1", 16), [P.VERSION, P.HELLO, "tcp://127.0.0.1:1", 16],
                 id="hello"),
    pytest.param(P.welcome({"version": "x", "workers": 3}),
                 [P.VERSION, P.WELCOME, {"version": "x", "workers": 3}], id="welcome"),
    pytest.param(P.batch(7, "tcp://h:2", 123456789, [0, 1, 2], ["1.2.3.4:a", "1.2.3.4:b", "x"]),
                 [P.VERSION, P.BATCH, 7, "tcp://h:2", 123456789, [0, 1, 2],
                  ["1.2.3.4:a", "1.2.3.4:b", "x"]], id="batch"),
    pytest.param(P.batch(0, "", 0, [], []), [P.VERSION, P.BATCH, 0, "", 0, [], []],
                 id="batch-empty"),
    pytest.param(P.ready("w0", "host", 4242), [P.VERSION, P.READY, "w0", "host", 4242],
                 id="ready"),
    pytest.param(P.done(99), [P.VERSION, P.DONE, 99], id="done"),
    pytest.param(P.connect("tcp://c:3", "sequential", 8),
                 [P.VERSION, P.CONNECT, "tcp://c:3", "sequential", 8], id="connect"),
    pytest.param(P.joined("tcp://c:3"), [P.VERSION, P.JOINED, "tcp://c:3"], id="joined"),
    pytest.param(P.STOP_MESSAGE, [P.VERSION, P.STOP], id="stop"),
]


@pytest.mark.parametrize("frame, expected", BUILT)
def test_builders_round_trip(frame, expected):
    assert isinstance(frame, bytes)
    assert P.unpack(frame) == expected


def test_results_and_work_round_trip():
    # RESULTS and WORK are packed in place by server and worker; the columns survive as lists,
    # big monotonic stamps stay ints, None and errors pass through.
    t = 1_700_000_000_123_456_789
    results = [P.VERSION, P.RESULTS, 3, "w1", "host", 1, t, t + 1, t + 2, [4, 5],
               [P.OK, P.FAILED], [10, None], [t + 3, t + 4], [t + 5, t + 6], [None, "boom"]]
    assert P.unpack(P.pack(results)) == results
    work = [P.VERSION, P.WORK, 3, "tcp://c:1", "thread-pool:2", t, t, t, 0, [4, 5], [10, 11],
            [0.0, 0.25]]
    assert P.unpack(P.pack(work)) == work


def test_batch_passes_check():
    msg = P.unpack(P.batch(7, "tcp://h:2", 5, [0, 1], ["a:b", "c:d"]))
    assert P.check_batch(msg) == (7, "tcp://h:2", 5, [0, 1], ["a:b", "c:d"])


def test_status_names_cover_codes():
    assert [P.STATUS_NAMES[c] for c in (P.OK, P.UNKNOWN, P.UNREACHABLE, P.FAILED, P.LOST)] == \
        ["ok", "unknown", "unreachable", "failed", "lost"]
    assert len(set(P.HELLO + P.WELCOME + P.BATCH + P.READY + P.DONE + P.WORK + P.CONNECT
                   + P.JOINED + P.STOP + P.RESULTS)) == 10


@pytest.mark.parametrize("frame", [
    pytest.param(b"\xc1", id="never-used-byte"),
    pytest.param(b"\xff\xfe\xfd garbage", id="garbage"),
    pytest.param(b"", id="empty"),
    pytest.param(P.hello("tcp://127.0.0.1:1")[:-3], id="truncated"),
    pytest.param(P.batch(1, "", 0, [0], ["a:b"])[:5], id="truncated-batch"),
    pytest.param(P.done(1) + P.done(2), id="two-messages"),
])
def test_unpack_rejects_undecodable(frame):
    with pytest.raises(P.ProtocolError):
        P.unpack(frame)


@pytest.mark.parametrize("obj", [
    pytest.param({"a": 1}, id="map"),
    pytest.param(5, id="int"),
    pytest.param("H", id="str"),
    pytest.param(None, id="nil"),
    pytest.param([], id="empty-list"),
    pytest.param([P.VERSION], id="version-only"),
])
def test_unpack_rejects_non_messages(obj):
    with pytest.raises(P.ProtocolError, match="not a comlab message"):
        P.unpack(msgpack.packb(obj))


@pytest.mark.parametrize("version", [P.VERSION + 1, 0, "1", None])
def test_unpack_rejects_other_versions(version):
    with pytest.raises(P.ProtocolError, match="version"):
        P.unpack(msgpack.packb([version, P.HELLO, "tcp://x:1"]))


def test_protocol_error_is_value_error():
    assert issubclass(P.ProtocolError, ValueError)


GOOD_BATCH = [P.VERSION, P.BATCH, 1, "tcp://c:1", 5, [0, 1], ["a:b", "c:d"]]


def _with(index, value):
    msg = list(GOOD_BATCH)
    msg[index] = value
    return msg


@pytest.mark.parametrize("msg", [
    pytest.param(GOOD_BATCH[:-1], id="too-few-fields"),
    pytest.param(GOOD_BATCH + [None], id="too-many-fields"),
    pytest.param(_with(2, "1"), id="batch-id-str"),
    pytest.param(_with(2, None), id="batch-id-none"),
    pytest.param(_with(3, None), id="reply-url-none"),
    pytest.param(_with(3, b"tcp://c:1"), id="reply-url-bytes"),
    pytest.param(_with(4, 1.5), id="t-sent-float"),
    pytest.param(_with(5, (0, 1)), id="ids-tuple"),
    pytest.param(_with(5, "01"), id="ids-str"),
    pytest.param(_with(6, "a:b"), id="keys-str"),
    pytest.param(_with(6, ["a:b"]), id="length-mismatch"),
])
def test_check_batch_rejects_malformed(msg):
    with pytest.raises(P.ProtocolError):
        P.check_batch(msg)


def test_check_batch_after_wire():
    # What the server actually sees: a decoded frame.
    bad = P.unpack(msgpack.packb([P.VERSION, P.BATCH, 1, "", 5, [0, 1, 2], ["a:b"]]))
    with pytest.raises(P.ProtocolError, match="malformed BATCH"):
        P.check_batch(bad)
