"""The lab's client process: runs one client per request, for as long as the lab lives.

The lab starts it once per experiment (``python -m comlab.agent``) instead of one client process
per run, so a run costs no interpreter start-up (0.3 s here). Requests and answers are
length-prefixed msgpack frames on stdin/stdout; stdin closing means the lab is gone, and the
agent exits, so a killed notebook kernel leaves nothing behind.
"""

from __future__ import annotations

import struct
import sys

import msgpack
import numpy as np

_LEN = struct.Struct("<Q")


def write_frame(stream, obj) -> None:
    data = msgpack.packb(obj, use_bin_type=True, default=_encode)
    _write_all(stream, _LEN.pack(len(data)) + data)
    stream.flush()


def _write_all(stream, data: bytes) -> None:
    """A raw stream (stdout under python -u) may take only part of a write: loop, or a short
    frame would leave the reader waiting for bytes that never come."""
    view = memoryview(data)
    while view:
        view = view[stream.write(view):]


def read_frame(stream):
    """One frame, or None at end of stream."""
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    (size,) = _LEN.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return msgpack.unpackb(data, raw=False, object_hook=_decode, strict_map_key=False)


def _encode(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return obj.tolist()
        return {"__nd__": obj.dtype.str, "data": obj.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _decode(obj):
    if "__nd__" in obj:
        return np.frombuffer(obj["data"], dtype=np.dtype(obj["__nd__"]))
    return obj


def serve(inp, out) -> None:
    from ..system.client import Client, NoServer
    keys = None
    while (req := read_frame(inp)) is not None:
        if "keys" in req:
            keys = req["keys"]
        try:
            run = Client(keys, req["batch_size"], req["bind_url"], req["server_url"],
                         timeout=req["timeout"], rate=req.get("rate")).run()
            answer = {"ok": True, "columns": run.columns(), "t_start": run.t_start,
                      "accepted": run.accepted,  # the lab checks the columns against it
                      "duplicates": run.duplicates, "garbage": run.garbage,
                      "server_info": run.server_info}
        except (NoServer, ValueError, OSError) as exc:
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        write_frame(out, answer)


def main() -> None:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the lab decides when we stop
    serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
