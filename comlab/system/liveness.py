"""Noticing lost workers off the hot path, and sampling remote worker hosts' clocks.

A lost connection (peer killed: at once; host cut off or process stopped: after the ZMTP
heartbeat timeout) shows on a monitor of the server's worker ROUTER. The server then probes its
workers: a PING with no stamp, which a worker ignores; with ROUTER_MANDATORY the send to a
peer whose connection is gone fails (EHOSTUNREACH), and the ledger retries its batch. The
probes run now and twice more shortly after, because the ROUTER may learn of a dead pipe a
little after the monitor event arrives.

Clock sampling: PING with a fresh random nonce, answered PONG with the nonce and the worker's
monotonic_ns; the least-round-trip sample per host is kept (its error is at most half that round
trip). A PONG counts only as the answer to a PING this server sent, with that nonce, to that
routing id, once: an unsolicited PONG (a peer claiming a host's name) moves no offset.
"""

from __future__ import annotations

import secrets
import time

from .protocol import PROBE_FRAME, Ping

now = time.monotonic_ns
PROBE_AGAIN_S = (0.05, 0.5)


class Liveness:
    def __init__(self, send) -> None:
        """``send(ident, frame) -> bool``: False when the worker is unreachable."""
        self.send = send
        self.probes: list[float] = []  # monotonic times of the next probes
        self.clocks: dict[str, dict] = {}
        self._clock_left: dict[bytes, int] = {}
        self._asked: dict[bytes, tuple[int, int]] = {}  # ident -> (nonce, t sent): one each
        self.refused_pongs = 0

    def disconnected(self, idents) -> list[bytes]:
        """A worker connection ended: probe now (the unreachable ones are returned) and again
        shortly."""
        t = time.monotonic()
        self.probes = [t + d for d in PROBE_AGAIN_S]
        return self.probe(idents)

    def probe(self, idents) -> list[bytes]:
        return [i for i in list(idents) if not self.send(i, PROBE_FRAME)]

    def timeout_ms(self, idents_now) -> tuple[float | None, list[bytes]]:
        """Run the probes that are due (on ``idents_now()``); (ms until the next, lost)."""
        if not self.probes:
            return None, []
        t = time.monotonic()
        lost = []
        if self.probes[0] <= t:
            while self.probes and self.probes[0] <= t:
                self.probes.pop(0)
            lost = self.probe(idents_now())
        left = max(0.0, self.probes[0] - t) * 1000 if self.probes else None
        return left, lost

    # -- clocks --------------------------------------------------------------------------------
    def sample_clocks(self, chosen: dict[str, bytes], samples: int) -> list[str]:
        """Start ``samples`` PING/PONG round trips with one worker per host (host -> ident)."""
        self.clocks, self._clock_left, self._asked = {}, {}, {}
        for ident in chosen.values():
            self._clock_left[ident] = max(1, samples) - 1
            self._ask(ident)
        return sorted(chosen)

    def _ask(self, ident: bytes) -> None:
        nonce = secrets.randbits(63)
        self._asked[ident] = (nonce, now())
        self.send(ident, Ping(nonce).pack())

    def pong(self, ident: bytes, host: str, nonce: int, t_worker: int) -> None:
        """offset = worker clock - server clock at the midpoint of the round trip; only for
        the PING last sent to ``ident`` (its nonce), each answered once."""
        t3 = now()
        asked = self._asked.get(ident)
        if asked is None or asked[0] != nonce:
            self.refused_pongs += 1  # unsolicited, replayed or someone else's: ignored
            return
        del self._asked[ident]
        t0 = asked[1]
        rtt = t3 - t0
        best = self.clocks.setdefault(host, {"offset_ns": 0, "rtt_ns": None, "samples": 0})
        best["samples"] += 1
        if best["rtt_ns"] is None or rtt < best["rtt_ns"]:
            best["rtt_ns"], best["offset_ns"] = rtt, t_worker - (t0 + t3) // 2
        left = self._clock_left.get(ident, 0)
        if left > 0:
            self._clock_left[ident] = left - 1
            self._ask(ident)
