"""The wire format: every message type round-trips by name; decode refuses what is not a comlab
message of this version, and says so with a ProtocolError only."""

from __future__ import annotations

import msgpack
import pytest

from comlab.system import protocol as P

T = 1_700_000_000_123_456_789
EXAMPLES = [
    P.Hello(7, "tcp://127.0.0.1:1", 16),
    P.Welcome(7, {"version": "x", "workers": 3}),
    P.Batch(7, 3, "tcp://h:2", T, [0, 1, 2], ["1.2.3.4:a", "1.2.3.4:b", "x"]),
    P.Batch(7, 0, "", 0, [], []),
    P.Bye(7, "tcp://h:2"),
    P.Ready("w0", "host", 4242),
    P.Done(7, 99),
    P.Work(7, 3, "tcp://c:1", "thread-pool:2", T, T, T, 0, [4, 5], [10, 11], [0.0, 0.25]),
    P.Connect("tcp://c:3", "sequential", 8),
    P.Joined("tcp://c:3"),
    P.Forget("tcp://c:3", 7),
    P.Stop(),
    P.Ping(None), P.Ping(T),
    P.Pong(T, T + 1),
    P.Results(7, 3, "w1", "host", 1, T, T + 1, T + 2, [4, 5], [P.OK, P.FAILED], [10, None],
              [T + 3, T + 4], [T + 5, T + 6], [None, "boom"]),
    P.Control("strategy", ["sequential"]),
    P.ControlReply("stats", {"batches": 1}),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_by_name(msg):
    frame = msg.pack()
    assert isinstance(frame, bytes)
    assert P.decode(frame) == msg and type(P.decode(frame)) is type(msg)
    assert type(msg).decode(frame) == msg
    # On the wire: a plain msgpack array [VERSION, KIND, *fields]
    assert msgpack.unpackb(frame) == [P.VERSION, type(msg).KIND, *msg]


def test_every_registered_type_has_an_example():
    assert {type(m) for m in EXAMPLES} == set(P.TYPES.values())


def test_decode_restricted_to_allowed_types():
    with pytest.raises(P.ProtocolError, match="unexpected message type"):
        P.decode(P.Stop().pack(), (P.Batch, P.Hello))
    with pytest.raises(P.ProtocolError):
        P.Batch.decode(P.Done(1, 2).pack())


def test_status_names_cover_codes():
    assert [P.STATUS_NAMES[c] for c in (P.OK, P.UNKNOWN, P.UNREACHABLE, P.FAILED, P.LOST)] == \
        ["ok", "unknown", "unreachable", "failed", "lost"]


@pytest.mark.parametrize("frame", [
    pytest.param(b"\xc1", id="never-used-byte"),
    pytest.param(b"\xff\xfe\xfd garbage", id="garbage"),
    pytest.param(b"", id="empty"),
    pytest.param(P.Hello(1, "tcp://127.0.0.1:1", 0).pack()[:-3], id="truncated"),
    pytest.param(P.Done(1, 1).pack() + P.Done(1, 2).pack(), id="two-messages"),
    pytest.param(b"\x91" * 5000 + b"\x01", id="nested-5000"),
])
def test_decode_rejects_undecodable(frame):
    with pytest.raises(P.ProtocolError):
        P.decode(frame)


@pytest.mark.parametrize("obj", [{"a": 1}, 5, "H", None, [], [P.VERSION]],
                         ids=["map", "int", "str", "nil", "empty-list", "version-only"])
def test_decode_rejects_non_messages(obj):
    with pytest.raises(P.ProtocolError, match="not a comlab message"):
        P.decode(msgpack.packb(obj))


@pytest.mark.parametrize("version", [P.VERSION + 1, 1, "2", None])
def test_decode_rejects_other_versions(version):
    with pytest.raises(P.ProtocolError, match="version"):
        P.decode(msgpack.packb([version, "H", 1, "tcp://x:1", 0]))


def test_protocol_error_is_value_error():
    assert issubclass(P.ProtocolError, ValueError)


GOOD_BATCH = [P.VERSION, "B", 1, 1, "tcp://c:1", 5, [0, 1], ["a:b", "c:d"]]


def _with(index, value):
    msg = list(GOOD_BATCH)
    msg[index] = value
    return msg


@pytest.mark.parametrize("msg", [
    pytest.param(GOOD_BATCH[:-1], id="too-few-fields"),
    pytest.param(GOOD_BATCH + [None], id="too-many-fields"),
    pytest.param(_with(2, "1"), id="run-str"),
    pytest.param(_with(3, None), id="batch-id-none"),
    pytest.param(_with(4, None), id="reply-url-none"),
    pytest.param(_with(4, b"tcp://c:1"), id="reply-url-bytes"),
    pytest.param(_with(5, 1.5), id="t-sent-float"),
    pytest.param(_with(6, "01"), id="ids-str"),
    pytest.param(_with(7, "a:b"), id="keys-str"),
    pytest.param(_with(7, ["a:b"]), id="length-mismatch"),
    pytest.param(_with(1, ["B"]), id="kind-list"),
])
def test_malformed_batches_are_refused(msg):
    with pytest.raises(P.ProtocolError):
        P.check_batch(P.decode(msgpack.packb(msg)))


def _results(**changes):
    good = P.Results(7, 0, "w", "h", 0, 1, 2, 3, [0, 1], [P.OK, P.OK], [1, None], [4, 5],
                     [6, 7], None)
    return good._replace(**changes)


def test_check_results_accepts_good_results():
    assert P.check_results(_results(), n_tasks=2) == [0, 1]


@pytest.mark.parametrize("changes", [
    {"task_ids": [0, 2]}, {"task_ids": [-1, 0]}, {"task_ids": [0.0, 1]},
    {"statuses": [P.OK, P.LOST]}, {"statuses": [P.OK]}, {"t_started": [4, "5"]},
    {"responses": [1, "x"]}, {"responses": [1, [2]]}, {"errors": [None, 5]},
    {"task_ids": [0, [1]]}, {"responses": [2 ** 63, None]},
], ids=str)
def test_check_results_refuses_forged_or_broken(changes):
    with pytest.raises(P.ProtocolError):
        P.check_results(_results(**changes), n_tasks=2)


def test_preview_of_a_deeply_nested_value_is_bounded():
    deep = msgpack.unpackb(b"\x91" * 1000 + b"\x01")
    text = P.preview(deep)
    assert len(text) < 200


def test_batch_token_is_keyed_and_per_batch():
    a, b = b"s" * 16, b"t" * 16
    assert P.batch_token(a, 3) == P.batch_token(a, 3) > 0
    assert len({P.batch_token(a, 3), P.batch_token(a, 4), P.batch_token(b, 3)}) == 3
    assert P.batch_token(b"", 3) == 0
    assert P.batch_token(a, 3) < 2 ** 63  # a msgpack int64


def test_check_results_keeps_a_batch_to_its_own_tasks():
    r = _results(batch_id=1, task_ids=[2, 3])
    assert P.check_results(r, n_tasks=8, batch_size=2) == [2, 3]
    with pytest.raises(P.ProtocolError, match="other batches"):
        P.check_results(r._replace(task_ids=[3, 4]), n_tasks=8, batch_size=2)
    with pytest.raises(P.ProtocolError, match="other batches"):
        P.check_results(r._replace(batch_id=0), n_tasks=8, batch_size=2)
