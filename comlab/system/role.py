"""The life cycle every comlab process shares: setup, loop, teardown.

A role (server, worker, client) fills in the three steps; this base owns the ZeroMQ context and
every socket, so teardown is the same everywhere: linger set before close, and a bounded
``ctx.term()`` (it can hang while a socket with pending messages remains, pyzmq #102/#991).
The context is created in ``run()``, i.e. in the process that uses it, never inherited.
"""

from __future__ import annotations

import logging
import os
import socket as _socket
import threading

import zmq

from . import protocol

log = logging.getLogger("comlab")

# The name stamped on READY and RESULTS; COMLAB_HOST overrides it for hosts sharing a host name
# (network namespaces, containers), since clock offsets are kept per host name.
HOST = os.environ.get("COMLAB_HOST") or _socket.gethostname()


class AddressInUse(OSError):
    """A bind failed; the message names the URL."""


class Role:
    linger_ms = 0
    term_timeout_s = 1.0

    ctx: zmq.Context

    def __init__(self) -> None:
        self._sockets: list[zmq.Socket] = []
        self.security = None  # a comlab.system.security.Curve, when keys are configured

    # -- the template ---------------------------------------------------------------------
    def run(self):
        self.ctx = None
        try:
            self.prepare()
            self.ctx = zmq.Context()
            self.setup()
            return self.loop()
        finally:
            try:
                self.teardown()
            finally:
                self._close()

    def prepare(self) -> None:
        """Work that must happen before the process has a context (and so threads): forking."""

    def setup(self) -> None:
        pass

    def loop(self):
        raise NotImplementedError

    def teardown(self) -> None:
        pass

    # -- helpers for the steps ------------------------------------------------------------
    def socket(self, kind: int, *, bind: str | None = None, connect: str | None = None,
               curve_server: bool | None = None, **options) -> zmq.Socket:
        """A socket owned by this role: closed with linger at teardown."""
        sock = self.ctx.socket(kind)
        self._sockets.append(sock)
        sock.setsockopt(zmq.LINGER, self.linger_ms)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name.upper()), value)
        if self.security is not None and curve_server is not None:
            if curve_server:
                self.security.ensure_auth(self.ctx)  # ZAP: before any peer can connect
            self.security.apply(sock, server=curve_server)
        if bind is not None:
            bind_or_explain(sock, bind)
        if connect is not None:
            sock.connect(connect)
        return sock

    def own(self, sock: zmq.Socket) -> zmq.Socket:
        """Take a socket made elsewhere (a monitor) into this role's teardown."""
        self._sockets.append(sock)
        return sock

    def close_socket(self, sock: zmq.Socket, linger_ms: int | None = None) -> None:
        if sock in self._sockets:
            self._sockets.remove(sock)
        sock.close(self.linger_ms if linger_ms is None else linger_ms)

    def _close(self) -> None:
        for sock in self._sockets:
            sock.close(self.linger_ms)
        self._sockets.clear()
        if self.security is not None:
            self.security.stop_auth()
        if self.ctx is not None:
            terminate_context(self.ctx, self.term_timeout_s)


def bind_or_explain(sock: zmq.Socket, url: str) -> str:
    """Bind, turning libzmq's terse errors into one that names the URL; return the endpoint."""
    try:
        sock.bind(url)
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EADDRINUSE:
            raise AddressInUse(exc.errno, f"address already in use: {url}") from None
        raise OSError(exc.errno, f"cannot bind {url}: {exc.strerror}") from None
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def terminate_context(ctx: zmq.Context, timeout_s: float) -> None:
    """ctx.term() in a thread, waited for at most timeout_s: a stuck term must not hang exit."""
    t = threading.Thread(target=ctx.term, daemon=True, name="zmq-term")
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        log.warning("zmq context did not terminate within %.1f s (pid %d)", timeout_s, os.getpid())
