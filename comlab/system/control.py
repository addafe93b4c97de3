"""The server's control socket (the lab's REQ/REP): ping, strategy, stats, clocks.

Requests and answers are ``protocol.Control`` / ``protocol.ControlReply``; a request that is not
one gets an "error" answer naming why, never an exception in the server. What the server is
doing is read from its ``snapshot()`` (plain data, formatted here); the two requests that act
go to the part that owns what they change (the intake's strategy, the liveness part's clocks).
"""

from __future__ import annotations

import time

from . import protocol as P, strategies

now = time.monotonic_ns


class Control:
    def __init__(self, info, snapshot, intake, liveness) -> None:
        """``info()`` the server's description (ping), ``snapshot()`` its state as plain data
        (see ``Server.snapshot``); ``intake`` runs the strategy, ``liveness`` samples clocks."""
        self.info, self.snapshot, self.intake, self.liveness = info, snapshot, intake, liveness

    def answer(self, frame: bytes = b"", *more: bytes) -> bytes:
        """Every request gets one answer (REP's lock-step): an "error" one for a request of
        more than one frame (not a comlab message; answering with the rest unread is EFSM)."""
        if more:
            return P.ControlReply("error", f"a request of {len(more) + 1} frames; a control "
                                           "request is one").pack()
        try:
            req = P.decode(frame, (P.Control,))
            return P.ControlReply(req.op, self._answer(req.op, req.args)).pack()
        except Exception as exc:
            return P.ControlReply("error", P.preview(str(exc))).pack()

    def _answer(self, op: str, args: list):
        if op == "ping":
            return self.info()
        if op == "strategy":
            self.intake.strategy = strategies.check(args[0] if args else None)
            return self.intake.strategy
        if op == "clock":
            return now()
        if op == "clock-workers":
            chosen: dict[str, bytes] = {}  # a remote host's idle worker if it has one
            for w in self.snapshot()["workers"]:
                if not w["local"] and (w["host"] not in chosen or w["idle"]):
                    chosen[w["host"]] = w["ident"]
            return self.liveness.sample_clocks(chosen, int(args[0]))
        if op == "worker-clocks":
            return self.liveness.clocks
        if op == "stats":  # counters, what waits where, who is there
            return stats(self.snapshot())
        raise P.ProtocolError(f"unknown control request {P.preview(op)}")


def stats(snap: dict) -> dict:
    """The "stats" answer: a snapshot without the routing ids."""
    return {**snap["counters"], **{k: snap[k] for k in (
        "dispatch", "pending", "queued", "busy", "idle", "clients", "client_drops",
        "refused_pongs")},
        "workers": [{"name": w["name"], "host": w["host"], "pid": w["pid"]}
                    for w in snap["workers"]],
        "quarantined_workers": snap["quarantined_workers"]}
