"""Fuzz (issue 13, item 3): no message can kill a process.

Decoders: comlab.system.protocol's ``decode`` and the checks of each type (``check_batch``,
``check_results``) take any bytes / any msgpack value and return a value or raise ProtocolError,
never anything else
(hypothesis, derandomized so a run is reproducible). Sockets: garbage to a running server's batch
socket, worker endpoint and control socket, to a worker from a fake server, and to a client's
result socket; afterwards the process is alive and a normal run completes with every task ok.

The known killers of issue 13 (deep nesting, 64-bit responses, thread exhaustion, malformed
WORK / CONNECT, forged results) have tests of their own; each failed before its fix.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from comlab.system import protocol as P
from comlab.system import strategies as S

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a directory of the repo, not part of the package
    sys.path.insert(0, str(ROOT))

from bench import chaos  # noqa: E402
from bench.chaos import KILLERS, deep_value, garbage_frames  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
SOCKET_FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                       suppress_health_check=list(HealthCheck))

# -- msgpack values ------------------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=5) | st.integers(-99, 99), inner, max_size=4),
                      max_leaves=10)
KINDS = sorted(P.TYPES) + ["Z", "ping", "strategy", "stats"]

# Well-formed messages of each type: mutated one field at a time below, which reaches the
# checks behind the shape tests far more often than random values do.
def _fields(msg) -> list:
    """A message as the plain list on the wire: [VERSION, KIND, *fields]."""
    return [P.VERSION, type(msg).KIND, *msg]


VALID = [_fields(m) for m in (
    P.Hello(5, "tcp://127.0.0.1:9", 4),
    P.Batch(5, "tcp://127.0.0.1:9", 3, P.ids_bytes([0, 1]), ["10.0.0.1:foo", "10.0.0.2:foo"]),
    P.Bye(5, "tcp://127.0.0.1:9"),
    P.Ack(5, "tcp://127.0.0.1:9", P.ids_bytes([3, 0]), P.ids_bytes([4, 1]), 6),
    P.Ready("w0", "host", 12),
    P.Done(5, 3),
    P.Assign.decode(P.assign([P.work(5, 3, "tcp://127.0.0.1:9", "sequential", [0, 1], [1, 2],
                                     [0.0, 0.0], t_server_in=1, t_enqueued=2, token=3)])),
    P.results(5, "w0", "host", [(0, 0, 1, 2, 3, 2)], [0, 1], [P.OK, P.OK], [1, 2], [4, 4],
              [5, 5]),
    P.Connect("tcp://127.0.0.1:9", "sequential", 4),
    P.Forget("tcp://127.0.0.1:9", 5),
    P.Pong(1, 2),
    P.Control("strategy", ["sequential"]),
)]


def raw(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


@st.composite
def mutated(draw):
    """A valid message with one field replaced, one dropped or one added."""
    msg = list(draw(st.sampled_from(VALID)))
    how = draw(st.sampled_from(["replace", "drop", "add", "replace-in-column", "cut-column",
                                "grow-column"]))
    i = draw(st.integers(2, len(msg) - 1))
    if how == "replace":
        msg[i] = draw(values)
    elif how == "drop":
        del msg[i]
    elif how == "add":
        msg.insert(i, draw(values))
    elif how == "replace-in-column":
        columns = [j for j, v in enumerate(msg) if isinstance(v, (list, bytes)) and v]
        if columns:
            j = draw(st.sampled_from(columns))
            if isinstance(msg[j], bytes):  # any bytes at any place of a binary column
                at = draw(st.integers(0, len(msg[j]) - 1))
                msg[j] = msg[j][:at] + draw(st.binary(min_size=1, max_size=9)) + msg[j][at + 1:]
            else:
                msg[j] = list(msg[j])
                msg[j][draw(st.integers(0, len(msg[j]) - 1))] = draw(values)
    else:  # a binary column of the wrong length (a dtype the reader does not expect)
        columns = [j for j, v in enumerate(msg) if isinstance(v, bytes)]
        if columns:
            j = draw(st.sampled_from(columns))
            k = draw(st.integers(1, 9))
            msg[j] = msg[j][:-k] if how == "cut-column" else msg[j] + bytes(k)
    return msg


messages = (mutated()
            | st.tuples(st.just(P.VERSION), st.sampled_from(KINDS), st.lists(values, max_size=14))
            .map(lambda t: [t[0], t[1], *t[2]]))


def _decodes_or_protocol_error(fn, *args) -> None:
    try:
        fn(*args)
    except P.ProtocolError:
        pass


# -- decoders ------------------------------------------------------------------------------------
@FUZZ
@given(st.binary(max_size=2048))
def test_decode_takes_any_bytes(frame):
    _decodes_or_protocol_error(P.decode, frame)


@FUZZ
@given(values | messages)
def test_decode_takes_any_msgpack_value(value):
    _decodes_or_protocol_error(P.decode, raw(value))


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 200))
def test_decode_takes_truncated_and_extended_messages(tail, cut):
    frame = raw(VALID[cut % len(VALID)])
    _decodes_or_protocol_error(P.decode, frame[:cut] + tail)


def _decode_and_check(frame: bytes) -> None:
    """What a receiver does with a frame: decode, then the checks of its type."""
    msg = P.decode(frame)
    if type(msg) is P.Batch:
        P.check_batch(msg)
    elif type(msg) is P.Results:
        P.check_results(msg, 4, 2)
    elif type(msg) is P.Assign:
        P.check_assign(msg)
    elif type(msg) is P.Ack:
        P.pairs(msg.accepted)
        P.pairs(msg.forged)


@FUZZ
@given(messages)
@example(_fields(P.results(5, "w0", "host", [(0, 0, 1, 2, 3, 1)], [0], [P.OK], [1], [4], [5]))
         [:6] + [["a"], b"\0", b"\0" * 8, b"\0" * 8, b"\0" * 8, None])
@example(_fields(P.results(5, "w0", "host", [(0, 0, 1, 2, 3, 1)], [0], [P.OK], [1], [4], [5]))
         [:5] + [b"\0" * 47] + [b"\0" * 8, b"\0", b"\0" * 8, b"\0" * 8, b"\0" * 8, None])
def test_every_check_takes_any_message(msg):
    _decodes_or_protocol_error(_decode_and_check, raw(msg))


# -- the known killers, at the decoder ------------------------------------------------------------
@pytest.mark.parametrize("frame", [deep_value(),
                                   chaos.deep_message(P.Batch.KIND, fields=chaos.fields(P.Batch)),
                                   chaos.deep_message(P.Results.KIND,
                                                      fields=chaos.fields(P.Results))],
                         ids=["deep-value", "deep-batch", "deep-results"])
def test_deep_nesting_is_a_protocol_error(frame):
    with pytest.raises(P.ProtocolError) as err:
        _decode_and_check(frame)
    assert len(str(err.value)) < 300


# -- thread exhaustion (a HELLO's warm-up, a huge batch) -------------------------------------------
class _ThreadLimit:
    """threading.Thread whose start() fails after ``limit`` starts, as when the machine's
    threads run out ("can't start new thread"): a stand-in for exhausting pid_max for real,
    which would hurt every other process on a shared machine."""

    def __init__(self, monkeypatch, limit: int) -> None:
        import threading as threading_mod
        real = threading_mod.Thread
        counter = {"n": 0}

        class Limited(real):
            def start(self):
                if counter["n"] >= limit:
                    raise RuntimeError("can't start new thread")
                counter["n"] += 1
                super().start()

        monkeypatch.setattr(threading_mod, "Thread", Limited)


@pytest.mark.timeout(30)
def test_thread_exhaustion_fails_tasks_not_the_worker(monkeypatch):
    strategy = S.ThreadPerTask()
    try:
        _ThreadLimit(monkeypatch, 16)
        strategy.warm(10**6)  # what a HELLO with a huge warm asks (the server caps it at 4096)
        statuses, outs, *_ = strategy.run([1] * 8, [0.001] * 8)
        assert statuses == [P.OK] * 8 and outs == [1] * 8
        statuses, *_ = strategy.run([1] * 40, [0.001] * 40)  # more tasks than threads
        assert statuses.count(P.OK) >= 16 and set(statuses) <= {P.OK, P.FAILED}
        statuses, *_ = strategy.run([1] * 8, [0.001] * 8)  # and the next batch is fine
        assert statuses == [P.OK] * 8
    finally:
        monkeypatch.undo()
        strategy.close()


# -- sockets: helpers ------------------------------------------------------------------------------
class Harness:
    """A chaos Lab (server processes, sockets, a work dir) for one test; closed at the end."""

    def __init__(self) -> None:
        self.lab = chaos.Lab(chaos.PROFILES["tiny"])
        self.row = chaos.Row("fuzz")

    def normal_run_ok(self, server, keys, expected) -> None:
        counts = chaos.normal_run(self.lab, self.row, server, keys, expected)
        assert not self.row.problems, self.row.problems
        assert counts is not None and counts["ok"] == len(keys)


@pytest.fixture
def harness():
    h = Harness()
    try:
        yield h
    finally:
        h.lab.close()


def _send_all(sock, frames) -> None:
    for f in frames:
        sock.send(f)


frames = st.binary(max_size=256) | (values | messages).map(raw)


# -- the server's three sockets ------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_server_sockets_survive_fuzz(harness):
    lab = harness.lab
    keys, expected, path = lab.data(16, 0.0)
    wurl = chaos.free_url()
    server = lab.server(path, 1, workers_url=wurl)
    push = lab.socket(zmq.PUSH)
    push.connect(server.url)
    dealer = lab.socket(zmq.DEALER)
    dealer.connect(wurl)
    ctl = lab.socket(zmq.DEALER)  # a DEALER on the REP socket: no lock-step, one answer each
    ctl.connect(server.control_url)
    sent = {"control": 0}

    @SOCKET_FUZZ
    @given(st.lists(frames, min_size=1, max_size=4))
    def fuzz(batch):
        _send_all(push, batch)
        _send_all(dealer, batch)
        for f in batch:
            ctl.send_multipart([b"", f])
            sent["control"] += 1

    fuzz()
    _send_all(push, garbage_frames(11))
    _send_all(dealer, garbage_frames(12))
    answered = 0
    while answered < sent["control"] and ctl.poll(5000):
        ctl.recv_multipart()
        answered += 1
    assert answered == sent["control"], "the control socket stopped answering"
    dealer.close(0)  # a phantom worker that said READY goes with its connection
    assert server.proc.poll() is None, server.failure("the server died")
    harness.normal_run_ok(server, keys, expected)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["server-batch", "server-worker", "server-control"])
def test_server_survives_deep_nesting(target, harness):
    lab = harness.lab
    keys, expected, path = lab.data(16, 0.0)
    wurl = chaos.free_url()
    server = lab.server(path, 1, workers_url=wurl)
    if target == "server-control":
        for frame in KILLERS[target].values():
            req = lab.socket(zmq.REQ)
            req.connect(server.control_url)
            req.send(frame)
            assert req.poll(2000), "no answer from the control socket"
            req.recv()
            req.close(0)
    else:
        sock = lab.socket(zmq.PUSH if target == "server-batch" else zmq.DEALER)
        sock.connect(server.url if target == "server-batch" else wurl)
        _send_all(sock, KILLERS[target].values())
        n = len(KILLERS[target])
        chaos.wait_until(lambda: server.proc.poll() is not None
                         or chaos.stats(server, 1.0)["dropped"] >= n, 5)
    assert server.proc.poll() is None, server.failure("the server died")
    harness.normal_run_ok(server, keys, expected)


@pytest.mark.timeout(60)
def test_control_socket_answers_any_frame_shape(harness):
    """Finding (issue 24): a REQ sending one 2-frame message made the server exit 1 (EFSM: it
    answered with the second frame unread)."""
    lab = harness.lab
    keys, expected, path = lab.data(16, 0.0)
    server = lab.server(path, 1)
    good = P.Control("ping", []).pack()
    for parts in ([good, good], [b"", b"x", good], [b"", b""], [good, b"x" * 10_000]):
        req = lab.socket(zmq.REQ)
        req.connect(server.control_url)
        req.send_multipart(parts)
        assert req.poll(5000), f"no answer to a request of {len(parts)} frames"
        answer = P.ControlReply.decode(req.recv())
        assert answer.op == "error" and "frames" in answer.payload
        req.close(0)
    assert server.proc.poll() is None, server.failure("the server died")
    assert chaos.stats(server)["workers"]  # the same socket still answers a real request
    harness.normal_run_ok(server, keys, expected)


@pytest.mark.timeout(60)
def test_map_response_beyond_64_bits(tmp_path, harness):
    path = tmp_path / "map.txt"
    path.write_text(f"10.0.0.1:foo:{2**70}:0\n10.0.0.2:foo:1:0\n")
    proc = harness.lab.popen([sys.executable, "-m", "comlab.run_server", str(path),
                              chaos.free_url(), "", "1", "--ready-json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # the ready line, or "" when it exits
    # Refused at start, naming the line, like every other bad map line.
    assert line == "", "the server started with a response it cannot send"
    assert proc.wait(10) == 2 and f"{path}:1:" in proc.stderr.read()


# -- a worker, from a fake server ----------------------------------------------------------------
def _collect(strategy, n: int = 40) -> list:
    """``n`` examples of a strategy, drawn by hypothesis (derandomized), to send in one go to a
    process that is expensive to start."""
    out = []

    @settings(SOCKET_FUZZ, max_examples=n)
    @given(strategy)
    def collect(x):
        out.append(x)

    collect()
    return out


@pytest.mark.timeout(60)
def test_worker_survives_undecodable_frames(harness):
    fuzzed = [f for f in _collect(frames, 60) if _undecodable(f)]
    problems = chaos.fuzz_worker(harness.lab, fuzzed + [f for f in garbage_frames(13)
                                                        if _undecodable(f)], timeout=5)
    assert not problems, problems


def _undecodable(frame: bytes) -> bool:
    try:
        P.decode(frame)
    except P.ProtocolError:
        return True
    return False


@pytest.mark.timeout(60)
def test_worker_survives_malformed_messages(harness):
    fuzzed = [raw(m) for m in _collect(messages, 60) if m[1] != P.Stop.KIND]  # STOP: it obeys
    problems = chaos.fuzz_worker(harness.lab, fuzzed + garbage_frames(14)
                                 + list(KILLERS["worker"].values()), timeout=3)
    assert not problems, problems


# -- a client's result socket --------------------------------------------------------------------
def _client_cli(lab, keys, server_url, bind, timeout=20):
    path = os.path.join(lab.dir, f"commands-{len(keys)}.txt")
    Path(path).write_text("\n".join(keys) + "\n")
    return lab.popen([sys.executable, "-m", "comlab.run_client", path, "2", bind, server_url,
                      "--timeout", str(timeout), "--json"], stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)


def _client_summary(proc, timeout=30) -> dict:
    import json
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err[-2000:]
    lines = out.strip().splitlines()
    assert lines, f"no output (exit {proc.returncode}): {err[-500:]}"
    return json.loads(lines[-1])


@pytest.mark.timeout(60)
def test_client_survives_fuzz_on_its_result_socket(harness):
    lab = harness.lab
    keys, expected, path = lab.data(8, 0.25)
    server = lab.server(path, 1)
    bind = chaos.free_url()
    client = _client_cli(lab, keys, server.url, bind)
    push = lab.socket(zmq.PUSH)
    push.connect(bind)  # libzmq connects once the client has bound; the frames wait till then

    @SOCKET_FUZZ
    @given(st.lists(frames, min_size=1, max_size=4))
    def fuzz(batch):
        _send_all(push, [f for f in batch if not _forged_result(f, len(keys))])

    fuzz()
    _send_all(push, garbage_frames(15))
    summary = _client_summary(client)
    assert client.returncode == 0 and summary["ok"] == len(keys), summary
    assert summary["sum"] == sum(expected.values()), summary


def _forged_result(frame: bytes, n: int) -> bool:
    """A frame the client would take as a real result (forgery, tested on its own below)."""
    try:
        P.check_results(P.Results.decode(frame), n)
        return True
    except P.ProtocolError:
        return False


@pytest.mark.timeout(60)
def test_client_survives_deep_nesting(harness):
    lab = harness.lab
    keys, expected, path = lab.data(8, 0.25)
    server = lab.server(path, 1)
    bind = chaos.free_url()
    client = _client_cli(lab, keys, server.url, bind)
    push = lab.socket(zmq.PUSH)
    push.connect(bind)
    _send_all(push, KILLERS["client-results"].values())
    summary = _client_summary(client)
    assert client.returncode == 0 and summary["ok"] == len(keys), summary


@pytest.mark.timeout(60)
def test_client_rejects_forged_results(harness):
    lab = harness.lab
    keys, expected, path = lab.data(8, 0.25)
    server = lab.server(path, 1)
    t = chaos.ClientThread(keys, 2, server.url, 20)
    chaos.wait_until(t.in_run, 10)
    push = lab.socket(zmq.PUSH)
    push.connect(t.client.reply_url)
    n = len(keys)
    # Not the run's: a stranger cannot know its id (a worker given its batches can: see
    # bench.chaos's peer/forged-results).
    for run in (0, t.client.run_id ^ 1):
        push.send(P.results(run, "peer", "peer-host", [(0, 0, 1, 2, 3, n)], list(range(n)),
                            [P.OK] * n, [999] * n, [4] * n, [5] * n).pack())
    counts = t.finish(harness.row, expected, wait=30)
    assert not harness.row.problems, harness.row.problems
    assert counts["ok"] == n
