"""The client: sends batches of tasks to the server and collects one result per task.

One thread does both: it PUSHes batches whenever the socket takes them (no sleeps between sends;
ZeroMQ's high-water mark is the only brake) and drains results from its bound PULL socket in the
same poll, until every task is accounted for or the deadline passes. Before the clock starts it
says HELLO and waits for the server's WELCOME on its own PULL socket, which proves a server is
there and that the return path works, and lets the server tell its workers to connect to us.

With ``rate`` (tasks per second) the client is open-loop: batch b is due at t0 + b * size / rate
and its latency is measured from that intended time, so a stall cannot hide (coordinated
omission); it sleeps on a timerfd (comlab.system.timer) until just before a send is due. A
``schedule`` (each batch's send offset, drawn before the clock starts: comlab.arrivals) replaces
the even spacing; ``task_offsets`` (a replayed trace) gives each task its own intended time. The hot
loop only checks results (vectorised, on their binary columns) and keeps the accepted frames in a
ResultLog, streamed to a file when given one; per-task columns are built afterwards, in chunks.
BATCH frames are assembled from pre-packed keys (protocol.BatchFrames), not built per task.
"""

from __future__ import annotations

import gc
import secrets
import struct
import time
from array import array as _array
from dataclasses import dataclass, field

import numpy as np
import zmq

from . import protocol as P
from .role import Role
from .timer import Timer, precise_sleeps

now = time.monotonic_ns


def check_batch_limits(keys: P.Keys, batch_size: int) -> None:
    """ValueError when a batch of this run would be above the wire's limits (protocol
    MAX_BATCH_TASKS, MAX_BATCH_BYTES): the server would refuse it."""
    n = len(keys)
    if min(batch_size, n) > P.MAX_BATCH_TASKS:
        raise ValueError(f"batch size {batch_size} is above the limit of {P.MAX_BATCH_TASKS} "
                         "tasks per batch")
    lo = np.arange(0, n, batch_size)
    hi = np.minimum(lo + batch_size, n)
    size = keys.offsets[hi] - keys.offsets[lo] + 9 * (hi - lo) + 256  # + ids, head, URL
    if size.max() > P.MAX_BATCH_BYTES:
        b = int(size.argmax())
        raise ValueError(f"batch {b} would be {int(size[b])} bytes, above the limit of "
                         f"{P.MAX_BATCH_BYTES} bytes per batch: use a smaller batch size")


def _offsets(values, n: int, what: str) -> np.ndarray | None:
    """Send offsets (s) as float64: ``n`` of them, finite, >= 0, non-decreasing."""
    if values is None:
        return None
    out = np.asarray(values, np.float64)
    if out.shape != (n,):
        raise ValueError(f"{what}: {out.size} values for {n}")
    if n and not (np.isfinite(out).all() and out[0] >= 0 and (np.diff(out) >= 0).all()):
        raise ValueError(f"{what}: expected finite offsets >= 0 in time order")
    return out


class NoServer(RuntimeError):
    """No server answered the handshake before the deadline."""


class ResultLog:
    """The RESULTS frames a client accepted, with their t_received, in arrival order.

    With a ``path`` the frames go to that file in chunks of about ``spill_bytes`` as they
    arrive, so a client's memory does not grow with the run (a million tasks are ~35 MB of
    frames); without one they stay in memory. Each record is (frame length u32, t_received
    i64) then the frame as it came off the socket, a versioned comlab message."""

    RECORD = struct.Struct("<Iq")

    def __init__(self, path: str | None = None, spill_bytes: int = 8 << 20) -> None:
        self.path, self.spill_bytes = path, spill_bytes
        self.frames: list = []
        self.stamps = _array("q")
        self.size = 0
        self.count = 0
        self.spilled = 0

    def append(self, frame: bytes, t_received: int) -> None:
        self.frames.append(frame)
        self.stamps.append(t_received)
        self.size += len(frame)
        self.count += 1
        if self.path is not None and self.size >= self.spill_bytes:
            self.spill()

    def spill(self) -> None:
        """Write what is held to the file (the whole log is there afterwards)."""
        if self.path is None:
            return
        record = self.RECORD.pack
        with open(self.path, "ab") as f:
            for frame, t in zip(self.frames, self.stamps):
                f.write(record(len(frame), t))
                f.write(frame)
        self.spilled += len(self.frames)
        self.frames, self.stamps, self.size = [], _array("q"), 0

    def __iter__(self):
        if self.path is not None and self.spilled:
            size = self.RECORD.size
            with open(self.path, "rb") as f:
                for _ in range(self.spilled):
                    head = f.read(size)
                    if len(head) < size:
                        raise ValueError(f"{self.path}: result log ends early")
                    length, t = self.RECORD.unpack(head)
                    frame = f.read(length)
                    if len(frame) < length:
                        raise ValueError(f"{self.path}: result log ends early")
                    yield frame, t
        yield from zip(self.frames, self.stamps)

    @classmethod
    def on_disk(cls, path: str, count: int) -> "ResultLog":
        log = cls(path)
        log.count = log.spilled = count
        return log


