"""PUSH sockets to clients' result URLs, for the server and the workers alike.

One socket per URL, connected once and kept while that client is active; closed when it is done
(BYE, a FORGET from the server), gone (``disconnected``) or unused for ``idle_s``: a socket kept
to a departed client would make libzmq reconnect to it every 100 ms, forever. The number of
sockets is bounded: when the bound is reached the least recently used idle one is closed, and if
every one is in use the new client is refused (``TooManyClients``), never silently evicted:
closing a socket discards what is still queued on it.

Sends never block: a client that is not taking results (high-water mark reached, or nobody
listening at that URL) costs that client its message, counted, never the sender's time.

With ``monitor`` (the server's sockets) a socket's connection is watched both ways: ``connected``
holds the URLs someone listens at. What is queued to URLs nobody connected to is bounded in
bytes (``MAX_UNCONNECTED_BYTES`` over all of them) and freed when the owner lets go of a URL that
never connected (``unconnected``). When every socket is taken, room is made by closing first a
socket that never connected (after ``CONNECT_GRACE_S``), then one whose run never sent a batch
(``fed``; after ``UNFED_GRACE_S``), then the least recently used idle one; ``on_evict(url, why)``
hears of the first two (their runs end), so a flood of HELLOs costs the flood, not the clients.
"""

from __future__ import annotations

import logging
import sys
import time

import zmq

from .protocol import ProtocolError

log = logging.getLogger("comlab.clients")

MAX_UNCONNECTED_BYTES = 16 * 1024 * 1024  # queued to URLs nobody listens at, all of them
CONNECT_GRACE_S = 0.5  # a URL not connected after this may give its socket to another client
UNFED_GRACE_S = 2.0    # ... a run with no batch this long after its HELLO (the WELCOME waits
                       # for workers at most 1 s; a client sends its first batch right after)
_CONNECTED, _DISCONNECTED = int(zmq.EVENT_CONNECTED), int(zmq.EVENT_DISCONNECTED)


class TooManyClients(ProtocolError):
    """Every client socket is in use: the new client cannot be answered."""


