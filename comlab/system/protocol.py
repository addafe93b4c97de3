"""Every message comlab puts on a socket, in one place: a named type per message.

Each message is a NamedTuple; ``msg.pack()`` gives its frame and ``decode(frame)`` (or
``Type.decode(frame)``) gives it back, checked: builders and readers use field names only, and
a field added to a type is added everywhere at once. On the wire a message is one frame holding
a msgpack array ``[VERSION, KIND, *fields]`` (never pickle).

Per-task columns travel as **binary columns**: packed little-endian arrays in msgpack ``bin``
fields (task ids and stamps int64, statuses int8, a task's response and wait as one (int64,
float64) record), read with ``numpy.frombuffer`` and checked vectorised, so no per-task Python
object is made on the hot path by the encoding (version 2 packed msgpack lists of ints: about a
third of a batch-256 message's cost at each end was their per-element encoding and checking).
The per-batch facts a result needs (batch id, attempt, the server's two stamps, the batch token,
the number of tasks) are a ``HEAD`` record per batch: a WORK message may carry several batches of
one run (the server sends a worker every batch it gave it during one pass of its loop in one
message) and so may a RESULTS (a worker's batches of one run that finished together), which is
what keeps batch-1 runs from paying three messages per task. Nothing else changes per batch:
each batch is still dispatched, run and stamped on its own.

All stamps are integers from ``time.monotonic_ns()`` (CLOCK_MONOTONIC, shared by every process on
a Linux host). ``run`` is the client session's identity (a random 63-bit int drawn per client
run): every batch, work item and result carries it, so a result of an earlier run on the same
result URL can never be taken for one of this run's, and a server can drop a departed client's
queued work.

Integrity (version 4): a batch's token is a ``Seal``: 31 bits prove the RESULTS answers a
batch the server gave out (a keyed hash of its batch id), 32 bits authenticate the task ids and
the responses the server expects back (a keyed hash over those two columns), both under the
run's secret, which only the client and the server know (HELLO). A worker echoes the token; it
cannot change a response and keep the token valid. The client acknowledges the batches it
accepted (ACK), so the server learns which DONEs were true (comlab.system.acks).

A peer's message can cost that peer its message, nothing else: ``decode`` raises only
ProtocolError (shape, field types, version), the ``check_*`` functions refuse columns of the
wrong length or values out of range, msgpack bounds nesting (about 1,000 deep) and libzmq bounds
size (MAX_MESSAGE_BYTES), and ``preview`` formats a peer's value for a log line within a bounded
depth and length (``repr`` of a deeply nested value raises RecursionError).
"""

from __future__ import annotations

import reprlib
import struct as _struct
import sys as _sys
from array import array as _array
from hashlib import blake2b as _blake2b
from itertools import chain as _chain
from typing import NamedTuple

import msgpack
import numpy as np

VERSION = 4  # 4: batch tokens seal the responses (``Seal``), ACK, PING nonces

# Status codes on the wire; names are what records and reports use.
OK, UNKNOWN, UNREACHABLE, FAILED, LOST = range(5)
STATUS_NAMES = ("ok", "unknown", "unreachable", "failed", "lost")

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1  # responses are signed 64-bit integers

# Bound on any message a comlab socket accepts (libzmq drops the peer above it).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# A BATCH's limits (README, "Wire format"): a client refuses to build a larger one; the server
# drops a sender above the bytes (its PULL socket's MAXMSGSIZE) and answers a BATCH above the
# task count with a refusing WELCOME before it looks at a key (both bound one message's work).
MAX_BATCH_TASKS = 65_536
MAX_BATCH_BYTES = 8 * 1024 * 1024

# The binary columns' element types (little-endian on every host).
I64 = np.dtype("<i8")
I8 = np.dtype("i1")
ENTRY = np.dtype([("response", "<i8"), ("wait", "<f8")])  # one task of a work item
HEAD_FIELDS = ("batch_id", "attempt", "t_server_in", "t_enqueued", "token", "n")
HEAD = np.dtype([(name, "<i8") for name in HEAD_FIELDS])  # one batch of a WORK / RESULTS
_HEAD_STRUCT_SIZE = HEAD.itemsize

