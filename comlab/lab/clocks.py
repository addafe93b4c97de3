"""Clock offsets between hosts, so that stamps taken on several hosts land on one time line.

Every stamp is ``time.monotonic_ns()`` of the host that took it. CLOCK_MONOTONIC is one clock per
machine (every process of a host shares it) but unrelated between machines. Before each run the
lab estimates, NTP fashion, each host's offset against the client's clock:

* client <-> server: a few REQ/REP exchanges on the server's control socket (``"clock"``, which
  answers the server's ``monotonic_ns``); for a sample sent at t0 and answered at t1 (client
  clock) carrying the server's t, offset = t - (t0 + t1) / 2. The sample with the smallest round
  trip is kept; since t was read somewhere inside [t0, t1], its error is at most half that round
  trip, which is recorded as the uncertainty.
* server <-> each remote worker host: the same, run by the server over its ROUTER with PING/PONG
  (``"clock-workers"`` / ``"worker-clocks"``); a worker host's offset against the client is the
  sum of the two legs, and so is its uncertainty.

Stamps of a host whose name is the client's are left alone (the same clock, exactly); the others
are converted to the client's clock in ``records.build``. The estimates, applied or not, go into
the run's entry in meta.json.

Offsets come only from the server's own probes (comlab.system.liveness: a nonce per PING, the
routing id it went to), and an estimate that moved since the previous run of the session by more
than the two uncertainties plus clock drift (``DRIFT_PPM`` of the time between them) is flagged
in meta.json (``jump_s``, ``error``) and not applied: monotonic clocks do not jump, so either
the host restarted or someone lied. The next estimate that agrees with it is applied again.
"""

from __future__ import annotations

import time

from ..system.role import HOST

now = time.monotonic_ns

SAMPLES = 8
WORKER_CLOCK_TIMEOUT_S = 2.0
DRIFT_PPM = 500  # how far two hosts' monotonic clocks may drift apart (NTP's frequency bound)


def best_sample(exchange, samples: int = SAMPLES) -> tuple[int, int]:
    """(offset_ns, rtt_ns) of the least-round-trip sample; ``exchange()`` returns the remote
    clock's monotonic_ns."""
    best = None
    for _ in range(samples):
        t0 = now()
        t = exchange()
        t1 = now()
        rtt = t1 - t0
        if best is None or rtt < best[1]:
            best = (t - (t0 + t1) // 2, rtt)
    return best


def estimate(server, samples: int = SAMPLES, client_host: str = HOST,
             previous: dict | None = None) -> dict:
    """Offsets of the server's host and of every remote worker host against this host's clock.

    ``server`` is a ``ServerProcess`` (anything with ``control()`` and ``info["host"]``);
    ``previous`` a dict the caller keeps across runs (the last estimate per host: ``check_jumps``).
    Returns {"client_host", "server_host", "hosts": {host: {"offset_s", "uncertainty_s",
    "via", "applied"}}, "offsets_ns": {host: offset to subtract}} (offsets_ns holds the applied
    ones only: empty when every host is the client's).
    """
    server_host = server.info["host"]
    offset, rtt = best_sample(lambda: server.control("clock"), samples)
    hosts = {server_host: {"offset_ns": offset, "uncertainty_ns": rtt // 2, "via": "control"}}
    remote = server.control("clock-workers", samples)
    if remote:
        deadline = time.monotonic() + WORKER_CLOCK_TIMEOUT_S
        while True:
            found = server.control("worker-clocks")
            if all(found.get(h, {}).get("samples", 0) >= samples for h in remote) \
                    or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        for host in remote:
            leg = found.get(host)
            if host == server_host:
                continue  # same name as the server: its direct estimate stands
            if not leg or leg.get("rtt_ns") is None:
                hosts[host] = {"offset_ns": None, "uncertainty_ns": None, "via": "server",
                               "error": "no PONG within "
                                        f"{WORKER_CLOCK_TIMEOUT_S:g} s: stamps not converted"}
                continue
            hosts[host] = {"offset_ns": offset + leg["offset_ns"],
                           "uncertainty_ns": rtt // 2 + leg["rtt_ns"] // 2, "via": "server"}
    if previous is not None:
        check_jumps(hosts, previous)
    offsets = {}
    out = {}
    for host, h in hosts.items():
        applied = host != client_host and h["offset_ns"] is not None and "jump_s" not in h
        if applied:
            offsets[host] = h["offset_ns"]
        out[host] = {**{k: v for k, v in h.items() if not k.endswith("_ns")},
                     "offset_s": None if h["offset_ns"] is None else h["offset_ns"] / 1e9,
                     "uncertainty_s": None if h["uncertainty_ns"] is None
                     else h["uncertainty_ns"] / 1e9,
                     "applied": applied}
    return {"client_host": client_host, "server_host": server_host, "hosts": out,
            "offsets_ns": offsets}


def check_jumps(hosts: dict, previous: dict, t: int | None = None) -> None:
    """Flag (``jump_s``, ``error``) each estimate in ``hosts`` ({host: {"offset_ns",
    "uncertainty_ns", ...}}) that moved since ``previous[host]`` by more than both
    uncertainties plus DRIFT_PPM of the time between them; ``previous`` becomes this estimate."""
    t = now() if t is None else t
    for host, h in hosts.items():
        if h["offset_ns"] is None:
            continue
        last = previous.get(host)
        previous[host] = {"offset_ns": h["offset_ns"], "uncertainty_ns": h["uncertainty_ns"],
                          "t": t}
        if last is None:
            continue
        moved = h["offset_ns"] - last["offset_ns"]
        allowed = (h["uncertainty_ns"] + last["uncertainty_ns"]
                   + (t - last["t"]) * DRIFT_PPM // 1_000_000)
        if abs(moved) > allowed:
            h["jump_s"] = moved / 1e9
            h["error"] = (f"offset moved by {moved / 1e9:+.6f} s since the last estimate, "
                          f"beyond its uncertainty ({allowed / 1e9:.6f} s): not applied")
