"""Every message comlab puts on a socket, in one place.

Encoding is msgpack; never pickle. Measured with ``python -m bench.wire`` (one PUSH/PULL hop over
tcp loopback, encode + decode on each end): msgpack 196 k msg/s, orjson 188 k, json 76 k, raw
bytes 394 k (2 busy cores). orjson is on par but cannot carry bytes and would add a dependency. Each message is one frame holding a
msgpack array whose first two items are the protocol VERSION and a one-letter type. Lists inside
are columnar (one list per field) because msgpack packs and unpacks a list of ints far faster than
a list of small lists, and the hot paths never build per-task objects.

All stamps are integers from ``time.monotonic_ns()`` (CLOCK_MONOTONIC, shared by every process on
a Linux host).

Client -> server (client PUSH, server PULL):
  HELLO   [V, "H", reply_url, warm]                        ask for WELCOME on reply_url, once
                                                           every idle worker is connected to it
                                                           and has `warm` threads ready (the
                                                           batch size; 0: none)
  BATCH   [V, "B", batch_id, reply_url, t_sent, task_ids, keys]
          keys are "ip:command" strings, task_ids ints; reply_url "" = the server's default.

Server -> client (server PUSH to reply_url):
  WELCOME [V, "O", info]                                   info: dict (server version, workers)
  RESULTS (below), sent by the server itself for tasks no worker needs to run
          (unknown, unreachable, and failed after a lost worker).

Server <-> worker (server ROUTER, worker DEALER; the Guide's load-balancing pattern):
  READY   [V, "Y", name, host, pid]                        worker -> server, once at start
  DONE    [V, "D", batch_id]                               worker -> server: batch sent, ready again
  WORK    [V, "W", batch_id, reply_url, strategy, t_sent, t_server_in, t_enqueued, attempt,
           task_ids, responses, waits]                     server -> worker
  CONNECT [V, "C", reply_url, strategy, warm]             server -> worker: connect to a client
                                                           and warm the strategy; answer JOINED
  JOINED  [V, "J", reply_url]                              worker -> server: done with CONNECT
  STOP    [V, "S"]                                         server -> worker
  PING    [V, "P", t]                                      server -> worker. t None: a probe,
                                                           ignored (with ROUTER_MANDATORY the
                                                           send itself fails, EHOSTUNREACH, when
                                                           the worker's connection is gone);
                                                           t = the server's monotonic_ns: answer
                                                           PONG (clock offset estimation)
  PONG    [V, "Q", t, t_worker]                            worker -> server: t echoed, t_worker
                                                           the worker's monotonic_ns on receipt
  A worker sends READY again whenever its connection is re-established (server restarted,
  network back): a server that does not know it then takes it on; DONE from a worker the server
  does not know is dropped.

Worker (or server) -> client:
  RESULTS [V, "R", batch_id, worker, host, attempt, t_sent, t_server_in, t_enqueued,
           task_ids, statuses, responses, t_started, t_finished, errors]
          statuses are STATUS codes; errors is None or a list of str/None per task.

Control (lab -> server, REQ/REP over the control URL):
  [V, "ping"] -> [V, "pong", info]
  [V, "strategy", name] -> [V, "ok", name]
  [V, "stats"] -> [V, "stats", dict]
  [V, "clock"] -> [V, "clock", t]                          t: the server's monotonic_ns
  [V, "clock-workers", k] -> [V, "ok", hosts]              start k PING/PONG round trips with
                                                           one worker of each remote host
  [V, "worker-clocks"] -> [V, "worker-clocks", {host: {"offset_ns", "rtt_ns", "samples"}}]
          offset_ns = that host's clock - the server's, from the sample with the least rtt_ns
"""

from __future__ import annotations

import msgpack

VERSION = 1

HELLO, WELCOME, BATCH, READY, DONE, WORK, CONNECT, JOINED, STOP, RESULTS = "HOBYDWCJSR"
PING, PONG = "PQ"

# Status codes on the wire; names are what records and reports use.
OK, UNKNOWN, UNREACHABLE, FAILED, LOST = range(5)
STATUS_NAMES = ("ok", "unknown", "unreachable", "failed", "lost")