class ClientSockets:
    def __init__(self, role, *, max_clients: int = 256, idle_s: float = 60.0,
                 min_idle_s: float = 5.0, monitor: bool = False, watch=None, unwatch=None,
                 linger_ms: int = 0, clock=time.monotonic, on_open=None, **options) -> None:
        """``role`` makes and closes sockets (comlab.system.role.Role); with ``monitor``, each
        socket gets a disconnect monitor passed to ``watch`` (see ``disconnected``);
        ``on_open(url, sock)`` is called for each new socket before it connects."""
        self.role = role
        self.max_clients, self.idle_s, self.min_idle_s = max_clients, idle_s, min_idle_s
        self.monitor, self.watch, self.unwatch = monitor, watch, unwatch
        self.linger_ms = linger_ms
        self.clock = clock
        self.on_open = on_open
        self.options = options
        self.socks: dict[str, zmq.Socket] = {}
        self.used: dict[str, float] = {}            # url -> last use
        self.monitors: dict[zmq.Socket, str] = {}   # monitor socket -> url
        self.dropped = 0
        self.opened: dict[str, float] = {}          # url -> when its socket was made
        self.connected: set[str] = set()            # urls someone listens at (monitor only)
        self.fed: set[str] = set()                  # urls whose run sent a batch: the owner
        self.mark_fed = self.fed.add                # says so (per batch: a bare set.add)
        self.waiting: dict[str, int] = {}           # url not connected -> bytes queued to it
        self.waiting_bytes = 0
        self.on_connect = None                      # on_connect(url), on_evict(url, why)
        self.on_evict = None

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
            sock = self.get(url)
            if self.monitor and url not in self.connected and not self._wait(url, len(frame)):
                return False
            sock.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.dropped += 1
            log.warning("client %s is not taking results: one message dropped", url)
        except ProtocolError as exc:
            self.dropped += 1
            log.warning("no socket to client %s: %s", url, exc)
        return False

    def _wait(self, url: str, size: int) -> bool:
        """Count bytes queued to a URL nobody connected to yet; False (dropped) above the bound."""
        if self.waiting_bytes + size > MAX_UNCONNECTED_BYTES:
            self.dropped += 1
            log.warning("client %s: nobody listens there and %d bytes already wait for such "
                        "clients: one message dropped", url[:80], self.waiting_bytes)
            return False
        self.waiting[url] = self.waiting.get(url, 0) + size
        self.waiting_bytes += size
        return True

    def send_once(self, url: str, frame: bytes, linger_ms: int = 1000) -> None:
        """Send on a socket of its own, closed at once (an answer to a client there is no
        room for); nothing if the URL is refused."""
        sock = self.role.socket(zmq.PUSH, curve_server=False)
        try:
            sock.connect(url)
            sock.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        finally:
            self.role.close_socket(sock, linger_ms=linger_ms)

    def release(self, url: str, linger_ms: int | None = None) -> None:
        sock = self.socks.pop(url, None)
        self.used.pop(url, None)
        self.opened.pop(url, None)
        self.connected.discard(url)
        self.fed.discard(url)
        self.waiting_bytes -= self.waiting.pop(url, 0)
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
        """Read a monitor's events; the URL whose client went away, if any. A connection made
        marks the URL ``connected`` (and tells ``on_connect``)."""
        url = self.monitors.get(mon)
        gone = came = False
        while True:
            try:
                event = mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            kind = int.from_bytes(event[0][:2], sys.byteorder) if event and event[0] else -1
            if kind == _CONNECTED:
                came = True
            else:
                gone = True
        if url is None:
            return None
        if gone:
            return url
        if came and url not in self.connected and url in self.socks:
            self.connected.add(url)
            self.waiting_bytes -= self.waiting.pop(url, 0)
            if self.on_connect is not None:
                self.on_connect(url)
        return None

    def unconnected(self, after_s: float) -> list[str]:
        """URLs whose socket has not connected within ``after_s`` of being made."""
        t = self.clock()
        return [u for u, t0 in self.opened.items() if u not in self.connected and t - t0 > after_s]

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
        if self.on_open is not None:
            self.on_open(url, sock)
        mon = None
        if self.monitor:  # before connecting: the connection's event must not be missed
            mon = self.role.own(sock.get_monitor_socket(zmq.EVENT_CONNECTED
                                                        | zmq.EVENT_DISCONNECTED))
        try:
            sock.connect(url)
        except zmq.ZMQError as exc:
            if mon is not None:
                sock.disable_monitor()
                self.role.close_socket(mon, 0)
            self.role.close_socket(sock, 0)
            raise ProtocolError(f"bad reply URL {url[:80]!r}: {exc.strerror}") from None
        self.socks[url] = sock
        self.opened[url] = self.clock()
        if mon is not None:
            self.monitors[mon] = url
            if self.watch is not None:
                self.watch(mon)
        return sock

    def _make_room(self) -> None:
        t = self.clock()
        lonely = unfed = ()  # only the owner of a monitor knows (the server)
        if self.monitor:
            lonely = [(t0, u) for u, t0 in self.opened.items()
                      if t - t0 >= CONNECT_GRACE_S and u not in self.connected]
            unfed = [(t0, u) for u, t0 in self.opened.items()
                     if t - t0 >= UNFED_GRACE_S and u not in self.fed]
        for found, why in ((lonely, "nobody listens at its URL"), (unfed, "no batch since HELLO")):
            if found:
                url = min(found)[1]
                self.release(url)
                if self.on_evict is not None:
                    self.on_evict(url, why)
                return
        idle = [(used, u) for u, used in self.used.items() if t - used >= self.min_idle_s]
        if not idle:
            raise TooManyClients(f"{len(self.socks)} clients active: no room for another")
        self.release(min(idle)[1])