@dataclass
class ClientRun:
    """What one client run saw: the accepted results (a ResultLog) plus the stamps only the
    client has; per-task columns are built from them after the run, in chunks."""

    n_tasks: int
    batch_size: int
    server_url: str
    log: ResultLog = field(default_factory=ResultLog)
    t_start: int = 0                 # clock start (after the handshake)
    t_sent: _array = field(default_factory=lambda: _array("q"))   # per batch
    t_intended: np.ndarray | None = None                          # per batch, open-loop only
    t_task_intended: np.ndarray | None = None  # per task, when the schedule names each (trace)
    accepted: int = 0   # distinct tasks answered (the invariant's count)
    duplicates: int = 0  # messages that answered no task not answered before
    garbage: int = 0     # messages that were not a valid RESULTS for this run's tasks
    forged: int = 0      # RESULTS from a batch's holder whose seal did not hold: tasks failed
    stale: int = 0       # valid results of another run (an earlier client on this URL)
    run_id: int = 0
    server_info: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """Everything but the results themselves, as plain data (the log must be on disk)."""
        return {"n_tasks": self.n_tasks, "batch_size": self.batch_size,
                "server_url": self.server_url, "log": self.log.path,
                "log_count": self.log.count, "t_start": self.t_start,
                "t_sent": np.frombuffer(self.t_sent, np.int64) if self.t_sent else
                np.zeros(0, np.int64), "t_intended": self.t_intended,
                "t_task_intended": self.t_task_intended,
                "accepted": self.accepted, "duplicates": self.duplicates,
                "garbage": self.garbage, "forged": self.forged, "stale": self.stale,
                "run_id": self.run_id,
                "server_info": self.server_info}

    @classmethod
    def from_description(cls, d: dict) -> "ClientRun":
        run = cls(d["n_tasks"], d["batch_size"], d["server_url"],
                  log=ResultLog.on_disk(d["log"], d["log_count"]) if d["log"] else ResultLog())
        run.t_start, run.t_intended = d["t_start"], d["t_intended"]
        run.t_task_intended = d.get("t_task_intended")
        run.t_sent = _array("q", np.asarray(d["t_sent"], np.int64).tobytes())
        for name in ("accepted", "duplicates", "garbage", "stale", "run_id", "server_info"):
            setattr(run, name, d[name])
        run.forged = d.get("forged", 0)
        return run

    def chunks(self, max_tasks: int = 65536):
        """The accepted results as column chunks (one row per task answered, the first answer
        of a task wins: a retried batch may answer twice), in arrival order."""
        placed = np.zeros(self.n_tasks, np.uint8)
        parts, size = [], 0
        for frame, t in self.log:
            msg = P.Results.decode(frame)
            parts.append((msg, t))
            size += len(msg.task_ids) // 8
            if size >= max_tasks:
                yield _chunk(parts, placed)
                parts, size = [], 0
        if parts:
            yield _chunk(parts, placed)

    def columns(self) -> dict:
        """Per-task columns (index = task id); a task with no result keeps status LOST."""
        n = self.n_tasks
        missing = np.full(n, -1, dtype=np.int64)
        cols = {
            "task_id": np.arange(n, dtype=np.int64),
            "batch_id": np.arange(n, dtype=np.int64) // self.batch_size,
            "status": np.full(n, P.LOST, dtype=np.int8),
            "response": np.zeros(n, dtype=np.int64),
            "has_response": np.zeros(n, dtype=bool),
            "attempt": np.zeros(n, dtype=np.int8),
            "t_server_in": missing.copy(), "t_enqueued": missing.copy(),
            "t_started": missing.copy(), "t_finished": missing.copy(),
            "t_received": missing.copy(),
            "worker": np.full(n, None, dtype=object), "host": np.full(n, None, dtype=object),
            "error": np.full(n, None, dtype=object),
        }
        # Per-batch stamps indexed by each task's batch: O(tasks) whatever the batch size.
        batch = cols["batch_id"]
        sent = np.frombuffer(self.t_sent, np.int64) if self.t_sent else np.zeros(0, np.int64)
        cols["t_sent"] = np.full(n, -1, dtype=np.int64)
        has = batch < len(sent)
        cols["t_sent"][has] = sent[batch[has]]
        if self.t_task_intended is not None:
            cols["t_intended"] = np.asarray(self.t_task_intended, np.int64)
        elif self.t_intended is not None:
            cols["t_intended"] = np.asarray(self.t_intended, np.int64)[batch]
        for chunk in self.chunks():
            idx = chunk.pop("task_id")
            for name, values in chunk.items():
                cols[name][idx] = values
        return cols

    def summary(self) -> dict:
        """The figures the command line prints: counts per status, sum, elapsed."""
        cols = self.columns()
        counts = np.bincount(cols["status"], minlength=len(P.STATUS_NAMES))
        ok = cols["status"] == P.OK
        received = cols["t_received"][cols["t_received"] >= 0]
        first = min(self.t_sent) if self.t_sent else 0
        elapsed = (received.max() - first) / 1e9 if len(received) else float("nan")
        return {"tasks": self.n_tasks, **{name: int(c) for name, c in
                                          zip(P.STATUS_NAMES, counts)},
                "sum": int(cols["response"][ok].sum()), "elapsed_s": round(float(elapsed), 6),
                "duplicates": self.duplicates, "garbage": self.garbage, "stale": self.stale,
                "forged": self.forged}


