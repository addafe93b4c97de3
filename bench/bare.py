"""The bare 3-hop pipeline: the fastest code we could write that moves tasks the way comlab does.

    client PUSH -> server PULL -> multiprocessing queue -> N worker processes -> PUSH -> client PULL

No look-up, no per-task work, no stamps, no statuses, no retries, no load balancing beyond the
queue. It is the ceiling the bench divides comlab by, so it must be as fast as the hops allow:

- the client is one thread: a poll on both sockets, then non-blocking sends until the socket
  refuses (a packed batch it refused is kept for the next turn) and non-blocking receives until
  none is left. A sender thread beside a receiving thread shares the GIL with it and halves the
  ceiling (field notes; the previous bare.py did that: 37-53 k tasks/s at batch 1);
- the server forwards each frame to the queue as it is, never decoding it;
- the queue is multiprocessing's ``SimpleQueue`` minus pickle (``FrameQueue``): one pipe the
  server writes (it is the only writer: no write lock) and the workers read under a shared lock,
  so a free worker takes the next batch (the seed's "shared queue"). The frames are bytes
  already: pickling them again cost more CPU than the rest of the server;
- a worker decodes a batch with ``raw=True`` (keys stay bytes: no UTF-8 decoding) and answers
  one msgpack message per batch with one response per task.

Throughput is tasks / (first send -> last result), as comlab's ``throughput_tps``.

Measured while choosing (2 workers, zero-wait, 20,000 tasks at batch 1 and 200,000 at batch
256, 4-5 runs of each variant in turn, other sessions loading the machine: medians over
batches of runs [min..max]; CPU = user + system time of client, server and workers per task):

    queue; client loop                      batch 1             batch 256           CPU b1, b256
    mp.Queue; poll                          44-47k [30k..65k]   1.4-1.7M [1.2..2.6M]  26.8, 0.94 us
    mp.Queue; try both, poll when idle      49-54k [29k..71k]   1.5-1.8M [0.9..2.2M]
    mp.Queue; poll + zmq.EVENTS             30k [25k..32k]      1.7M
    SimpleQueue (pickle, 2 locks); try      38-52k [37k..60k]   1.6-1.9M [0.7..2.5M]  26.6, 1.24 us
    pipe + read lock, frames as they are    69-77k [45k..102k]  1.2-1.8M [0.6..2.5M]  19.3, 1.31 us
      + no write lock, raw=True; try        70-74k [54k..97k]   1.8-2.1M [1.2..2.7M]  17.1, 0.92 us
      + no write lock, raw=True; poll: kept 83-86k [56k..94k]   1.6-2.2M [0.6..2.6M]  12.6, 0.99 us

Issue 11 measured the old bare.py (sender thread, mp.Queue) at 37-53k and 1.06-1.6M. The server
draining its socket with non-blocking receives between polls changed nothing (53k / 2.4M with
mp.Queue, within the noise). ``copy=False`` only pays above pyzmq's copy
threshold (64 KiB): a batch of 256 keys is ~5 KiB, so every send and receive here copies.

    with BarePipeline(workers=2) as bare:
        figures = bare.run(n_tasks=20_000, batch_size=16)   # {"throughput_tps": ..., ...}
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
import time

import msgpack
import zmq

STOP = b""  # to the server: stop every worker and exit; from the server to a worker: exit


def die_with_parent() -> None:
    """A child of the bench dies with it (the bench may be killed mid-run)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def keys_for(n_tasks: int) -> list:
    return [f"10.0.{(i >> 8) & 255}.{i & 255}:run" for i in range(n_tasks)]