_pack = msgpack.Packer(use_bin_type=True).pack
_unpackb = msgpack.unpackb
_new = tuple.__new__
_NONE = type(None)
TYPES: dict[str, type] = {}  # kind letter -> message type


class ProtocolError(ValueError):
    """A message that is not a comlab message of this version."""


def message(kind: str, *types):
    """Register a NamedTuple as message ``kind``; ``types`` are its fields' allowed types."""
    def register(cls):
        if kind in TYPES:
            raise ValueError(f"message kind {kind!r} used twice")
        if len(types) != len(cls._fields):
            raise ValueError(f"{cls.__name__}: {len(types)} types for {len(cls._fields)} fields")
        cls.KIND = kind
        cls.TYPES = types
        cls.pack = _packer(kind)
        cls.decode = classmethod(lambda c, frame: decode(frame, (c,)))
        TYPES[kind] = cls
        return cls
    return register


def _packer(kind):
    head = (VERSION, kind)

    def pack(self) -> bytes:
        return _pack(head + self)  # a NamedTuple is a tuple: no copy
    return pack


def ids_bytes(ids) -> bytes:
    """Task ids (any int sequence) as the int64 column."""
    return np.asarray(ids, dtype=I64).tobytes()


_HEAD_PACK = _struct.Struct("<6q").pack


def heads_bytes(rows) -> bytes:
    """HEAD records from (batch_id, attempt, t_server_in, t_enqueued, token, n) tuples."""
    return _array("q", _chain.from_iterable(rows)).tobytes()


# -- client -> server (client PUSH, server PULL) ---------------------------------------------
@message("H", int, str, int, bytes)
class Hello(NamedTuple):
    """Ask for WELCOME on reply_url once every idle worker is connected to it and has ``warm``
    threads ready (the batch size; 0: none). A new HELLO on a URL ends the previous run there
    only once that run's client is gone (comlab.system.intake).
    ``secret`` (client and server only; workers never see it) keys the batch tokens."""
    run: int
    reply_url: str
    warm: int
    secret: bytes = b""


@message("B", int, str, int, bytes, list)
class Batch(NamedTuple):
    """A batch: ``task_ids`` the int64 column (one per key), keys "ip:command" strings;
    reply_url "" = the server's default. (The fields that are the same for every batch of a
    run come first: the client packs them once per run, see ``batch_prefix``.)"""
    run: int
    reply_url: str
    batch_id: int
    task_ids: bytes
    keys: list


def batch_prefix(run: int, reply_url: str) -> bytes:
    """The bytes every BATCH of a run starts with: ``Batch(...).pack()`` equals
    ``batch_prefix(run, url) + _pack(batch_id) + _pack(task_ids) + array header + keys``, so a
    client can build a frame from pre-packed keys without a Python object per key."""
    packer = msgpack.Packer(use_bin_type=True)
    return (packer.pack_array_header(2 + len(Batch._fields)) + packer.pack(VERSION)
            + packer.pack(Batch.KIND) + packer.pack(run) + packer.pack(reply_url))


@message("V", int, str, bytes, bytes, int)
class Ack(NamedTuple):
    """The batches whose results the client took since its last ACK (one per pass of its
    loop, not per task): ``accepted`` and ``forged`` (results whose seal did not hold) are
    int64 columns of (batch_id, attempt) pairs; ``tag`` is ``Seal.ack_tag`` of the two (a
    worker knows the run, not its secret: it cannot acknowledge its own batches). Results
    the server answered itself (worker "server") are not acknowledged."""
    run: int
    reply_url: str
    accepted: bytes
    forged: bytes
    tag: int


def pairs(data: bytes, what: str = "ACK") -> list:
    """An ACK column as a list of (batch_id, attempt) lists."""
    if len(data) % 16:
        raise ProtocolError(f"{what}: {len(data)} bytes, not whole (batch_id, attempt) pairs")
    return np.frombuffer(data, I64).reshape(-1, 2).tolist()


@message("E", int, str)
class Bye(NamedTuple):
    """The client is done with ``run`` (every task answered, or it gave up): whatever of that
    run is still queued is dropped, and the server lets go of the client's socket."""
    run: int
    reply_url: str