_PAIR = struct.Struct("<qq")  # an ACK's (batch_id, attempt)
_MASK = P.Seal.POSSESSION
_RESULTS = (P.Results,)
_decode, _pack_pair = P.decode, _PAIR.pack
ACK_EVERY_NS = 50_000_000  # ACKs are late by this much at most (the server waits seconds)


def _pairs(heads: np.ndarray) -> bytes:
    return np.stack([heads["batch_id"], heads["attempt"]], 1).astype(P.I64).tobytes()


def _sealed(msg: "P.Results", heads: np.ndarray, tag) -> bool:
    """Does every batch of a RESULTS carry the tag of its task ids and responses?"""
    ids, responses = memoryview(msg.task_ids), memoryview(msg.responses)
    lo = 0
    for b, token, k in zip(heads["batch_id"].tolist(), heads["token"].tolist(),
                           heads["n"].tolist()):
        if token >> 31 != tag(b, ids[8 * lo:8 * (lo + k)], responses[8 * lo:8 * (lo + k)]):
            return False
        lo += k
    return True


def _forged(msg: "P.Results", t_received: int) -> bytes:
    """The record of a RESULTS whose seal did not hold: every task failed, the worker named
    (as it named itself; the server knows which one held the batch and quarantines it)."""
    n = len(msg.task_ids) // 8
    stamps = P.ids_bytes([t_received] * n)
    why = (f"worker {P.preview(msg.worker)} returned results that fail their seal "
           "(forged or altered)")
    return msg._replace(statuses=bytes([P.FAILED]) * n, t_started=stamps, t_finished=stamps,
                        errors=[why] * n).pack()


