"""Raw pyzmq REQ/REP round trip over tcp loopback: the floor under any per-task latency.

A REP echo runs in its own (spawned) process, as comlab's server does; the calling process
sends a small msgpack message on a REQ socket and times each round trip with perf_counter_ns
after a warm-up. ``round_trips(n)`` returns the n round trips in seconds.
"""

from __future__ import annotations

import multiprocessing
import time

import msgpack
import numpy as np
import zmq

from .bare import die_with_parent


def _echo(port_conn) -> None:
    die_with_parent()
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    port_conn.send(rep.bind_to_random_port("tcp://127.0.0.1"))
    port_conn.close()
    while (frame := rep.recv()) != b"":
        rep.send(frame)
    rep.send(b"")
    rep.close(linger=500)
    ctx.term()


def round_trips(n: int = 2000, warmup: int = 200, timeout: float = 30.0) -> np.ndarray:
    """n REQ/REP round trips over tcp://127.0.0.1, seconds each."""
    mp = multiprocessing.get_context("spawn")
    mine, theirs = mp.Pipe(duplex=False)
    proc = mp.Process(target=_echo, args=(theirs,), daemon=True, name="reqrep-echo")
    proc.start()
    theirs.close()
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    try:
        if not mine.poll(timeout):
            raise RuntimeError(f"REP echo not up within {timeout:g} s")
        req.connect(f"tcp://127.0.0.1:{mine.recv()}")
        msg = msgpack.packb([1, "B", 0, "tcp://127.0.0.1:5556", time.monotonic_ns(), [0],
                             ["192.168.1.1:foo"]])
        out = np.empty(n, dtype=np.int64)
        clock, send, recv, poll = time.perf_counter_ns, req.send, req.recv, req.poll
        for i in range(-warmup, n):
            t0 = clock()
            send(msg)
            if not poll(timeout * 1000):
                raise RuntimeError(f"no REP answer within {timeout:g} s")
            recv()
            if i >= 0:
                out[i] = clock() - t0
        req.send(b"")
        req.poll(1000)
        return out / 1e9
    finally:
        mine.close()
        req.close(0)
        ctx.term()
        proc.join(2.0)
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)


def percentiles(samples: np.ndarray) -> dict:
    return {"p50_s": float(np.percentile(samples, 50)), "p99_s": float(np.percentile(samples, 99)),
            "p99.9_s": float(np.percentile(samples, 99.9)), "n": int(len(samples))}


if __name__ == "__main__":
    print({k: (v * 1e6 if k != "n" else v) for k, v in percentiles(round_trips()).items()})
