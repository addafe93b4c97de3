"""The lab's client process: runs one client per request, for as long as the lab lives.

The lab starts it once per experiment (``python -m comlab.lab.agent``) instead of one client process
per run, so a run costs no interpreter start-up (0.3 s here). Requests and answers are
length-prefixed msgpack frames on stdin/stdout: a request carries the run's keys packed
(protocol.Keys) when they change, and the path of the file the client streams its accepted
results to (client.ResultLog); the answer describes the run, and the lab reads the results from
that file, so the agent's memory stays small however many tasks a run has; stdin closing means the lab is gone, and the
agent exits, so a killed notebook kernel leaves nothing behind.

It notices the lab's end even in the middle of a run (when it reads nothing from stdin): a
thread waits for the pipe's hang-up (poll with no events: POLLHUP) and PR_SET_PDEATHSIG (Linux)
covers a lab whose pipe some other process still holds open; either sends the main thread
SIGTERM, which ends the run at once (the client's sockets are closed, bounded). A lab that stops
the agent says BYE before closing the pipe; a pipe that closes without it means the lab died,
and the agent then removes the lab's working directory (``--workdir``): a SIGKILLed lab cannot,
and its server never owned it. (Asking for the parent pid instead races: a killed lab's pipe
closes before its children are re-parented.)
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import shutil
import signal
import struct
import sys
import threading

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


class LabGone(BaseException):
    """The lab closed our stdin or died: stop whatever is running (not an Exception, so no
    ``except Exception`` on the way catches it)."""


BYE = {"bye": True}  # the lab's last frame when it stops the agent (it is alive)
_BYE_BYTES = _LEN.pack(len(msgpack.packb(BYE))) + msgpack.packb(BYE)
_bye_seen = False


def serve(inp, out, security=None) -> None:
    global _bye_seen
    from ..system.client import Client, NoServer
    from ..system.protocol import Keys
    keys = None
    while (req := read_frame(inp)) is not None:
        if req == BYE:
            _bye_seen = True
            return
        if "keys_blob" in req:  # packed keys: a million keys cost their bytes, not 1M strs
            keys = Keys.from_sizes(req.pop("keys_blob"), req.pop("keys_sizes"))
        try:
            run = Client(keys, req["batch_size"], req["bind_url"], req["server_url"],
                         timeout=req["timeout"], rate=req.get("rate"),
                         schedule=req.get("schedule"), task_offsets=req.get("task_offsets"),
                         log_path=req["log_path"], security=security).run()
            answer = {"ok": True, "run": run.describe()}
        except (NoServer, ValueError, OSError) as exc:
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        write_frame(out, answer)


def _lab_gone(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the teardown must not be cut short
    raise LabGone


def _die_with_parent() -> None:
    """SIGTERM this process when the lab (its parent) dies (Linux; elsewhere the pipe tells)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _watch_hangup(fd: int) -> None:
    """Block until the lab's end of the pipe is closed, then stop the agent, even mid-run.

    SIGTERM must land on the main thread: only there does it interrupt the blocking poll of a
    run (a signal taken by another thread runs its Python handler only once the main thread
    wakes up, at the run's next result or its deadline). So this thread blocks it (libzmq's
    threads block every signal), and signals the main thread directly."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    poller = select.poll()
    poller.register(fd, 0)  # no events asked: only POLLHUP / POLLERR / POLLNVAL wake us
    while True:
        try:
            if poller.poll():
                break
        except InterruptedError:
            continue
    signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)


def _bye_pending(fd: int) -> bool:
    """Is the lab's BYE still unread in the pipe (it came while a run was going)?"""
    data = b""
    try:
        os.set_blocking(fd, False)
        while chunk := os.read(fd, 65536):
            data += chunk
    except OSError:
        pass
    return _BYE_BYTES in data


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m comlab.lab.agent")
    p.add_argument("--lab-pid", type=int, help="the lab's pid (our parent)")
    p.add_argument("--workdir", help="the lab's temporary files: removed if the lab dies")
    p.add_argument("--curve-keys", metavar="DIR", help="CurveZMQ keys (the client's role)")
    args = p.parse_args(argv)
    security = None
    if args.curve_keys:
        from ..system.security import Curve
        security = Curve.load(args.curve_keys, role="client")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the lab decides when we stop
    signal.signal(signal.SIGTERM, _lab_gone)
    threading.Thread(target=_watch_hangup, args=(sys.stdin.fileno(),), daemon=True,
                     name="lab-hangup").start()
    _die_with_parent()
    try:
        if args.lab_pid is None or os.getppid() == args.lab_pid:  # the lab may be gone already
            serve(sys.stdin.buffer, sys.stdout.buffer, security)
    except (LabGone, BrokenPipeError):
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if args.workdir and not _bye_seen and not _bye_pending(sys.stdin.fileno()):
            shutil.rmtree(args.workdir, ignore_errors=True)  # the lab died: nobody else will


if __name__ == "__main__":
    main()
