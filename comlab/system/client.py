"""The client: sends batches of tasks to the server and collects one result per task.

One thread does both: it PUSHes batches whenever the socket takes them (no sleeps between sends;
ZeroMQ's high-water mark is the only brake) and drains results from its bound PULL socket in the
same poll, until every task is accounted for or the deadline passes. Before the clock starts it
says HELLO and waits for the server's WELCOME on its own PULL socket, which proves a server is
there and that the return path works, and lets the server tell its workers to connect to us.

With ``rate`` (tasks per second) the client is open-loop: batch b is due at t0 + b * size / rate
and its latency is measured from that intended time, so a stall cannot hide (coordinated
omission). The hot loop only stores raw result messages; per-task columns are built afterwards.
"""

from __future__ import annotations

import gc
import itertools
import secrets
import time
from dataclasses import dataclass, field

import numpy as np
import zmq

from . import protocol as P
from .role import Role

now = time.monotonic_ns


class NoServer(RuntimeError):
    """No server answered the handshake before the deadline."""


@dataclass
class ClientRun:
    """What one client run saw: raw result messages plus the stamps only the client has."""

    keys: list
    batch_size: int
    server_url: str
    t_start: int = 0                 # clock start (after the handshake)
    t_sent: list = field(default_factory=list)        # per batch
    t_intended: list | None = None                    # per batch, open-loop only
    messages: list = field(default_factory=list)      # protocol.Results, accepted
    t_received: list = field(default_factory=list)    # per message
    accepted: int = 0   # distinct tasks answered (the invariant's count)
    duplicates: int = 0  # messages that answered no task not answered before
    garbage: int = 0     # messages that were not a valid RESULTS for this run's tasks
    stale: int = 0       # valid results of another run (an earlier client on this URL)
    run_id: int = 0
    server_info: dict = field(default_factory=dict)

    @property
    def n_tasks(self) -> int:
        return len(self.keys)

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
        sent = np.asarray(self.t_sent, dtype=np.int64)
        cols["t_sent"] = np.full(n, -1, dtype=np.int64)
        cols["t_sent"][: len(sent) * self.batch_size] = np.repeat(sent, self.batch_size)[:n]
        if self.t_intended is not None:
            cols["t_intended"] = np.repeat(np.asarray(self.t_intended, np.int64),
                                           self.batch_size)[:n]
        if self.messages:
            self._place(cols, n)
        return cols

    def _place(self, cols: dict, n: int) -> None:
        """Put every accepted result in its task's row, all messages at once (numpy), not a
        message at a time: a batch-1 run has as many messages as tasks."""
        msgs = self.messages
        chain = itertools.chain.from_iterable
        lengths = np.fromiter((len(m.task_ids) for m in msgs), np.int64, len(msgs))
        total = int(lengths.sum())
        ids = np.fromiter(chain(m.task_ids for m in msgs), np.int64, total)
        # A retried batch may answer twice: the first answer wins. An id outside the run cannot
        # be placed: skipped here, so the records' invariant check (accepted results vs tasks
        # with a final status) reports it instead of an IndexError.
        inside = np.flatnonzero((ids >= 0) & (ids < n))
        _, first = np.unique(ids[inside], return_index=True)
        take = inside[first]
        idx = ids[take]
        of_msg = np.repeat(np.arange(len(msgs)), lengths)[take]

        def per_task(name, dtype):
            return np.fromiter(chain(getattr(m, name) for m in msgs), dtype, total)[take]

        def per_message(name, dtype=np.int64):
            return np.array([getattr(m, name) for m in msgs], dtype=dtype)[of_msg]

        cols["status"][idx] = per_task("statuses", np.int8)
        responses = np.array(list(chain(m.responses for m in msgs)), dtype=object)[take]
        has = responses != None  # noqa: E711 (elementwise on an object array)
        cols["has_response"][idx] = has
        cols["response"][idx[has]] = responses[has].astype(np.int64)
        cols["t_started"][idx] = per_task("t_started", np.int64)
        cols["t_finished"][idx] = per_task("t_finished", np.int64)
        cols["attempt"][idx] = per_message("attempt", np.int8)
        cols["t_server_in"][idx] = per_message("t_server_in")
        cols["t_enqueued"][idx] = per_message("t_enqueued")
        cols["t_received"][idx] = np.asarray(self.t_received, np.int64)[of_msg]
        cols["worker"][idx] = per_message("worker", object)
        cols["host"][idx] = per_message("host", object)
        if any(m.errors is not None for m in msgs):
            errors = np.array(list(chain(m.errors if m.errors is not None
                                         else [None] * len(m.task_ids) for m in msgs)),
                              dtype=object)
            cols["error"][idx] = errors[take]

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
                "duplicates": self.duplicates, "garbage": self.garbage, "stale": self.stale}