# -- server -> client (PUSH to reply_url) ----------------------------------------------------
@message("O", int, dict)
class Welcome(NamedTuple):
    """info: server version, workers, ... (flat dict of scalars)."""
    run: int
    info: dict


# -- worker (or server) -> client ------------------------------------------------------------
@message("R", int, str, str, bytes, bytes, bytes, bytes, bytes, bytes, (list, _NONE))
class Results(NamedTuple):
    """The results of one or more batches of a run, in binary columns: ``heads`` one HEAD per
    batch (its ``n`` tasks follow in the task columns, batch after batch); statuses int8 codes;
    responses int64 (meaningful only where the status is OK); errors None or one str-or-None per
    task. worker "server": answered by the server itself (unknown, unreachable, failed after a
    lost worker). The responses column carries, for every task, the response the server gave
    with the batch (what the HEAD's seal covers), even where the status is not OK."""
    run: int
    worker: str
    host: str
    heads: bytes
    task_ids: bytes
    statuses: bytes
    responses: bytes
    t_started: bytes
    t_finished: bytes
    errors: list | None


def results(run: int, worker: str, host: str, heads, task_ids, statuses, responses, t_started,
            t_finished, errors=None) -> Results:
    """A RESULTS from plain sequences (the server's own answers, tests, peers): ``heads`` are
    (batch_id, attempt, t_server_in, t_enqueued, token, n) tuples; a response None is 0."""
    return Results(run, worker, host, heads_bytes(heads), ids_bytes(task_ids),
                   np.asarray(statuses, dtype=I8).tobytes(),
                   np.asarray([0 if r is None else r for r in responses], dtype=I64).tobytes(),
                   ids_bytes(t_started), ids_bytes(t_finished), errors)


# -- server <-> worker (server ROUTER, worker DEALER) -----------------------------------------
@message("Y", str, str, int)
class Ready(NamedTuple):
    """worker -> server, at start and whenever its connection is re-established."""
    name: str
    host: str
    pid: int


@message("D", int, int)
class Done(NamedTuple):
    """worker -> server: the results of every batch up to and including this one are sent;
    also a request for more work."""
    run: int
    batch_id: int


class Work(NamedTuple):
    """One batch as the server keeps it (the ledger's unit), never a message by itself: WORK
    (``Assign``) carries one or more of them. ``task_ids`` is the int64 column, ``entries`` one
    ENTRY (response, wait) per task, ``cost_s`` the strategy's ideal time of the batch (the
    ledger's prefetch rule and overdue deadline), ``n`` its number of tasks."""
    run: int
    batch_id: int
    reply_url: str
    strategy: str
    t_server_in: int
    t_enqueued: int
    attempt: int
    task_ids: bytes
    entries: bytes
    token: int = 0
    cost_s: float = 0.0
    n: int = 0

    def head(self) -> tuple:
        return (self.batch_id, self.attempt, self.t_server_in, self.t_enqueued, self.token,
                self.n)


def work(run: int, batch_id: int, reply_url: str, strategy: str, task_ids, responses, waits, *,
         attempt: int = 0, t_server_in: int = 0, t_enqueued: int = 0, token: int = 0,
         cost_s: float | None = None) -> Work:
    """A Work from plain sequences (tests, tools); cost_s defaults to the sum of the waits."""
    entries = np.empty(len(task_ids), ENTRY)
    entries["response"], entries["wait"] = responses, waits
    return Work(run, batch_id, reply_url, strategy, t_server_in, t_enqueued, attempt,
                ids_bytes(task_ids), entries.tobytes(), token,
                float(sum(waits)) if cost_s is None else cost_s, len(task_ids))


@message("W", int, str, str, bytes, bytes, bytes)
class Assign(NamedTuple):
    """server -> worker: run these batches (one HEAD each, their tasks' ids and ENTRY records
    batch after batch) in order with ``strategy``, push their results to reply_url, echoing each
    batch's HEAD (its token proves the RESULTS answers a batch the server gave out)."""
    run: int
    reply_url: str
    strategy: str
    heads: bytes
    task_ids: bytes
    entries: bytes


