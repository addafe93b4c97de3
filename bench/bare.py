"""The bare 3-hop pipeline: the least code that moves tasks the way comlab does.

    client PUSH -> server PULL -> multiprocessing queue -> N worker processes -> PUSH -> client PULL

No look-up, no per-task work, no stamps, no statuses, no retries, no load balancing beyond the
queue: the server forwards each frame to the queue as it is, a worker unpacks a batch and pushes
back one msgpack message with one response per task. The client (in the calling process) sends
every batch from a sender thread without waiting between messages while the calling thread
receives. Throughput is tasks / (first send -> last result), as comlab's ``throughput_tps``.

    with BarePipeline(workers=2) as bare:
        figures = bare.run(n_tasks=20_000, batch_size=16)   # {"throughput_tps": ..., ...}
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
import threading
import time

import msgpack
import zmq

STOP = b""  # to the server: put one None per worker on the queue and exit


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _server(queue, port_conn, n_workers: int) -> None:
    _die_with_parent()
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port_conn.send(pull.bind_to_random_port("tcp://127.0.0.1"))
    port_conn.close()
    put, recv = queue.put, pull.recv
    while (frame := recv()) != STOP:
        put(frame)
    for _ in range(n_workers):
        put(None)
    pull.close(0)
    ctx.term()


def _worker(queue, client_url: str) -> None:
    _die_with_parent()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(client_url)
    get, send, unpackb, packb = queue.get, push.send, msgpack.unpackb, msgpack.packb
    while (frame := get()) is not None:
        batch_id, task_ids, keys = unpackb(frame)
        send(packb([batch_id, task_ids, [1] * len(task_ids)]))
    push.close(linger=1000)
    ctx.term()


class BarePipeline:
    """A running bare pipeline with ``workers`` worker processes; ``run()`` as often as needed."""

    def __init__(self, workers: int, start_timeout: float = 60.0) -> None:
        self.workers = workers
        self.mp = multiprocessing.get_context("spawn")  # no inherited threads or sockets
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.client_url = f"tcp://127.0.0.1:{self.pull.bind_to_random_port('tcp://127.0.0.1')}"
        self.queue = self.mp.Queue()
        self.procs = []
        self.push = None
        try:
            mine, theirs = self.mp.Pipe(duplex=False)
            server = self.mp.Process(target=_server, args=(self.queue, theirs, workers),
                                     daemon=True, name="bare-server")
            server.start()
            self.procs.append(server)
            theirs.close()
            for i in range(workers):
                p = self.mp.Process(target=_worker, args=(self.queue, self.client_url),
                                    daemon=True, name=f"bare-worker-{i}")
                p.start()
                self.procs.append(p)
            if not mine.poll(start_timeout):
                raise RuntimeError(f"bare server not up within {start_timeout:g} s")
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

    def run(self, n_tasks: int, batch_size: int, timeout: float = 120.0) -> dict:
        """Send n_tasks zero-work tasks in batches; {"throughput_tps", "makespan_s", ...}."""
        keys = [f"10.0.{(i >> 8) & 255}.{i & 255}:run" for i in range(n_tasks)]
        n_batches = -(-n_tasks // batch_size)
        t_first = []

        def sender():
            push, packb = self.push, msgpack.packb
            t_first.append(time.perf_counter())
            for b in range(n_batches):
                lo, hi = b * batch_size, min(n_tasks, (b + 1) * batch_size)
                push.send(packb([b, list(range(lo, hi)), keys[lo:hi]]))

        thread = threading.Thread(target=sender, daemon=True, name="bare-sender")
        pull, unpackb = self.pull, msgpack.unpackb
        got = 0
        deadline = time.perf_counter() + timeout
        thread.start()
        t_last = None
        while got < n_tasks:
            if not pull.poll(max(0.0, deadline - time.perf_counter()) * 1000):
                break
            _, ids, _ = unpackb(pull.recv())
            got += len(ids)
            t_last = time.perf_counter()
        thread.join(timeout=5)
        if got < n_tasks:
            raise RuntimeError(f"bare pipeline: {got} of {n_tasks} tasks back within "
                               f"{timeout:g} s")
        makespan = t_last - t_first[0]
        return {"n_tasks": n_tasks, "batch_size": batch_size, "workers": self.workers,
                "makespan_s": makespan, "throughput_tps": n_tasks / makespan}

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
        self.queue.close()
        self.queue.join_thread()
        self.ctx.term()

    def __enter__(self) -> "BarePipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def measure(workers: int, batch_sizes, n_tasks: int, repeats: int = 1) -> dict:
    """{batch_size: [throughput_tps of each repeat]} on one pipeline of ``workers`` workers."""
    out: dict = {}
    with BarePipeline(workers) as bare:
        for size in batch_sizes:
            out[size] = [bare.run(n_tasks, size)["throughput_tps"] for _ in range(repeats)]
    return out


if __name__ == "__main__":
    for w in (1, 2):
        print(w, measure(w, [1, 16, 256], 5000))
