"""Noticing lost workers off the hot path, and sampling remote worker hosts' clocks.

A lost connection (peer killed: at once; host cut off or process stopped: after the ZMTP
heartbeat timeout) shows on a monitor of the server's worker ROUTER. The server then probes its
workers: a PING with no stamp, which a worker ignores; with ROUTER_MANDATORY the send to a
peer whose connection is gone fails (EHOSTUNREACH), and the ledger retries its batch. The
probes run now and twice more shortly after, because the ROUTER may learn of a dead pipe a
little after the monitor event arrives.

Clock sampling: PING with the server's monotonic_ns, answered PONG with the worker's; the
least-round-trip sample per host is kept (its error is at most half that round trip).
"""

from __future__ import annotations

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
        self.clocks, self._clock_left = {}, {}
        for ident in chosen.values():
            self._clock_left[ident] = max(1, samples) - 1
            self.send(ident, Ping(now()).pack())
        return sorted(chosen)

    def pong(self, ident: bytes, host: str, t0: int, t_worker: int) -> None:
        """offset = worker clock - server clock at the midpoint of the round trip."""
        t3 = now()
        rtt = t3 - t0
        if rtt < 0:
            return  # not a stamp of ours
        best = self.clocks.setdefault(host, {"offset_ns": 0, "rtt_ns": None, "samples": 0})
        best["samples"] += 1
        if best["rtt_ns"] is None or rtt < best["rtt_ns"]:
            best["rtt_ns"], best["offset_ns"] = rtt, t_worker - (t0 + t3) // 2
        left = self._clock_left.get(ident, 0)
        if left > 0:
            self._clock_left[ident] = left - 1
            self.send(ident, Ping(now()).pack())