def assign(works) -> bytes:
    """One WORK frame for batches of one run, reply URL and strategy (the caller groups)."""
    w0 = works[0]
    if len(works) == 1:
        return _pack((VERSION, "W", w0.run, w0.reply_url, w0.strategy,
                      _HEAD_PACK(w0.batch_id, w0.attempt, w0.t_server_in, w0.t_enqueued,
                                 w0.token, w0.n), w0.task_ids, w0.entries))
    return _pack((VERSION, "W", w0.run, w0.reply_url, w0.strategy,
                  heads_bytes(w.head() for w in works),
                  b"".join([w.task_ids for w in works]), b"".join([w.entries for w in works])))


@message("C", str, str, int)
class Connect(NamedTuple):
    """server -> worker: connect to a client and warm the strategy; answer JOINED."""
    reply_url: str
    strategy: str
    warm: int


@message("J", str)
class Joined(NamedTuple):
    """worker -> server: done with CONNECT."""
    reply_url: str


@message("F", str, int)
class Forget(NamedTuple):
    """server -> worker: that client's run is over (done or gone): skip its batches still
    queued, close the socket to it."""
    reply_url: str
    run: int


@message("S")
class Stop(NamedTuple):
    """server -> worker: exit."""


@message("P", (int, _NONE))
class Ping(NamedTuple):
    """server -> worker. nonce None: a probe, ignored (with ROUTER_MANDATORY the send itself
    fails, EHOSTUNREACH, when the worker's connection is gone); else a random number the
    server drew for this clock sample: answer PONG (clock offset estimation)."""
    nonce: int | None


@message("Q", int, int)
class Pong(NamedTuple):
    """worker -> server: the PING's nonce echoed, t_worker the worker's monotonic_ns on
    receipt. The server takes it only from the worker it sent that nonce to, once."""
    nonce: int
    t_worker: int


# -- control (lab -> server, REQ/REP over the control URL) -----------------------------------
@message("K", str, list)
class Control(NamedTuple):
    """A request: "ping", "strategy" [name], "stats", "clock", "clock-workers" [k],
    "worker-clocks"; answered by a ControlReply of the same op, or op "error"."""
    op: str
    args: list


@message("A", str, (dict, list, str, int, _NONE))
class ControlReply(NamedTuple):
    """ping -> server info; strategy -> the name; stats -> counters; clock -> the server's
    monotonic_ns; clock-workers -> the remote hosts sampled; worker-clocks ->
    {host: {"offset_ns", "rtt_ns", "samples"}} (offset = that host's clock - the server's);
    error -> the reason."""
    op: str
    payload: object


class Seal:
    """A run's batch tokens, keyed by its secret (set up once per run, one hash per batch).

    ``token(batch_id, ids, responses)``: bits 0-30 ``possession(batch_id)``, the proof that a
    RESULTS answers a batch the server gave out (a worker learns it only for its own batches);
    bits 31-62 ``tag`` over the batch's task id and response columns as the server expects
    them back. The client checks both per batch: a wrong possession part is a stranger's
    garbage (dropped), a wrong tag is the holder's forgery (its tasks fail, the worker named).
    Without a secret (a run that never said HELLO) every token is 0 and nothing is checked."""

    POSSESSION = (1 << 31) - 1

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        if secret:
            self._keyed = _blake2b(key=secret[:64], digest_size=4, person=b"comlab-batch")
            self._tagged = _blake2b(key=secret[:64], digest_size=4, person=b"comlab-results")

    def possession(self, batch_id: int) -> int:
        if not self.secret:
            return 0
        h = self._keyed.copy()
        h.update(batch_id.to_bytes(8, "little", signed=True))
        return int.from_bytes(h.digest(), "little") & self.POSSESSION

    def tag(self, batch_id: int, ids, responses) -> int:
        """32 bits over (batch id, task ids, responses): ``ids`` and ``responses`` the int64
        columns' bytes (or buffers) exactly as on the wire."""
        h = self._tagged.copy()
        h.update(batch_id.to_bytes(8, "little", signed=True))
        h.update(ids)
        h.update(responses)
        return int.from_bytes(h.digest(), "little")

    def token(self, batch_id: int, ids, responses) -> int:
        if not self.secret:
            return 0
        return self.possession(batch_id) | (self.tag(batch_id, ids, responses) << 31)

    def ack_tag(self, accepted: bytes, forged: bytes) -> int:
        """63 bits over an ACK's two columns (0 without a secret)."""
        if not self.secret:
            return 0
        h = _blake2b(key=self.secret[:64], digest_size=8, person=b"comlab-ack")
        h.update(len(accepted).to_bytes(8, "little"))
        h.update(accepted)
        h.update(forged)
        return int.from_bytes(h.digest(), "little") >> 1


