"""A worker process: asks the server for work, runs it with the named strategy, pushes results.

The worker holds one batch at a time: it announces itself (READY), and after each batch sends
its results straight to the client's URL, then DONE to the server, which is also its request for
the next batch (the ZeroMQ Guide's load-balancing pattern, so no batch waits behind a busy
worker). It never knows what it runs beyond the strategy spec in the work item.

It dies with its parent: PR_SET_PDEATHSIG where Linux offers it, and the parent's sentinel in
its poll set everywhere, so a SIGKILLed server leaves no worker behind.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections import OrderedDict

import zmq

from . import protocol as P
from .role import HOST, Role
from .strategies import Cache, now

log = logging.getLogger("comlab.worker")

RESULT_SEND_TIMEOUT_MS = 10_000  # a client gone for this long gets its results dropped
MAX_CLIENT_SOCKETS = 32


class Worker(Role):
    linger_ms = 1000  # results in flight at shutdown still get a chance to leave

    def __init__(self, server_url: str, name: str, *, watch_parent: bool = True,
                 security=None) -> None:
        super().__init__()
        self.server_url = server_url
        self.name = name
        self.watch_parent = watch_parent
        self.security = security
        self.strategies = Cache()
        self.clients: OrderedDict[str, zmq.Socket] = OrderedDict()

    def setup(self):
        # Forked workers may connect before the server binds: retry after 10 ms (doubling to
        # 1 s), not libzmq's default 100 ms, which would be most of a pool's start-up.
        self.server = self.socket(zmq.DEALER, connect=None, routing_id=self.name.encode(),
                                  curve_server=False, reconnect_ivl=10, reconnect_ivl_max=1000)
        # Each handshake after the first is a new connection (server restarted, network back):
        # say READY again, so a server that never met us takes us on.
        self.monitor = self.server.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self._sockets.append(self.monitor)
        self.handshakes = 0
        self.server.connect(self.server_url)
        self.server.send(P.ready(self.name, HOST, os.getpid()))
        self.poller = zmq.Poller()
        self.poller.register(self.server, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        parent = multiprocessing.parent_process() if self.watch_parent else None
        self.parent_fd = parent.sentinel if parent is not None else None
        if self.parent_fd is not None:
            self.poller.register(self.parent_fd, zmq.POLLIN)

    def loop(self):
        recv, handle = self.server.recv, self.handle
        while True:
            events = dict(self.poller.poll())
            if self.parent_fd is not None and self.parent_fd in events:
                log.info("%s: parent gone, exiting", self.name)
                return
            if self.server in events and not handle(recv()):
                return
            if self.monitor in events:
                self.on_handshake()

    def on_handshake(self) -> None:
        while True:
            try:
                self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.handshakes += 1
            if self.handshakes > 1:
                log.info("%s: reconnected to %s: READY again", self.name, self.server_url)
                self.server.send(P.ready(self.name, HOST, os.getpid()))

    def handle(self, frame: bytes) -> bool:
        """Act on one message from the server; False means stop."""
        try:
            msg = P.unpack(frame)
            kind = msg[1]
        except P.ProtocolError as exc:
            log.warning("%s: dropped message from server: %s", self.name, exc)
            return True
        if kind == P.WORK:
            self.work(msg)
        elif kind == P.CONNECT:
            self.join(*msg[2:5])
        elif kind == P.STOP:
            return False
        elif kind == P.PING:
            if len(msg) > 2 and isinstance(msg[2], int):  # a clock sample; None: a probe
                self.server.send(P.pong(msg[2], now()))
        else:
            log.warning("%s: unexpected message type %r", self.name, kind)
        return True

    def work(self, msg: list) -> None:
        (_, _, batch_id, reply_url, spec, t_sent, t_in, t_enq, attempt,
         task_ids, responses, waits) = msg
        try:
            statuses, outs, starts, ends, errors = self.strategies.get(spec).run(responses, waits)
        except Exception as exc:  # a broken strategy fails its batch, not the worker
            t = now()
            n = len(task_ids)
            statuses, outs, starts, ends = [P.FAILED] * n, [None] * n, [t] * n, [t] * n
            errors = [f"strategy {spec!r}: {type(exc).__name__}: {exc}"] * n
        result = P.pack([P.VERSION, P.RESULTS, batch_id, self.name, HOST, attempt, t_sent, t_in,
                         t_enq, task_ids, statuses, outs, starts, ends, errors])
        try:
            self.client(reply_url).send(result)
        except zmq.Again:
            log.error("%s: client %s took no results for %.0f s; batch %s dropped",
                      self.name, reply_url, RESULT_SEND_TIMEOUT_MS / 1000, batch_id)
        self.server.send(P.done(batch_id))

    def join(self, reply_url: str, spec: str, warm: int) -> None:
        """Connect to a new client and start the threads its batches will need, before its
        clock starts; then tell the server."""
        self.client(reply_url)
        if spec and warm:
            try:
                self.strategies.get(spec).warm(warm)
            except Exception as exc:  # a failed warm-up only costs speed; the batch will tell
                log.warning("%s: warming %s failed: %s", self.name, spec, exc)
        self.server.send(P.joined(reply_url))

    def client(self, url: str) -> zmq.Socket:
        """The PUSH socket to a client, kept (a few) so each client is connected once."""
        sock = self.clients.get(url)
        if sock is None:
            sock = self.socket(zmq.PUSH, sndtimeo=RESULT_SEND_TIMEOUT_MS, curve_server=False)
            sock.connect(url)
            self.clients[url] = sock
            if len(self.clients) > MAX_CLIENT_SOCKETS:
                _, old = self.clients.popitem(last=False)
                self.close_socket(old)
        else:
            self.clients.move_to_end(url)
        return sock

    def teardown(self):
        self.strategies.close()


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def main(server_url: str, name: str, log_level: int = logging.WARNING, security=None) -> None:
    """Entry point of a worker process (a multiprocessing target: lives in the package)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the server's
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    Worker(server_url, name, security=security).run()