def _chunk(parts: list, placed: np.ndarray) -> dict:
    """Columns of accepted RESULTS messages, rows of tasks not placed before (marked now)."""
    msgs = [m for m, _ in parts]
    heads = np.frombuffer(b"".join([m.heads for m in msgs]), P.HEAD)
    per_msg = np.fromiter((len(m.task_ids) // 8 for m in msgs), np.int64, len(msgs))

    def col(name, dtype):
        return np.frombuffer(b"".join([getattr(m, name) for m in msgs]), dtype)

    ids = col("task_ids", P.I64)
    # The first answer of each task, in arrival order; ids outside the run are skipped (the
    # records' invariant check then reports them), though the client never accepts one.
    inside = np.flatnonzero((ids >= 0) & (ids < len(placed)))
    _, first = np.unique(ids[inside], return_index=True)
    take = inside[first]
    take = take[placed[ids[take]] == 0]
    take.sort()
    idx = ids[take]
    placed[idx] = 1
    counts = heads["n"]
    statuses = col("statuses", P.I8)[take]
    out = {"task_id": idx, "status": statuses,
           "response": col("responses", P.I64)[take], "has_response": statuses == P.OK,
           "t_started": col("t_started", P.I64)[take],
           "t_finished": col("t_finished", P.I64)[take],
           "attempt": np.repeat(heads["attempt"], counts)[take].astype(np.int8),
           "t_server_in": np.repeat(heads["t_server_in"], counts)[take],
           "t_enqueued": np.repeat(heads["t_enqueued"], counts)[take],
           "t_received": np.repeat(np.fromiter((t for _, t in parts), np.int64, len(parts)),
                                   per_msg)[take],
           "worker": np.repeat(np.array([m.worker for m in msgs], object), per_msg)[take],
           "host": np.repeat(np.array([m.host for m in msgs], object), per_msg)[take]}
    if any(m.errors is not None for m in msgs):
        errors = np.array([e for m in msgs for e in (m.errors if m.errors is not None else
                                                      [None] * (len(m.task_ids) // 8))],
                          dtype=object)
        out["error"] = errors[take]
    return out


class _Sending:
    """The sending side of a run: which batch goes next, when it is due (open loop), and the
    t_sent stamps."""

    def __init__(self, push, frames, n_tasks: int, batch_size: int, t_sent: _array) -> None:
        self.push, self.frames, self.t_sent = push, frames, t_sent
        self.n, self.size = n_tasks, batch_size
        self.n_batches = -(-n_tasks // batch_size)
        self.sent = 0
        self.intended: list | None = None  # per batch, open loop: monotonic ns

    def wait(self, t: int, wait_ns: int, timer, spin_ns: int) -> tuple[bool, int]:
        """(whether to poll for sending, how long the poll may wait) at time ``t``: open loop,
        a batch not yet due arms the timer for just before it is, then spins."""
        sent = self.sent
        if sent >= self.n_batches:
            return False, wait_ns
        if self.intended is None or self.intended[sent] <= t:
            return True, wait_ns
        due = self.intended[sent] - spin_ns
        if due <= t:
            return False, 0           # spin the last stretch
        if timer is not None:
            timer.at(due)
            return False, wait_ns
        return False, min(wait_ns, (due - t) // 1_000_000 * 1_000_000)  # whole ms: spin the rest

    def send_due(self) -> None:
        """Send the batches that are due, while the socket takes them."""
        sent, n, size, intended = self.sent, self.n, self.size, self.intended
        push, frames, t_sent, n_batches = self.push, self.frames, self.t_sent, self.n_batches
        while sent < n_batches:
            if intended is not None and intended[sent] > now():
                break
            lo = sent * size
            frame = frames(sent, lo, min(n, lo + size))
            t_sent_ = now()  # the t_sent stamp (comlab.schema)
            try:
                push.send(frame, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            t_sent.append(t_sent_)
            sent += 1
        self.sent = sent


class Acceptance:
    """Which RESULTS a run takes, and what its next ACK says.

    A frame is dropped as garbage (not a valid RESULTS of this run's batches, or a batch token
    without the batch's possession proof: not from its holder), stale (another run's), a
    duplicate (answers no task not answered before: a retried batch answers twice) or taken
    (into the run's ResultLog; the first answer of each task counts). One whose seal does not
    hold is taken as failed tasks and goes into the ACK's forged list (its holder changed what
    it was given). A RESULTS of one batch is checked without numpy (``check_one``: at batch 1
    there is one per task); any other on the vectorised path; both take the same frames the
    same way (tests/test_client.py feeds them the same)."""

    check_one = staticmethod(P.check_one_result)  # None: not one batch, the numpy path then

    def __init__(self, run: ClientRun, n_batches: int, seal: "P.Seal", on_garbage=None) -> None:
        self.run, self.n_batches, self.seal, self.on_garbage = run, n_batches, seal, on_garbage
        self.run_id, self.n, self.size, self.log = run.run_id, run.n_tasks, run.batch_size, \
            run.log.append  # fewer look-ups per frame (at batch 1, per task)
        self.tag = seal.tag
        # Checking a batch's possession proof is then an array look-up; the seal's tag over
        # the columns is one keyed hash per batch.
        self.possession = np.fromiter(map(seal.possession, range(n_batches)), np.int64,
                                      n_batches)
        self._possession = self.possession.tolist()  # the one-batch path compares Python ints
        self.answered = np.zeros(run.n_tasks, np.uint8)  # per task: has a result been taken?
        self.acked: list = []   # (batch_id, attempt) pairs for the next ACK
        self.forged: list = []  # the same, of forged results
        self.accounted = 0      # distinct tasks answered

    def drain(self, pull) -> None:
        """Take every frame the socket holds now."""
        accept = self.accept
        while True:
            try:
                frame = pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            t_received = now()  # the t_received stamp (comlab.schema)
            accept(frame, t_received)

    def accept(self, frame: bytes, t_received: int) -> int:
        """Take one frame; the number of tasks it answered first (0: not taken)."""
        run = self.run
        try:
            msg = _decode(frame, _RESULTS)
            if msg.run != self.run_id:
                run.stale += 1
                return 0
            one = self.check_one(msg, self.n, self.size)
            sealed, done, ids = self._one(msg, one) if one is not None else self._many(msg)
        except P.ProtocolError:
            run.garbage += 1
            if self.on_garbage is not None:
                self.on_garbage(frame)
            return 0
        if not sealed:  # its holder changed what it was given
            run.forged += 1
            self.forged.append(done)
            frame = _forged(msg, t_received)
        elif msg.worker != "server":
            self.acked.append(done)
        new = self._fresh_one(ids) if one is not None else self._fresh_many(ids)
        if not new:
            run.duplicates += 1
            return 0
        self.log(frame, t_received)
        self.accounted += new
        return new

    def _one(self, msg: "P.Results", one: tuple) -> tuple:
        """(sealed, ACK pair, task ids) of a checked one-batch RESULTS: no numpy on the way."""
        b, token, ids, attempt = one
        if not 0 <= b < self.n_batches or self._possession[b] != token & _MASK:
            raise P.ProtocolError("RESULTS with a wrong batch token")
        return token >> 31 == self.tag(b, msg.task_ids, msg.responses), _pack_pair(b, attempt), ids

    def _many(self, msg: "P.Results") -> tuple:
        """(sealed, ACK pairs, task ids) of any RESULTS, checked vectorised."""
        heads, ids, _ = P.check_results(msg, self.n, self.size)
        b = heads["batch_id"]
        if len(b) and (b.min() < 0 or b.max() >= self.n_batches or
                       not np.array_equal(self.possession[b], heads["token"] & _MASK)):
            raise P.ProtocolError("RESULTS with a wrong batch token")
        return _sealed(msg, heads, self.tag), _pairs(heads), ids

    def _fresh_one(self, ids) -> int:
        """Mark the tasks not answered before (a memoryview of ids); how many (distinct: a
        frame that names a task twice counts it once, as on the numpy path)."""
        answered, new = self.answered, 0
        for i in ids:
            if not answered[i]:
                answered[i] = 1
                new += 1
        return new

    def _fresh_many(self, ids: np.ndarray) -> int:
        """The same for an array: distinct tasks only (a retried batch may answer twice)."""
        fresh = ids[self.answered[ids] == 0]
        if len(fresh) > 1 and not (fresh[1:] > fresh[:-1]).all():
            fresh = np.unique(fresh)
        self.answered[fresh] = 1
        return len(fresh)


class Client(Role):
    linger_ms = 0
    SPIN_NS = 1_000_000  # open loop: the last stretch before a send is due is spun, not
    # slept on the timerfd: on a VM each hop through sleeping processes waits for a halted vCPU
    # to wake, and a spinning client keeps one awake (1,000/s here: p50 ~390 us sleeping to the
    # due time, ~210 us spinning its last ms); below 1,000/s the client sleeps most of the time

    def __init__(self, keys, batch_size: int, bind_url: str, server_url: str, *,
                 timeout: float = 60.0, rate: float | None = None, schedule=None,
                 task_offsets=None,
                 hello_timeout: float | None = None, advertise: str | None = None,
                 security=None, log_path: str | None = None) -> None:
        """``keys`` a list of "ip:command" strings or a protocol.Keys; ``log_path`` a file the
        accepted results are streamed to (memory bounded however long the run). Open loop:
        ``rate`` (tasks/s, evenly spaced batches) or ``schedule``, each batch's send offset (s
        from the clock's start, non-decreasing); ``task_offsets``, each task's intended offset
        (s; with a schedule whose batches leave when their last task is due: a trace)."""
        super().__init__()
        if batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if not len(keys):
            raise ValueError("no tasks to send")
        if rate is not None and not rate > 0:
            raise ValueError("rate must be positive")
        self.keys = keys if isinstance(keys, P.Keys) else P.Keys.of(keys)
        self.batch_size = min(batch_size, len(self.keys))  # a larger batch is all the tasks
        check_batch_limits(self.keys, self.batch_size)
        self.bind_url = bind_url
        self.server_url = server_url
        self.timeout = timeout
        self.rate = rate
        n_batches = -(-len(self.keys) // self.batch_size)
        if schedule is None and rate is not None:
            schedule = np.arange(n_batches) * (self.batch_size / rate)
        self.schedule = _offsets(schedule, n_batches, "schedule (batch send offsets)")
        self.task_offsets = _offsets(task_offsets, len(self.keys), "task_offsets")
        if self.task_offsets is not None and self.schedule is None:
            raise ValueError("task_offsets need a schedule")
        self.hello_timeout = min(timeout, 10.0) if hello_timeout is None else hello_timeout
        self.advertise = advertise
        self.security = security
        self.log_path = log_path

    def setup(self):
        self.pull = self.socket(zmq.PULL, bind=self.bind_url, rcvhwm=0, curve_server=True)
        bound = self.pull.getsockopt_string(zmq.LAST_ENDPOINT)
        wildcard = "://0.0.0.0:" in bound or "://*:" in bound or "[::]" in bound
        self.reply_url = self.advertise or ("" if wildcard else bound)
        try:
            self.push = self.socket(zmq.PUSH, connect=self.server_url, curve_server=False)
        except zmq.ZMQError as exc:
            raise ValueError(f"bad server URL {self.server_url!r}: {exc.strerror}") from None
        self.run_id = secrets.randbits(63)  # this run's identity on every message
        self.secret = secrets.token_bytes(16)  # keys the batch tokens (P.Seal)
        self.result = ClientRun(len(self.keys), self.batch_size, self.server_url,
                                log=ResultLog(self.log_path), run_id=self.run_id)
        self.handshake()

    def handshake(self) -> None:
        """HELLO -> WELCOME with a deadline; stray results of an earlier run are skipped."""
        deadline = time.monotonic() + self.hello_timeout
        if not self.push.poll(self.hello_timeout * 1000, zmq.POLLOUT):
            raise NoServer(f"no server at {self.server_url} (nothing connected within "
                           f"{self.hello_timeout:g} s)")
        # Warm threads for the tasks a batch will really have, not the batch size asked for.
        warm = min(self.batch_size, len(self.keys))
        self.push.send(P.Hello(self.run_id, self.reply_url, warm, self.secret).pack())
        while (left := deadline - time.monotonic()) > 0:
            if not self.pull.poll(left * 1000):
                break
            try:
                msg = P.decode(self.pull.recv(), (P.Welcome, P.Results))
            except P.ProtocolError:
                self.result.garbage += 1
                continue
            if msg.run != self.run_id:
                self.result.stale += 1  # an earlier run's, still in flight to this URL
            elif type(msg) is P.Welcome and "refused" in msg.info:
                raise NoServer(f"the server at {self.server_url} refused this client: "
                               f"{P.preview(msg.info['refused'])}")
            elif type(msg) is P.Welcome:
                # Only flat scalars: the info goes into meta.json, and a peer chose it.
                self.result.server_info = {
                    str(k)[:64]: v for k, v in list(msg.info.items())[:64]
                    if isinstance(v, (str, int, float, bool, type(None)))
                    and not (isinstance(v, str) and len(v) > 1024)}
                return
        raise NoServer(f"no server at {self.server_url} answered within "
                       f"{self.hello_timeout:g} s")

    def loop(self) -> ClientRun:
        # The loop only allocates messages it keeps, which hold no cycles: the cyclic
        # collector would walk them again and again (15-35 % of the loop at batch 1 to 256).
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self.send_and_collect()
        finally:
            if collecting:
                gc.enable()

    def send_and_collect(self) -> ClientRun:
        """The run: send each batch when it is due and the socket takes it, take the results
        (``Acceptance``), ACK them at most every ACK_EVERY_NS, until every task is accounted
        for or the deadline passes."""
        run = self.result
        n = len(self.keys)
        n_batches = -(-n // self.batch_size)
        # Every batch's possession proof before the clock starts (Acceptance).
        self.seal = P.Seal(self.secret)
        take = Acceptance(run, n_batches, self.seal,
                          lambda frame: self.check_refused(frame, n_batches))
        if run.server_info.get("task"):
            # The server runs a task of its own (comlab.system.usertask): the worker makes
            # the responses, so the tokens seal the task ids only (over zero responses).
            bare = self.seal.tag
            take.tag = lambda b, ids, responses: bare(b, ids, bytes(len(responses)))
        sending = _Sending(self.push, P.BatchFrames(self.run_id, self.reply_url, self.keys).frame,
                           n, self.batch_size, run.t_sent)
        timer = Timer.open() if self.schedule is not None else None
        if timer is not None:
            precise_sleeps()
        t0 = run.t_start = now()
        if self.schedule is not None:
            run.t_intended = t0 + (self.schedule * 1e9).astype(np.int64)
            sending.intended = run.t_intended.tolist()
            if self.task_offsets is not None:
                run.t_task_intended = t0 + (self.task_offsets * 1e9).astype(np.int64)
        try:
            self._collect(take, sending, timer, t0 + int(self.timeout * 1e9))
        finally:
            if timer is not None:
                timer.close()
        run.accepted = take.accounted
        run.log.spill()
        if take.acked or take.forged:
            self.ack(take.acked, take.forged)
        self.bye()
        return run

    def _collect(self, take: "Acceptance", sending: "_Sending", timer, deadline: int) -> None:
        """The poll loop: one pass sends what is due, drains the results, ACKs if due."""
        pull, push, n = self.pull, sending.push, take.run.n_tasks
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(push, zmq.POLLOUT)
        if timer is not None:
            poller.register(timer.fd, zmq.POLLIN)
        push_on, ack_at = True, 0  # at most one ACK per ACK_EVERY_NS: at batch 1 one per pass
        # would be one more message per task at the server
        acked, forged, drain, send_due = take.acked, take.forged, take.drain, sending.send_due
        while take.accounted < n:
            t = now()
            if t >= deadline:
                break
            want_push, wait_ns = sending.wait(t, deadline - t, timer, self.SPIN_NS)
            if want_push != push_on:
                poller.modify(push, zmq.POLLOUT if want_push else 0)
                push_on = want_push
            if acked or forged:  # an ACK is due: wake up for it
                wait_ns = max(0, min(wait_ns, ack_at - t))
            for sock, _ in poller.poll(-(-wait_ns // 1_000_000)):
                if sock is push:
                    send_due()
                elif sock is pull:
                    drain(pull)
                else:
                    timer.clear()
            if (acked or forged) and now() >= ack_at:  # a pass is over: the socket is
                self.ack(acked, forged)                 # drained, so the ACK is complete
                ack_at = now() + ACK_EVERY_NS

    def check_refused(self, frame: bytes, n_batches: int) -> None:
        """A WELCOME refusing one of this run's batches (above the server's limits) ends the
        run with the server's reason; its batch token proves the server sent it."""
        try:
            msg = P.Welcome.decode(frame)
        except P.ProtocolError:
            return
        b = msg.info.get("batch")
        if msg.run == self.run_id and "refused" in msg.info and type(b) is int \
                and 0 <= b < n_batches and msg.info.get("token") == self.seal.possession(b):
            raise NoServer(f"the server at {self.server_url} refused a batch: "
                           f"{P.preview(msg.info['refused'])}")

    def ack(self, acked: list, forged: list) -> None:
        """Tell the server which batches' results were taken (and which were forged); the
        lists are emptied once the ACK left (else kept for the next pass)."""
        try:
            took, bad = b"".join(acked), b"".join(forged)
            self.push.send(P.Ack(self.run_id, self.reply_url, took, bad,
                                 self.seal.ack_tag(took, bad)).pack(), zmq.NOBLOCK)
        except zmq.Again:
            return
        acked.clear()
        forged.clear()

    def bye(self) -> None:
        """Tell the server this run is over, so whatever of it is still queued is dropped."""
        try:
            self.push.send(P.Bye(self.run_id, self.reply_url).pack(), zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        self.close_socket(self.push, linger_ms=500)  # give the BYE a moment to leave