class Client(Role):
    linger_ms = 0

    def __init__(self, keys: list, batch_size: int, bind_url: str, server_url: str, *,
                 timeout: float = 60.0, rate: float | None = None,
                 hello_timeout: float | None = None, advertise: str | None = None,
                 security=None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if not keys:
            raise ValueError("no tasks to send")
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self.keys = keys
        self.batch_size = batch_size
        self.bind_url = bind_url
        self.server_url = server_url
        self.timeout = timeout
        self.rate = rate
        self.hello_timeout = min(timeout, 10.0) if hello_timeout is None else hello_timeout
        self.advertise = advertise
        self.security = security

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
        self.secret = secrets.token_bytes(16)  # keys the batch tokens (P.batch_token)
        self.result = ClientRun(self.keys, self.batch_size, self.server_url, run_id=self.run_id)
        self.handshake()

    def handshake(self) -> None:
        """HELLO -> WELCOME with a deadline; stray results of an earlier run are skipped."""
        deadline = time.monotonic() + self.hello_timeout
        if not self.push.poll(self.hello_timeout * 1000, zmq.POLLOUT):
            raise NoServer(f"no server at {self.server_url} (nothing connected within "
                           f"{self.hello_timeout:g} s)")
        self.push.send(P.Hello(self.run_id, self.reply_url, self.batch_size,
                               self.secret).pack())
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
        run = self.result
        keys, size, n = self.keys, self.batch_size, len(self.keys)
        n_batches = -(-n // size)
        pull, push, reply_url = self.pull, self.push, self.reply_url
        messages, received, t_sent = run.messages, run.t_received, run.t_sent
        run_id, decode, check, Results = self.run_id, P.decode, P.check_results, (P.Results,)
        token, secret = P.batch_token, self.secret
        answered = bytearray(n)  # per task: has a result been taken?
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(push, zmq.POLLOUT)
        push_on = True
        sent = accounted = 0
        t0 = run.t_start = now()
        deadline = t0 + int(self.timeout * 1e9)
        intended = None
        if self.rate:
            step = size / self.rate * 1e9
            intended = run.t_intended = [t0 + int(b * step) for b in range(n_batches)]
        while accounted < n:
            t = now()
            if t >= deadline:
                break
            wait_ns = deadline - t
            want_push = sent < n_batches and (intended is None or intended[sent] <= t)
            if intended is not None and sent < n_batches and not want_push:
                wait_ns = min(wait_ns, intended[sent] - t)
            if want_push != push_on:
                poller.modify(push, zmq.POLLOUT if want_push else 0)
                push_on = want_push
            events = poller.poll(max(wait_ns / 1e6, 0.001) if wait_ns > 0 else 0)
            for sock, _ in events:
                if sock is push:
                    while sent < n_batches:
                        if intended is not None and intended[sent] > now():
                            break
                        lo, hi = sent * size, min(n, (sent + 1) * size)
                        t_sent_ = now()  # the t_sent stamp (comlab.schema)
                        try:
                            push.send(P.Batch(run_id, sent, reply_url, t_sent_, list(range(lo, hi)),
                                              keys[lo:hi]).pack(), zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        t_sent.append(t_sent_)
                        sent += 1
                else:
                    while True:
                        try:
                            frame = pull.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        t_received = now()  # the t_received stamp (comlab.schema)
                        try:
                            msg = decode(frame, Results)
                            if msg.run != run_id:
                                run.stale += 1
                                continue
                            ids = check(msg, n, size)  # shape, ids of its batch, statuses
                            if msg.token != token(secret, msg.batch_id):
                                raise P.ProtocolError("RESULTS with a wrong batch token")
                        except P.ProtocolError:
                            run.garbage += 1
                            continue
                        new = 0
                        for i in ids:  # distinct tasks: a retried batch may answer twice
                            if not answered[i]:
                                answered[i] = 1
                                new += 1
                        if not new:
                            run.duplicates += 1
                            continue
                        messages.append(msg)
                        received.append(t_received)
                        accounted += new
        run.accepted = accounted
        self.bye()
        return run

    def bye(self) -> None:
        """Tell the server this run is over, so whatever of it is still queued is dropped."""
        try:
            self.push.send(P.Bye(self.run_id, self.reply_url).pack(), zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        self.close_socket(self.push, linger_ms=500)  # give the BYE a moment to leave