def drive(push, pull, n_tasks: int, batch_size: int, timeout: float = 120.0) -> dict:
    """The client: send n_tasks in batches on ``push`` and count the results on ``pull``."""
    keys = keys_for(n_tasks)
    n_batches = -(-n_tasks // batch_size)
    pack, unpackb = msgpack.Packer().pack, msgpack.unpackb
    send, recv, NOBLOCK, Again = push.send, pull.recv, zmq.NOBLOCK, zmq.Again
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    poller.register(push, zmq.POLLOUT)
    poll = poller.poll
    sent = got = 0
    pending = None
    t_first = time.perf_counter()
    t_last = None
    deadline = t_first + timeout
    while got < n_tasks:
        events = poll(max(0.0, deadline - time.perf_counter()) * 1000)
        if not events:
            raise RuntimeError(f"bare: {got} of {n_tasks} tasks back within {timeout:g} s")
        for sock, _ in events:
            if sock is push:
                while sent < n_batches:
                    if pending is None:
                        lo = sent * batch_size
                        hi = min(n_tasks, lo + batch_size)
                        pending = pack([sent, list(range(lo, hi)), keys[lo:hi]])
                    try:
                        send(pending, NOBLOCK)
                    except Again:
                        break
                    pending = None
                    sent += 1
                if sent == n_batches:
                    poller.unregister(push)
            else:
                while True:
                    try:
                        frame = recv(NOBLOCK)
                    except Again:
                        break
                    got += len(unpackb(frame)[1])
                t_last = time.perf_counter()
    makespan = t_last - t_first
    return {"n_tasks": n_tasks, "batch_size": batch_size, "makespan_s": makespan,
            "throughput_tps": n_tasks / makespan}


class FrameQueue:
    """multiprocessing.SimpleQueue for frames that are bytes already: no pickle, one writer."""

    def __init__(self, ctx) -> None:
        self._reader, self._writer = ctx.Pipe(duplex=False)
        self._rlock = ctx.Lock()

    def put(self, frame: bytes) -> None:  # the server alone writes: no write lock
        self._writer.send_bytes(frame)

    def get(self) -> bytes:
        with self._rlock:
            return self._reader.recv_bytes()


def _server(queue: FrameQueue, port_conn, n_workers: int) -> None:
    die_with_parent()
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port_conn.send(pull.bind_to_random_port("tcp://127.0.0.1"))
    port_conn.close()
    put, recv = queue.put, pull.recv
    while (frame := recv()) != STOP:
        put(frame)
    for _ in range(n_workers):
        put(STOP)
    pull.close(0)
    ctx.term()


def answer(frame: bytes, pack) -> bytes:
    """A worker's whole job: one message per batch, one response per task."""
    batch_id, task_ids, _ = msgpack.unpackb(frame, raw=True)
    return pack([batch_id, task_ids, [1] * len(task_ids)])


def _worker(queue: FrameQueue, client_url: str) -> None:
    die_with_parent()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(client_url)
    get, send, pack = queue.get, push.send, msgpack.Packer().pack
    while (frame := get()) != STOP:
        send(answer(frame, pack))
    push.close(linger=1000)
    ctx.term()


class Pipeline:
    """A client (in the calling process) driving a server process and its workers.

    Subclasses start them in ``start(mp, client_url, port_conn)``: the server sends the port it
    bound on ``port_conn``; workers PUSH results to ``client_url``.
    """

    name = "pipeline"

    def __init__(self, workers: int, start_timeout: float = 60.0) -> None:
        self.workers = workers
        self.mp = multiprocessing.get_context("spawn")  # no inherited threads or sockets
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.client_url = f"tcp://127.0.0.1:{self.pull.bind_to_random_port('tcp://127.0.0.1')}"
        self.procs: list = []
        self.push = None
        try:
            mine, theirs = self.mp.Pipe(duplex=False)
            self.start(self.mp, self.client_url, theirs)
            theirs.close()
            if not mine.poll(start_timeout):
                raise RuntimeError(f"{self.name} server not up within {start_timeout:g} s")
            self.server_url = f"tcp://127.0.0.1:{mine.recv()}"
            mine.close()
            self.push = self.ctx.socket(zmq.PUSH)
            self.push.setsockopt(zmq.LINGER, 0)
            self.push.connect(self.server_url)
            # Warm up: every worker has connected to us and taken work once.
            self.run(max(64, 8 * workers), 1, timeout=start_timeout)
        except BaseException:
            self.close()
            raise

    def start(self, mp, client_url: str, port_conn) -> None:
        raise NotImplementedError

    def spawn(self, target, args, name: str) -> None:
        p = self.mp.Process(target=target, args=args, daemon=True, name=name)
        p.start()
        self.procs.append(p)

    def run(self, n_tasks: int, batch_size: int, timeout: float = 120.0) -> dict:
        """Send n_tasks zero-work tasks in batches; {"throughput_tps", "makespan_s", ...}."""
        out = drive(self.push, self.pull, n_tasks, batch_size, timeout)
        out["workers"] = self.workers
        return out

    def close(self) -> None:
        if self.push is not None:
            try:
                self.push.send(STOP, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        deadline = time.monotonic() + 3.0
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(1.0)
            if p.is_alive():
                p.kill()
                p.join(1.0)
        self.procs.clear()
        if self.push is not None:
            self.push.close(0)
            self.push = None
        self.pull.close(0)
        self.ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BarePipeline(Pipeline):
    """The bare pipeline with ``workers`` worker processes; ``run()`` as often as needed."""

    name = "bare"

    def start(self, mp, client_url: str, port_conn) -> None:
        # Kept: a spawned child rebuilds the queue's lock from its name while the parent holds it.
        self.queue = FrameQueue(mp)
        self.spawn(_server, (self.queue, port_conn, self.workers), "bare-server")
        for i in range(self.workers):
            self.spawn(_worker, (self.queue, client_url), f"bare-worker-{i}")


def measure(workers: int, batch_sizes, n_tasks: int, repeats: int = 1,
            pipeline=BarePipeline, **options) -> dict:
    """{batch_size: [throughput_tps of each repeat]} on one pipeline of ``workers`` workers."""
    out: dict = {}
    with pipeline(workers, **options) as p:
        for size in batch_sizes:
            out[size] = [p.run(n_tasks, size)["throughput_tps"] for _ in range(repeats)]
    return out


if __name__ == "__main__":
    for w in (1, 2):
        print(w, measure(w, [1, 16, 256], 20_000))
