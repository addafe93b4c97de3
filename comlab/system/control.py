"""The server's control socket (the lab's REQ/REP): ping, strategy, stats, clocks.

Requests and answers are ``protocol.Control`` / ``protocol.ControlReply``; a request that is not
one gets an "error" answer naming why, never an exception in the server.
"""

from __future__ import annotations

import time

from . import protocol as P, strategies

now = time.monotonic_ns


def answer(server, frame: bytes) -> bytes:
    try:
        req = P.decode(frame, (P.Control,))
        return P.ControlReply(req.op, _answer(server, req.op, req.args)).pack()
    except Exception as exc:
        return P.ControlReply("error", P.preview(str(exc))).pack()


def _answer(server, op: str, args: list):
    if op == "ping":
        return server.info()
    if op == "strategy":
        server.intake.strategy = strategies.check(args[0] if args else None)
        return server.intake.strategy
    if op == "clock":
        return now()
    if op == "clock-workers":
        local = server.pool.idents()
        idle = set(server.ledger.idle)
        chosen: dict[str, bytes] = {}
        for ident, w in server.ledger.workers.items():
            if ident not in local and (w.host not in chosen or ident in idle):
                chosen[w.host] = ident
        return server.liveness.sample_clocks(chosen, int(args[0]))
    if op == "worker-clocks":
        return server.liveness.clocks
    if op == "stats":  # counters, what waits where, who is there
        ledger = server.ledger
        return {**server.stats, **ledger.counts, "dispatch": server.dispatch,
                "pending": len(ledger.pending), "queued": server.policy.queued(),
                "busy": ledger.busy() + server.policy.busy(), "idle": len(ledger.idle),
                "clients": len(server.clients), "client_drops": server.clients.dropped,
                "refused_pongs": server.liveness.refused_pongs,
                "workers": [{"name": w.name, "host": w.host, "pid": w.pid}
                            for w in ledger.workers.values()],
                "quarantined_workers": list(ledger.quarantined.values())[-64:]}
    raise P.ProtocolError(f"unknown control request {P.preview(op)}")
