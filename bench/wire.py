"""Single-hop PUSH/PULL over tcp loopback: raw bytes vs send_json vs msgpack (vs orjson).

    python -m bench.wire [--messages 200000]

The measurement behind comlab's wire format (comlab/system/protocol.py): each encoder packs and
unpacks a BATCH-shaped message on both ends; "comlab named" is what comlab does (a named
``protocol.Batch`` built and packed, then decoded into one and checked).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

import msgpack
import zmq

SAMPLE = [3, "B", 4242, "tcp://127.0.0.1:5556", 12345, (7).to_bytes(8, "little"),
          ["192.168.1.7:foo"]]


def _codecs():
    codecs = {"raw bytes": (None, None),
              "json": (lambda o: json.dumps(o[:5] + [7] + o[6:]).encode(), json.loads),
              "msgpack": (msgpack.Packer(use_bin_type=True).pack,  # as comlab.protocol does
                          lambda b: msgpack.unpackb(b, raw=False, strict_map_key=False))}
    from comlab.system import protocol as P
    codecs["comlab named"] = (  # a named message built, packed, decoded and checked per message
        lambda o: P.Batch(*o[2:]).pack(),
        lambda b: P.check_batch(P.decode(b, (P.Batch,))))
    try:
        import orjson
        codecs["orjson"] = (orjson.dumps, orjson.loads)
    except ImportError:
        pass
    return codecs


def _sink(url: str, name: str, n: int, ready) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.bind(url)
    ready.set()
    decode = _codecs()[name][1]
    for _ in range(n):
        frame = sock.recv()
        if decode is not None:
            decode(frame)
    sock.close(0)
    ctx.term()


def measure(name: str, n: int) -> float:
    """Messages per second from first send to the sink's last receive."""
    ctx = zmq.Context()
    probe = ctx.socket(zmq.PULL)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(0)
    url = f"tcp://127.0.0.1:{port}"
    ready = mp.get_context("spawn").Event()
    sink = mp.get_context("spawn").Process(target=_sink, args=(url, name, n, ready))
    sink.start()
    ready.wait(10)
    sock = ctx.socket(zmq.PUSH)
    sock.connect(url)
    encode = _codecs()[name][0]
    raw = msgpack.packb(SAMPLE)
    t0 = time.perf_counter()
    for _ in range(n):
        sock.send(raw if encode is None else encode(SAMPLE))
    sink.join(60)
    elapsed = time.perf_counter() - t0
    sock.close(0)
    ctx.term()
    return n / elapsed


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=200_000)
    args = p.parse_args(argv)
    print(f"{'encoding':<12} {'msg/s':>12}  (single hop PUSH/PULL, tcp loopback, "
          f"{len(msgpack.packb(SAMPLE))}-byte message)")
    for name in _codecs():
        print(f"{name:<12} {measure(name, args.messages):>12,.0f}")


if __name__ == "__main__":
    main()
