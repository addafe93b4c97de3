"""Every message comlab puts on a socket, in one place: a named type per message.

Each message is a NamedTuple; ``msg.pack()`` gives its frame and ``decode(frame)`` (or
``Type.decode(frame)``) gives it back, checked: builders and readers use field names only, and
a field added to a type is added everywhere at once. On the wire a message is still one frame
holding a msgpack array ``[VERSION, KIND, *fields]`` (never pickle): the named types cost
nothing there. Lists inside are columnar (one list per field) because msgpack packs and unpacks
a list of ints far faster than a list of small lists, and the hot paths never build per-task
objects. Encoding measured with ``python -m bench.wire`` (one PUSH/PULL hop over tcp loopback,
encode + decode on each end): msgpack on par with orjson, 3x json; orjson cannot carry bytes and
would add a dependency.

All stamps are integers from ``time.monotonic_ns()`` (CLOCK_MONOTONIC, shared by every process on
a Linux host). ``run`` is the client session's identity (a random 63-bit int drawn per client
run): every batch, work item and result carries it, so a result of an earlier run on the same
result URL can never be taken for one of this run's, and a server can drop a departed client's
queued work.

A peer's message can cost that peer its message, nothing else: ``decode`` raises only
ProtocolError (shape, field types, version), msgpack bounds nesting (about 1,000 deep) and
libzmq bounds size (MAX_MESSAGE_BYTES), and ``preview`` formats a peer's value for a log line
within a bounded depth and length (``repr`` of a deeply nested value raises RecursionError).
"""

from __future__ import annotations

import reprlib
from array import array as _array
from hashlib import blake2b as _blake2b
from typing import NamedTuple

import msgpack

VERSION = 2

# Status codes on the wire; names are what records and reports use.
OK, UNKNOWN, UNREACHABLE, FAILED, LOST = range(5)
STATUS_NAMES = ("ok", "unknown", "unreachable", "failed", "lost")

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1  # responses are 64-bit integers end to end

# Bound on any message a comlab socket accepts (libzmq drops the peer above it).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

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


# -- client -> server (client PUSH, server PULL) ---------------------------------------------
@message("H", int, str, int, bytes)
class Hello(NamedTuple):
    """Ask for WELCOME on reply_url once every idle worker is connected to it and has ``warm``
    threads ready (the batch size; 0: none). A new HELLO on a URL ends the previous run there.
    ``secret`` (client and server only; workers never see it) keys the batch tokens."""
    run: int
    reply_url: str
    warm: int
    secret: bytes = b""


@message("B", int, int, str, int, list, list)
class Batch(NamedTuple):
    """keys are "ip:command" strings, task_ids ints; reply_url "" = the server's default."""
    run: int
    batch_id: int
    reply_url: str
    t_sent: int
    task_ids: list
    keys: list


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
@message("R", int, int, str, str, int, int, int, int, list, list, list, list, list,
         (list, _NONE), int)
class Results(NamedTuple):
    """Per-task columns of one batch; statuses are STATUS codes; errors None or one
    str-or-None per task. worker "server": answered by the server itself (unknown,
    unreachable, failed after a lost worker, refused)."""
    run: int
    batch_id: int
    worker: str
    host: str
    attempt: int
    t_sent: int
    t_server_in: int
    t_enqueued: int
    task_ids: list
    statuses: list
    responses: list
    t_started: list
    t_finished: list
    errors: list | None
    token: int = 0


# -- server <-> worker (server ROUTER, worker DEALER) -----------------------------------------
@message("Y", str, str, int)
class Ready(NamedTuple):
    """worker -> server, at start and whenever its connection is re-established."""
    name: str
    host: str
    pid: int


@message("D", int, int)
class Done(NamedTuple):
    """worker -> server: that batch's results are sent; also a request for more work."""
    run: int
    batch_id: int


@message("W", int, int, str, str, int, int, int, int, (list, tuple), (list, tuple),
         (list, tuple), int)
class Work(NamedTuple):
    """server -> worker: run these tasks with ``strategy``, push results to reply_url; echo
    ``token`` in the RESULTS."""
    run: int
    batch_id: int
    reply_url: str
    strategy: str
    t_sent: int
    t_server_in: int
    t_enqueued: int
    attempt: int
    task_ids: list
    responses: list
    waits: list
    token: int = 0


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
    """server -> worker. t None: a probe, ignored (with ROUTER_MANDATORY the send itself fails,
    EHOSTUNREACH, when the worker's connection is gone); t = the server's monotonic_ns: answer
    PONG (clock offset estimation)."""
    t: int | None


@message("Q", int, int)
class Pong(NamedTuple):
    """worker -> server: t echoed, t_worker the worker's monotonic_ns on receipt."""
    t: int
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


def batch_token(secret: bytes, batch_id: int) -> int:
    """The proof that a RESULTS answers a batch the server gave out: a keyed hash of the batch
    id under the client's run secret (63 bits; 0 without a secret). A worker learns the token of
    the batches it is given, never the secret, so it cannot answer for another batch's tasks."""
    if not secret:
        return 0
    digest = _blake2b(batch_id.to_bytes(8, "little", signed=True), key=secret[:64],
                      digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


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
    if msg[0] != VERSION:
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


def check_batch(b: Batch) -> Batch:
    """A BATCH's columns agree: one key per task id."""
    if len(b.task_ids) != len(b.keys):
        raise ProtocolError(f"BATCH with {len(b.task_ids)} task ids and {len(b.keys)} keys")
    return b


def check_results(r: Results, n_tasks: int, batch_size: int | None = None) -> list:
    """Validate a RESULTS a client received for a run of ``n_tasks``; return its task ids.
    With ``batch_size``, every task id must belong to the batch the message names.

    Checks equal column lengths, that every task id is an int the client sent, every status a
    final one (never LOST, which only the client assigns), every stamp and response a 64-bit
    int, so a stray or forged message is dropped as garbage instead of breaking the client's
    per-task columns later. Per-item checks run at C speed: array('q', column) refuses a
    non-int or a value beyond 64 bits.
    """
    ids = r.task_ids
    n = len(ids)
    if (len(r.statuses) != n or len(r.responses) != n or len(r.t_started) != n
            or len(r.t_finished) != n or (r.errors is not None and len(r.errors) != n)):
        raise ProtocolError(f"RESULTS with columns of unequal length ({n} task ids)")
    if not n:
        return ids
    try:
        id_col, status_col = _array("q", ids), _array("q", r.statuses)
        _array("q", r.t_started), _array("q", r.t_finished)
        _array("q", r.responses if None not in r.responses else
               [x for x in r.responses if x is not None])
    except (TypeError, OverflowError):
        raise ProtocolError("RESULTS with ids, statuses, stamps or responses that are not "
                            "64-bit integers") from None
    if not (0 <= min(id_col) and max(id_col) < n_tasks):
        raise ProtocolError(f"RESULTS for task ids outside 0..{n_tasks - 1}")
    if batch_size is not None and not (r.batch_id * batch_size <= min(id_col)
                                       and max(id_col) < (r.batch_id + 1) * batch_size):
        raise ProtocolError(f"RESULTS of batch {r.batch_id} for tasks of other batches")
    if not (OK <= min(status_col) and max(status_col) < LOST):
        raise ProtocolError(f"RESULTS with status codes outside {OK}..{LOST - 1}")
    if r.errors is not None and not set(map(type, r.errors)) <= {str, _NONE}:
        raise ProtocolError("RESULTS with errors that are not strings")
    return ids
