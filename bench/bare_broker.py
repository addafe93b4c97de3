"""The bare broker: the Guide's load-balancing broker between the bare client and its workers.

    client PUSH -> server PULL -> ROUTER -> DEALER workers (READY / DONE) -> PUSH -> client PULL

Nothing else: no look-up, no stamps, no retries, no bookkeeping beyond a deque of credits. A
worker says READY once and DONE after each batch; the server takes a batch from the client
only while some worker has credit, and forwards the frame as it is. With ``prefetch=K`` a
worker may hold K batches beyond the one it runs (its READY is worth 1 + K credits, each DONE
gives one back: credit-based flow control, as RabbitMQ's and Celery's prefetch); K = 0 is
strict load balancing, where every batch waits a DONE -> batch round trip to its worker.

Same client loop and worker answer as ``bench/bare.py``, so bare / bare broker is the cost of
load balancing, and bare broker / comlab the cost of comlab's own bookkeeping.

At batch 1 the broker is bound by latency, not CPU: a worker's batches in flight are 1 + K, and
each costs a DONE -> batch round trip through a sleeping process. 2 workers, zero-wait, 20,000
tasks, two rounds on a loaded machine: K = 0: 3.1k / 6.0k tasks/s; K = 4: 24k / 17k; K = 16:
24k / 30k; K = 64: 58k / 44k; K = 256: 39k / 81k, against bare 49k / 29k in the same rounds.

    with BareBroker(workers=2, prefetch=0) as broker:
        figures = broker.run(n_tasks=20_000, batch_size=1)
"""

from __future__ import annotations

from collections import deque

import msgpack
import zmq

from .bare import STOP, Pipeline, answer, die_with_parent

READY, DONE = b"R", b"D"


def _server(port_conn, backend_port_conn, n_workers: int, prefetch: int) -> None:
    die_with_parent()
    ctx = zmq.Context()
    backend = ctx.socket(zmq.ROUTER)
    backend_port_conn.send(backend.bind_to_random_port("tcp://127.0.0.1"))
    backend_port_conn.close()
    frontend = ctx.socket(zmq.PULL)
    port_conn.send(frontend.bind_to_random_port("tcp://127.0.0.1"))
    port_conn.close()
    credits: deque = deque()  # one worker identity per batch it may be sent now
    poller = zmq.Poller()
    poller.register(backend, zmq.POLLIN)
    listening = False
    b_recv, b_send, f_recv = backend.recv, backend.send, frontend.recv
    NOBLOCK, SNDMORE, Again = zmq.NOBLOCK, zmq.SNDMORE, zmq.Again
    workers: list = []
    running = True
    while running:
        poller.poll()
        while True:  # READY and DONE: credits
            try:
                ident = b_recv(NOBLOCK)
            except Again:
                break
            if b_recv() == READY:
                workers.append(ident)
                credits.extend([ident] * (1 + prefetch))
            else:
                credits.append(ident)
        while credits:  # batches, as long as some worker has credit
            try:
                frame = f_recv(NOBLOCK)
            except Again:
                break
            if frame == STOP:
                running = False
                break
            b_send(credits.popleft(), SNDMORE)
            b_send(frame)
        if running and bool(credits) != listening:  # the client waits while no one has credit
            listening = not listening
            if listening:
                poller.register(frontend, zmq.POLLIN)
            else:
                poller.unregister(frontend)
    for ident in workers:
        b_send(ident, SNDMORE)
        b_send(STOP)
    backend.close(1000)
    frontend.close(0)
    ctx.term()


def _worker(backend_url: str, client_url: str) -> None:
    die_with_parent()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(client_url)
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(backend_url)
    dealer.send(READY)
    recv, tell, send, pack = dealer.recv, dealer.send, push.send, msgpack.Packer().pack
    while (frame := recv()) != STOP:
        send(answer(frame, pack))
        tell(DONE)
    push.close(linger=1000)
    dealer.close(0)
    ctx.term()


class BareBroker(Pipeline):
    """The bare broker with ``workers`` workers, each holding up to ``prefetch`` extra batches."""

    name = "bare broker"

    def __init__(self, workers: int, prefetch: int = 0, start_timeout: float = 60.0) -> None:
        if prefetch < 0:
            raise ValueError("prefetch must be >= 0")
        self.prefetch = prefetch
        super().__init__(workers, start_timeout)

    def start(self, mp, client_url: str, port_conn) -> None:
        mine, theirs = mp.Pipe(duplex=False)
        self.spawn(_server, (port_conn, theirs, self.workers, self.prefetch), "broker-server")
        theirs.close()
        if not mine.poll(30):
            raise RuntimeError("bare broker: no backend port within 30 s")
        backend_url = f"tcp://127.0.0.1:{mine.recv()}"
        mine.close()
        for i in range(self.workers):
            self.spawn(_worker, (backend_url, client_url), f"broker-worker-{i}")


if __name__ == "__main__":
    from .bare import measure
    for k in (0, 1, 4):
        for w in (1, 2):
            print(f"prefetch {k}, {w} workers",
                  measure(w, [1, 16, 256], 20_000, pipeline=BareBroker, prefetch=k))
