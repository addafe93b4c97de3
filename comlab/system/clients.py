"""PUSH sockets to clients' result URLs, for the server and the workers alike.

One socket per URL, connected once and kept while that client is active; closed when it is done
(BYE, a FORGET from the server), gone (``disconnected``) or unused for ``idle_s``: a socket kept
to a departed client would make libzmq reconnect to it every 100 ms, forever. The number of
sockets is bounded: when the bound is reached the least recently used idle one is closed, and if
every one is in use the new client is refused (``TooManyClients``), never silently evicted:
closing a socket discards what is still queued on it.

Sends never block: a client that is not taking results (high-water mark reached, or nobody
listening at that URL) costs that client its message, counted, never the sender's time.
"""

from __future__ import annotations

import logging
import time

import zmq

from .protocol import ProtocolError

log = logging.getLogger("comlab.clients")


class TooManyClients(ProtocolError):
    """Every client socket is in use: the new client cannot be answered."""


class ClientSockets:
    def __init__(self, role, *, max_clients: int = 256, idle_s: float = 60.0,
                 min_idle_s: float = 5.0, monitor: bool = False, watch=None, unwatch=None,
                 linger_ms: int = 0, clock=time.monotonic, opened=None, **options) -> None:
        """``role`` makes and closes sockets (comlab.system.role.Role); with ``monitor``, each
        socket gets a disconnect monitor passed to ``watch`` (see ``disconnected``);
        ``opened(url, sock)`` is called for each new socket before it connects."""
        self.role = role
        self.max_clients, self.idle_s, self.min_idle_s = max_clients, idle_s, min_idle_s
        self.monitor, self.watch, self.unwatch = monitor, watch, unwatch
        self.linger_ms = linger_ms
        self.clock = clock
        self.opened = opened
        self.options = options
        self.socks: dict[str, zmq.Socket] = {}
        self.used: dict[str, float] = {}            # url -> last use
        self.monitors: dict[zmq.Socket, str] = {}   # monitor socket -> url
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.socks)

    def get(self, url: str) -> zmq.Socket:
        """The socket to ``url``; ProtocolError for a URL libzmq refuses (or none at all)."""
        sock = self.socks.get(url)
        if sock is None:
            sock = self._open(url)
        self.used[url] = self.clock()
        return sock

    def send(self, url: str, frame: bytes) -> bool:
        """Send without blocking; False (counted, logged) when the client takes nothing."""
        try:
            self.get(url).send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.dropped += 1
            log.warning("client %s is not taking results: one message dropped", url)
        except ProtocolError as exc:
            self.dropped += 1
            log.warning("no socket to client %s: %s", url, exc)
        return False

    def release(self, url: str, linger_ms: int | None = None) -> None:
        sock = self.socks.pop(url, None)
        self.used.pop(url, None)
        if sock is None:
            return
        for mon, u in list(self.monitors.items()):
            if u == url:
                del self.monitors[mon]
                if self.unwatch is not None:
                    self.unwatch(mon)
                # Stop monitoring before closing the monitor's end: libzmq can wedge its I/O
                # thread on events for a closed monitor (every socket of the process stalled).
                sock.disable_monitor()
                self.role.close_socket(mon, 0)
        self.role.close_socket(sock, self.linger_ms if linger_ms is None else linger_ms)

    def disconnected(self, mon: zmq.Socket) -> str | None:
        """Read a monitor's events; the URL whose client went away, if any."""
        url = self.monitors.get(mon)
        gone = False
        while True:
            try:
                mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            gone = True
        return url if gone else None

    def expire(self, in_use=()) -> list[str]:
        """Close sockets unused for ``idle_s`` (except ``in_use`` URLs); their URLs."""
        t = self.clock()
        old = [u for u, used in self.used.items() if t - used > self.idle_s and u not in in_use]
        for url in old:
            self.release(url)
        return old

    def close_all(self) -> None:
        for url in list(self.socks):
            self.release(url)

    def _open(self, url: str) -> zmq.Socket:
        if not url:
            raise ProtocolError("no reply URL, and the server has no default one")
        if len(self.socks) >= self.max_clients:
            self._make_room()
        sock = self.role.socket(zmq.PUSH, curve_server=False, **self.options)
        if self.opened is not None:
            self.opened(url, sock)
        try:
            sock.connect(url)
        except zmq.ZMQError as exc:
            self.role.close_socket(sock, 0)
            raise ProtocolError(f"bad reply URL {url[:80]!r}: {exc.strerror}") from None
        self.socks[url] = sock
        if self.monitor:
            mon = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            self.role.own(mon)
            self.monitors[mon] = url
            if self.watch is not None:
                self.watch(mon)
        return sock

    def _make_room(self) -> None:
        t = self.clock()
        idle = [(used, u) for u, used in self.used.items() if t - used >= self.min_idle_s]
        if not idle:
            raise TooManyClients(f"{len(self.socks)} clients active: no room for another")
        self.release(min(idle)[1])
