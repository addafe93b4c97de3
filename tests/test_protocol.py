"""The wire format: every message type round-trips by name; decode refuses what is not a comlab
message of this version, and says so with a ProtocolError only."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from comlab.system import protocol as P

T = 1_700_000_000_123_456_789
EXAMPLES = [
    P.Hello(7, "tcp://127.0.0.1:1", 16),
    P.Welcome(7, {"version": "x", "workers": 3}),
    P.Batch(7, "tcp://h:2", 3, P.ids_bytes([0, 1, 2]), ["1.2.3.4:a", "1.2.3.4:b", "x"]),
    P.Batch(7, "", 0, b"", []),
    P.Bye(7, "tcp://h:2"),
    P.Ack(7, "tcp://h:2", P.ids_bytes([3, 0, 4, 1]), b"", 12345),
    P.Ready("w0", "host", 4242),
    P.Done(7, 99),
    P.Assign(7, "tcp://c:1", "thread-pool:2", P.heads_bytes([(3, 0, T, T, 9, 2)]),
             P.ids_bytes([4, 5]), P.work(7, 3, "", "", [4, 5], [10, 11], [0.0, 0.25]).entries),
    P.Connect("tcp://c:3", "sequential", 8),
    P.Joined("tcp://c:3"),
    P.Forget("tcp://c:3", 7),
    P.Stop(),
    P.Ping(None), P.Ping(T),
    P.Pong(T, T + 1),
    P.results(7, "w1", "host", [(3, 1, T, T + 1, T + 2, 2)], [4, 5], [P.OK, P.FAILED],
              [10, None], [T + 3, T + 4], [T + 5, T + 6], [None, "boom"]),
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


@pytest.mark.parametrize("version", [P.VERSION + 1, 1, "2", None, float(P.VERSION), True])
def test_decode_rejects_other_versions(version):
    with pytest.raises(P.ProtocolError, match="version"):
        P.decode(msgpack.packb([version, "H", 1, "tcp://x:1", 0]))


def test_protocol_error_is_value_error():
    assert issubclass(P.ProtocolError, ValueError)


GOOD_BATCH = [P.VERSION, "B", 1, "tcp://c:1", 1, P.ids_bytes([0, 1]), ["a:b", "c:d"]]


def _with(index, value):
    msg = list(GOOD_BATCH)
    msg[index] = value
    return msg


@pytest.mark.parametrize("msg", [
    pytest.param(GOOD_BATCH[:-1], id="too-few-fields"),
    pytest.param(GOOD_BATCH + [None], id="too-many-fields"),
    pytest.param(_with(2, "1"), id="run-str"),
    pytest.param(_with(4, None), id="batch-id-none"),
    pytest.param(_with(3, None), id="reply-url-none"),
    pytest.param(_with(3, b"tcp://c:1"), id="reply-url-bytes"),
    pytest.param(_with(5, [0, 1]), id="ids-list"),
    pytest.param(_with(5, P.ids_bytes([0, 1])[:-1]), id="ids-short"),
    pytest.param(_with(5, P.ids_bytes([0, 1, 2])), id="ids-long"),
    pytest.param(_with(6, "a:b"), id="keys-str"),
    pytest.param(_with(6, ["a:b"]), id="length-mismatch"),
    pytest.param(_with(1, ["B"]), id="kind-list"),
])
def test_malformed_batches_are_refused(msg):
    with pytest.raises(P.ProtocolError):
        P.check_batch(P.decode(msgpack.packb(msg)))


def _results(heads=((0, 0, 1, 2, 3, 2),), task_ids=(0, 1), statuses=(P.OK, P.OK),
             responses=(1, 0), t_started=(4, 5), t_finished=(6, 7), errors=None, **raw):
    good = P.results(7, "w", "h", heads, task_ids, statuses, responses, t_started, t_finished,
                     errors)
    return good._replace(**raw)


def test_check_results_accepts_good_results():
    checked = P.check_results(_results(), n_tasks=2)
    assert checked.task_ids.tolist() == [0, 1] and checked.statuses.tolist() == [P.OK, P.OK]
    assert checked.heads["token"].tolist() == [3]


I64_BAD = np.array([1, 2], "<i8").astype(">i8").tobytes()  # big-endian: wrong values


@pytest.mark.parametrize("changes", [
    {"task_ids": (0, 2)}, {"task_ids": (-1, 0)}, {"task_ids": (0,)},
    {"statuses": (P.OK, P.LOST)}, {"statuses": (P.OK, -1)}, {"errors": [None, 5]},
    {"errors": [None]}, {"heads": ((0, 0, 1, 2, 3, 3),)}, {"heads": ((0, 0, 1, 2, 3, -2),)},
    {"heads": ((0, 0, 1, 2, 3, 1), (0, 0, 1, 2, 3, 1), (0, 0, 0, 0, 0, 1))},
    {"statuses": b"\x00"}, {"responses": b"\x00" * 15}, {"t_started": b"\x00" * 17},
    {"t_finished": b""}, {"heads": b"\x00" * 47}, {"task_ids": I64_BAD},
], ids=str)
def test_check_results_refuses_forged_or_broken(changes):
    raw = {k: v for k, v in changes.items() if isinstance(v, bytes)}
    plain = {k: v for k, v in changes.items() if not isinstance(v, bytes)}
    with pytest.raises(P.ProtocolError):
        P.check_results(_results(**plain)._replace(**raw), n_tasks=2)


def test_check_assign_refuses_bad_columns():
    w = P.work(7, 0, "tcp://c:1", "sequential", [0, 1], [1, 2], [0.0, 0.5])
    good = P.Assign.decode(P.assign([w]))
    heads, entries = P.check_assign(good)
    assert heads["n"].tolist() == [2] and entries["wait"].tolist() == [0.0, 0.5]
    nan = P.work(7, 0, "", "", [0, 1], [1, 2], [0.0, float("nan")]).entries
    for bad in ({"entries": good.entries[:-1]}, {"task_ids": good.task_ids + b"\0" * 8},
                {"entries": nan}, {"heads": good.heads[:-8]},
                {"entries": P.work(7, 0, "", "", [0, 1], [1, 2], [0.0, -1.0]).entries}):
        with pytest.raises(P.ProtocolError):
            P.check_assign(good._replace(**bad))


def test_assign_of_several_batches_keeps_each_head_and_its_tasks():
    works = [P.work(7, b, "tcp://c:1", "sequential", [2 * b, 2 * b + 1], [b, b], [0.0, 0.0],
                    token=100 + b) for b in range(3)]
    a = P.Assign.decode(P.assign(works))
    heads, entries = P.check_assign(a)
    assert heads["batch_id"].tolist() == [0, 1, 2] and heads["token"].tolist() == [100, 101, 102]
    assert np.frombuffer(a.task_ids, P.I64).tolist() == list(range(6))
    assert entries["response"].tolist() == [0, 0, 1, 1, 2, 2]


def test_hand_built_batch_frames_equal_packed_batches():
    keys = ["1.2.3.4:ls", "a:b", "x" * 300 + ":y", "\u00e9:z"]
    frames = P.BatchFrames(7, "tcp://c:1", P.Keys.of(keys))
    for b, (lo, hi) in enumerate([(0, 2), (2, 4), (3, 4), (0, 4)]):
        assert frames.frame(b, lo, hi) == \
            P.Batch(7, "tcp://c:1", b, P.ids_bytes(range(lo, hi)), keys[lo:hi]).pack()
    assert P.Keys.from_sizes(P.Keys.of(keys).blob, P.Keys.of(keys).sizes()).tolist() == keys


def test_preview_of_a_deeply_nested_value_is_bounded():
    deep = msgpack.unpackb(b"\x91" * 1000 + b"\x01")
    text = P.preview(deep)
    assert len(text) < 200


def test_batch_token_is_keyed_and_per_batch():
    a, b = b"s" * 16, b"t" * 16
    assert P.batch_token(a, 3) == P.batch_token(a, 3) > 0
    assert len({P.batch_token(a, 3), P.batch_token(a, 4), P.batch_token(b, 3)}) == 3
    assert P.batch_token(b"", 3) == 0
    assert P.batch_token(a, 3) < 2 ** 31  # the possession part of a token
    assert [P.Seal(a).possession(i) for i in (-1, 0, 3, 2 ** 40)] == \
        [P.batch_token(a, i) for i in (-1, 0, 3, 2 ** 40)]
    assert P.Seal(b"").token(3, b"", b"") == 0


def test_seal_covers_the_task_ids_and_responses():
    """Item 4 of issue 24: a worker holding a batch (and so its token) cannot change a
    response, nor move it to another task, and keep the token valid."""
    seal = P.Seal(b"k" * 16)
    ids, responses = P.ids_bytes([4, 5]), P.ids_bytes([10, 11])
    token = seal.token(2, ids, responses)
    assert 0 < token < 2 ** 63 and token & P.Seal.POSSESSION == seal.possession(2)
    assert token >> 31 == seal.tag(2, ids, responses)
    for other in (seal.token(2, ids, P.ids_bytes([10, 999])),
                  seal.token(2, P.ids_bytes([5, 4]), responses),
                  seal.token(3, ids, responses),
                  P.Seal(b"j" * 16).token(2, ids, responses)):
        assert other >> 31 != token >> 31
    assert seal.ack_tag(ids, b"") != seal.ack_tag(b"", ids)  # the columns are kept apart


def test_check_results_keeps_a_batch_to_its_own_tasks():
    r = _results(heads=((1, 0, 1, 2, 3, 2),), task_ids=(2, 3))
    assert P.check_results(r, n_tasks=8, batch_size=2).task_ids.tolist() == [2, 3]
    with pytest.raises(P.ProtocolError, match="other batches"):
        P.check_results(_results(heads=((1, 0, 1, 2, 3, 2),), task_ids=(3, 4)), n_tasks=8,
                        batch_size=2)
    with pytest.raises(P.ProtocolError, match="other batches"):
        P.check_results(_results(heads=((0, 0, 1, 2, 3, 2),), task_ids=(2, 3)), n_tasks=8,
                        batch_size=2)
    two = _results(heads=((1, 0, 1, 2, 3, 1), (3, 0, 1, 2, 3, 1)), task_ids=(2, 6))
    assert P.check_results(two, n_tasks=8, batch_size=2).task_ids.tolist() == [2, 6]
    with pytest.raises(P.ProtocolError, match="other batches"):
        P.check_results(two._replace(task_ids=P.ids_bytes([6, 2])), n_tasks=8, batch_size=2)


def test_one_batch_checks_agree_with_the_vectorised_ones():
    good = P.Assign.decode(P.assign([P.work(7, 3, "u", "sequential", [4, 5], [10, -11],
                                            [0.0, 0.25], token=9)]))
    head, waits = P.check_one_batch(good)
    assert head == (3, 0, 0, 0, 9, 2) and list(waits) == [0.0, 0.25]
    assert P.entry_lists(good.entries) == ([10, -11], [0.0, 0.25])
    assert np.frombuffer(P.entry_responses(good.entries), P.I64).tolist() == [10, -11]
    bad_waits = [P.work(7, 3, "u", "", [4], [1], [w]).entries
                 for w in (float("nan"), float("inf"), -0.5)]
    for bad in [{"entries": good.entries[:-1]}, {"task_ids": good.task_ids[:8]},
                {"heads": P.heads_bytes([(3, 0, 0, 0, 9, -1)])}] + \
            [{"entries": e, "task_ids": good.task_ids[:8],
              "heads": P.heads_bytes([(3, 0, 0, 0, 9, 1)])} for e in bad_waits]:
        for check in (P.check_one_batch, P.check_assign):
            with pytest.raises(P.ProtocolError):
                check(good._replace(**bad))
    two = P.Assign.decode(P.assign([P.work(7, b, "u", "", [b], [1], [0.0]) for b in (0, 1)]))
    assert P.check_one_batch(two) is None


@pytest.mark.parametrize("change, accepted", [
    ({}, True), ({"task_ids": (2, 9)}, False), ({"task_ids": (2, -1)}, False),
    ({"task_ids": (2, 5)}, False), ({"task_ids": (2,)}, False),
    ({"statuses": (0, 4)}, False), ({"statuses": (0, -1)}, False), ({"statuses": (0, 3)}, True),
    ({"statuses": (0,)}, False), ({"errors": ["x"]}, False), ({"errors": [None, 3]}, False),
    ({"errors": [None, "boom"]}, True), ({"heads": ((1, 0, 1, 2, 3, -1),)}, False),
    ({"heads": ((1, 0, 1, 2, 3, 3),)}, True), ({"heads": ((0, 0, 1, 2, 3, 2),)}, False),
    ({"heads": ((1, 0, 1, 2, 3, 0),), "task_ids": ()}, True),
])
def test_one_result_check_agrees_with_the_vectorised_one(change, accepted):
    """The client's numpy-free path for a one-batch RESULTS accepts and refuses exactly what
    ``check_results`` does, and finds the same batch, token and task ids."""
    kw = {"heads": ((1, 0, 1, 2, 3, 2),), "task_ids": (2, 3), **change}
    n = kw["heads"][0][5]
    if "statuses" in change or "task_ids" in change:
        kw.setdefault("statuses", (0,) * len(kw["task_ids"]))
    r = _results(**kw)
    if "task_ids" in change and "statuses" not in change:  # keep the other columns in step
        k = len(kw["task_ids"])
        r = r._replace(statuses=bytes(k), responses=bytes(8 * k), t_started=bytes(8 * k),
                       t_finished=bytes(8 * k))
    if "heads" in change and "task_ids" not in change and n >= 0:
        r = r._replace(task_ids=P.ids_bytes([2, 3, 3][:n]), statuses=bytes(n),
                       responses=bytes(8 * n), t_started=bytes(8 * n), t_finished=bytes(8 * n))
    if not accepted:
        for check in (P.check_results, P.check_one_result):
            with pytest.raises(P.ProtocolError):
                check(r, n_tasks=8, batch_size=2)
        return
    want = P.check_results(r, n_tasks=8, batch_size=2)
    b, token, ids, attempt = P.check_one_result(r, n_tasks=8, batch_size=2)
    assert (b, token, list(ids), attempt) == (want.heads["batch_id"][0], want.heads["token"][0],
                                              want.task_ids.tolist(), want.heads["attempt"][0])


def test_one_result_check_leaves_several_batches_to_the_vectorised_one():
    two = _results(heads=((1, 0, 1, 2, 3, 1), (3, 0, 1, 2, 3, 1)), task_ids=(2, 6))
    assert P.check_one_result(two, n_tasks=8, batch_size=2) is None