# Bound on any message a comlab socket accepts (libzmq drops the peer above it).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_packer = msgpack.Packer(use_bin_type=True)
pack = _packer.pack


class ProtocolError(ValueError):
    """A message that is not a comlab message of this version."""


def unpack(frame: bytes) -> list:
    """Decode one frame; reject anything that is not a versioned comlab array."""
    try:
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several types for garbage
        raise ProtocolError(f"undecodable message ({len(frame)} bytes): {exc}") from None
    if not isinstance(msg, list) or len(msg) < 2:
        raise ProtocolError(f"not a comlab message: {_preview(msg)}")
    if msg[0] != VERSION:
        raise ProtocolError(f"protocol version {msg[0]!r}, expected {VERSION}")
    return msg


def _preview(obj, limit: int = 60) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "..."


def hello(reply_url: str, warm: int = 0) -> bytes:
    return pack([VERSION, HELLO, reply_url, warm])


def welcome(info: dict) -> bytes:
    return pack([VERSION, WELCOME, info])


def batch(batch_id: int, reply_url: str, t_sent: int, task_ids: list, keys: list) -> bytes:
    return pack([VERSION, BATCH, batch_id, reply_url, t_sent, task_ids, keys])


def ready(name: str, host: str, pid: int) -> bytes:
    return pack([VERSION, READY, name, host, pid])


def done(batch_id: int) -> bytes:
    return pack([VERSION, DONE, batch_id])


def connect(reply_url: str, strategy: str = "", warm: int = 0) -> bytes:
    return pack([VERSION, CONNECT, reply_url, strategy, warm])


def joined(reply_url: str) -> bytes:
    return pack([VERSION, JOINED, reply_url])


STOP_MESSAGE = pack([VERSION, STOP])
PROBE_MESSAGE = pack([VERSION, PING, None])


def ping(t: int) -> bytes:
    return pack([VERSION, PING, t])


def pong(t: int, t_worker: int) -> bytes:
    return pack([VERSION, PONG, t, t_worker])


def check_batch(msg: list) -> tuple:
    """Validate a BATCH; return (batch_id, reply_url, t_sent, task_ids, keys)."""
    if len(msg) != 7:
        raise ProtocolError(f"BATCH with {len(msg)} fields, expected 7")
    _, _, batch_id, reply_url, t_sent, task_ids, keys = msg
    if not (isinstance(batch_id, int) and isinstance(reply_url, str) and isinstance(t_sent, int)
            and isinstance(task_ids, list) and isinstance(keys, list)
            and len(task_ids) == len(keys)):
        raise ProtocolError(f"malformed BATCH {_preview(msg)}")
    return batch_id, reply_url, t_sent, task_ids, keys


def check_results(msg: list, n_tasks: int) -> list:
    """Validate a RESULTS a client received for a run of ``n_tasks``; return its task ids.

    Checks the shape (field count, scalar types, equal column lengths), that every task id is
    one the client sent and that every status is a final one (never LOST, which only the client
    assigns), so a stray or forged message is dropped as garbage instead of breaking the
    client's per-task columns later. Per-item checks run at C speed (len, min, max).
    """
    if len(msg) != 15 or msg[1] != RESULTS:
        raise ProtocolError(f"not a RESULTS message: {_preview(msg)}")
    (_, _, batch_id, _, _, attempt, t_sent, t_in, t_enq, ids, statuses, responses, starts, ends,
     errors) = msg
    if not all(isinstance(x, int) for x in (batch_id, attempt, t_sent, t_in, t_enq)):
        raise ProtocolError(f"malformed RESULTS {_preview(msg)}")
    columns = (ids, statuses, responses, starts, ends) + (() if errors is None else (errors,))
    if not all(isinstance(c, list) for c in columns) or len({len(c) for c in columns}) != 1:
        raise ProtocolError(f"RESULTS with malformed columns {_preview(msg)}")
    if ids and not (0 <= min(ids) and max(ids) < n_tasks):
        raise ProtocolError(f"RESULTS for task ids outside 0..{n_tasks - 1}: {_preview(ids)}")
    if statuses and not (OK <= min(statuses) and max(statuses) < LOST):
        raise ProtocolError(f"RESULTS with status codes outside {OK}..{LOST - 1}")
    return ids