def batch_token(secret: bytes, batch_id: int) -> int:
    """The possession part of a batch's token (0 without a secret): a RESULTS that lacks it
    does not come from the batch's holder."""
    return Seal(secret).possession(batch_id)


STOP_FRAME = Stop().pack()
PROBE_FRAME = Ping(None).pack()


# -- decoding ---------------------------------------------------------------------------------
def decode(frame: bytes, allowed: tuple | None = None):
    """The message in ``frame``, checked for version, kind (one of ``allowed`` types, if given),
    field count and field types; ProtocolError for anything else, never another exception."""
    try:
        msg = _unpackb(frame, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several types for garbage
        raise ProtocolError(f"undecodable message ({len(frame)} bytes): "
                            f"{type(exc).__name__}") from None
    if type(msg) is not list or len(msg) < 2:
        raise ProtocolError(f"not a comlab message: {preview(msg)}")
    if type(msg[0]) is not int or msg[0] != VERSION:  # 3.0 == 3 and True == 1 in Python
        raise ProtocolError(f"protocol version {preview(msg[0])}, expected {VERSION}")
    cls = TYPES.get(msg[1]) if type(msg[1]) is str else None
    if cls is None or (allowed is not None and cls not in allowed):
        raise ProtocolError(f"unexpected message type {preview(msg[1])}")
    fields = msg[2:]
    if len(fields) != len(cls.TYPES) or not all(map(isinstance, fields, cls.TYPES)):
        raise ProtocolError(f"malformed {cls.__name__}: {preview(fields)}")
    return _new(cls, fields)  # NamedTuple._make minus its length check, done above


_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 6


def preview(obj) -> str:
    """A peer's value for a log line: bounded in depth and length, never raises."""
    try:
        return _repr.repr(obj)
    except Exception:  # a value can defeat even reprlib (a hostile __repr__ is not
        return f"<{type(obj).__name__}>"  # possible from msgpack, but cheap to be sure)


def column(data: bytes, dtype: np.dtype, n: int, what: str) -> np.ndarray:
    """A binary column of exactly ``n`` elements of ``dtype`` (read-only, no copy)."""
    if len(data) != n * dtype.itemsize:
        raise ProtocolError(f"{what}: {len(data)} bytes for {n} values of {dtype.itemsize}")
    return np.frombuffer(data, dtype)


def read_heads(data: bytes, what: str) -> np.ndarray:
    """The HEAD records of a WORK or RESULTS; each batch's task count must be >= 0."""
    if len(data) % _HEAD_STRUCT_SIZE:
        raise ProtocolError(f"{what}: {len(data)} bytes of batch heads, not a multiple of "
                            f"{_HEAD_STRUCT_SIZE}")
    heads = np.frombuffer(data, HEAD)
    if len(heads) and heads["n"].min() < 0:
        raise ProtocolError(f"{what}: a batch with a negative task count")
    return heads


def check_batch(b: Batch) -> Batch:
    """A BATCH's columns agree: one int64 task id per key."""
    if len(b.task_ids) != 8 * len(b.keys):
        raise ProtocolError(f"BATCH with {len(b.task_ids)} bytes of task ids for "
                            f"{len(b.keys)} keys")
    return b


_HEAD_UNPACK = _struct.Struct("<6q").unpack
_LITTLE = _sys.byteorder == "little"
_INF = float("inf")


def check_one_batch(a: Assign) -> tuple | None:
    """A WORK of one batch checked without numpy: its HEAD as a tuple and its waits (a
    float64 view of the ENTRY records); None when it is not a single batch (``check_assign``
    then). A worker wakes up for each batch-1 WORK with cold caches, where a handful of numpy
    calls cost ~40 us (measured), several times the pure-Python checks."""
    if len(a.heads) != _HEAD_STRUCT_SIZE or not _LITTLE:
        return None
    head = _HEAD_UNPACK(a.heads)
    n = head[5]
    if n < 0 or len(a.task_ids) != 8 * n or len(a.entries) != 16 * n:
        raise ProtocolError(f"WORK of one batch of {n} tasks with {len(a.task_ids)} bytes of "
                            f"ids and {len(a.entries)} bytes of entries")
    waits = memoryview(a.entries).cast("d")[1::2]
    for w in waits:
        if not 0.0 <= w < _INF:  # NaN fails too
            raise ProtocolError("WORK with waits that are not finite and >= 0")
    return head, waits


def check_one_result(r: Results, n_tasks: int, batch_size: int) -> tuple | None:
    """A RESULTS of one batch checked without numpy, as ``check_results`` would: (batch_id,
    token, task ids, attempt); None when it is not a single batch (``check_results`` then). At batch 1
    the client takes one such message per task, and the vectorised checks cost ~12 us of numpy
    calls on one-element arrays (measured), several times these."""
    if len(r.heads) != _HEAD_STRUCT_SIZE or not _LITTLE:
        return None
    head = _HEAD_UNPACK(r.heads)
    n = head[5]
    if n < 0:
        raise ProtocolError("RESULTS: a batch with a negative task count")
    for data, width, what in ((r.task_ids, 8, "task ids"), (r.statuses, 1, "statuses"),
                              (r.responses, 8, "responses"), (r.t_started, 8, "t_started"),
                              (r.t_finished, 8, "t_finished")):
        if len(data) != n * width:
            raise ProtocolError(f"RESULTS {what}: {len(data)} bytes for {n} values of {width}")
    if r.errors is not None and len(r.errors) != n:
        raise ProtocolError(f"RESULTS with {len(r.errors)} errors for {n} tasks")
    ids = memoryview(r.task_ids).cast("q")
    if n:
        lo, hi = min(ids), max(ids)
        if not (0 <= lo and hi < n_tasks):
            raise ProtocolError(f"RESULTS for task ids outside 0..{n_tasks - 1}")
        if lo // batch_size != head[0] or hi // batch_size != head[0]:
            raise ProtocolError("RESULTS of a batch for tasks of other batches")
        if not (OK <= min(r.statuses) and max(r.statuses) < LOST):
            raise ProtocolError(f"RESULTS with status codes outside {OK}..{LOST - 1}")
        if r.errors is not None and not set(map(type, r.errors)) <= {str, _NONE}:
            raise ProtocolError("RESULTS with errors that are not strings")
    return head[0], head[4], ids, head[1]


def entry_responses(entries: bytes) -> bytes:
    """The int64 response column of ENTRY records."""
    if _LITTLE:
        return memoryview(entries).cast("q")[0::2].tobytes()
    return np.frombuffer(entries, ENTRY)["response"].astype(I64).tobytes()


def entry_lists(entries: bytes) -> tuple[list, list]:
    """(responses, waits) of ENTRY records as lists (what a strategy runs)."""
    if _LITTLE:
        view = memoryview(entries)
        return view.cast("q")[0::2].tolist(), view.cast("d")[1::2].tolist()
    e = np.frombuffer(entries, ENTRY)
    return e["response"].tolist(), e["wait"].tolist()


def check_assign(a: Assign) -> tuple[np.ndarray, np.ndarray]:
    """A WORK's heads and its ENTRY records, checked for agreeing lengths and finite waits."""
    heads = read_heads(a.heads, "WORK")
    n = int(heads["n"].sum())
    column(a.task_ids, I64, n, "WORK task ids")
    entries = column(a.entries, ENTRY, n, "WORK entries")
    waits = entries["wait"]
    if n and not (np.isfinite(waits).all() and waits.min() >= 0):
        raise ProtocolError("WORK with waits that are not finite and >= 0")
    return heads, entries


class Checked(NamedTuple):
    """A RESULTS a client accepted the shape of: its heads and per-task columns."""
    heads: np.ndarray
    task_ids: np.ndarray
    statuses: np.ndarray


def check_results(r: Results, n_tasks: int, batch_size: int | None = None) -> Checked:
    """Validate a RESULTS a client received for a run of ``n_tasks``; its checked columns.
    With ``batch_size``, every task id must belong to the batch its HEAD names.

    Checks that every column has one element per task the heads announce, every task id is one
    the client sent, every status a final one (never LOST, which only the client assigns) and
    the errors strings or None, so a stray or forged message is dropped as garbage instead of
    breaking the client's per-task columns later. Everything but the errors runs vectorised.
    """
    heads = read_heads(r.heads, "RESULTS")
    counts = heads["n"]
    n = int(counts.sum())
    ids = column(r.task_ids, I64, n, "RESULTS task ids")
    statuses = column(r.statuses, I8, n, "RESULTS statuses")
    column(r.responses, I64, n, "RESULTS responses")
    column(r.t_started, I64, n, "RESULTS t_started")
    column(r.t_finished, I64, n, "RESULTS t_finished")
    if r.errors is not None and len(r.errors) != n:
        raise ProtocolError(f"RESULTS with {len(r.errors)} errors for {n} tasks")
    if not n:
        return Checked(heads, ids, statuses)
    if not (0 <= ids.min() and ids.max() < n_tasks):
        raise ProtocolError(f"RESULTS for task ids outside 0..{n_tasks - 1}")
    if batch_size is not None:
        of_batch = np.repeat(heads["batch_id"], counts) if len(heads) > 1 else heads["batch_id"]
        if not np.array_equal(ids // batch_size, np.broadcast_to(of_batch, ids.shape)):
            raise ProtocolError("RESULTS of a batch for tasks of other batches")
    if not (OK <= statuses.min() and statuses.max() < LOST):
        raise ProtocolError(f"RESULTS with status codes outside {OK}..{LOST - 1}")
    if r.errors is not None and not set(map(type, r.errors)) <= {str, _NONE}:
        raise ProtocolError("RESULTS with errors that are not strings")
    return Checked(heads, ids, statuses)


class Keys:
    """A run's task keys as one msgpack blob (each key a packed str, one after the other) and
    the offset of each: a BATCH's keys are then one slice of bytes, and a million keys cost
    their bytes, not a million Python strings (what keeps a client's memory small)."""

    __slots__ = ("blob", "offsets")

    def __init__(self, blob: bytes, offsets: np.ndarray) -> None:
        if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(blob):
            raise ValueError("key offsets do not cover the key blob")
        self.blob, self.offsets = blob, offsets

    @classmethod
    def of(cls, keys) -> "Keys":
        packed = list(map(_pack, keys))
        offsets = np.zeros(len(packed) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, packed), np.int64, len(packed)), out=offsets[1:])
        return cls(b"".join(packed), offsets)

    @classmethod
    def from_sizes(cls, blob: bytes, sizes) -> "Keys":
        offsets = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(np.asarray(sizes, np.int64), out=offsets[1:])
        return cls(blob, offsets)

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets).astype(np.uint32)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def packed(self, lo: int, hi: int) -> bytes:
        """Keys lo..hi-1 as the body of a msgpack array."""
        return self.blob[self.offsets[lo]:self.offsets[hi]]

    def tolist(self) -> list:
        return _unpackb(_array_header(len(self)) + self.blob, raw=False)


def _array_header(n: int) -> bytes:
    return msgpack.Packer().pack_array_header(n)


class BatchFrames:
    """Builds BATCH frames of one run from ``Keys`` without a Python object per task: equal,
    byte for byte, to ``Batch(run, reply_url, b, ids, keys[lo:hi]).pack()``."""

    def __init__(self, run: int, reply_url: str, keys: Keys) -> None:
        self.prefix = batch_prefix(run, reply_url)
        self.keys = keys
        self.ids = np.arange(len(keys), dtype=I64).tobytes()
        self.headers: dict[int, bytes] = {}

    def frame(self, batch_id: int, lo: int, hi: int) -> bytes:
        header = self.headers.get(hi - lo)
        if header is None:
            header = self.headers[hi - lo] = _array_header(hi - lo)
        return b"".join((self.prefix, _pack(batch_id), _pack(self.ids[8 * lo:8 * hi]), header,
                         self.keys.packed(lo, hi)))
