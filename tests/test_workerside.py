"""The server's workers' side on its own: a real ledger, a stand-in ROUTER, pool and liveness part;
no server, no process, no socket."""

from __future__ import annotations

import numpy as np
import zmq

from comlab.system import protocol as P
from comlab.system.dispatch import Broker
from comlab.system.ledger import Ledger
from comlab.system.server import COUNTERS
from comlab.system.workerside import FailedBatches, Outbox, WorkerSide


class Router:
    """Records (worker, message) pairs; a send to a worker in ``gone`` fails as ROUTER_MANDATORY
    makes it fail for a peer whose connection is gone."""

    def __init__(self, gone=()):
        self.gone, self.sent, self._to = set(gone), [], None

    def send(self, frame, flags=0):
        if self._to is None:
            if frame in self.gone:
                raise zmq.ZMQError(zmq.EHOSTUNREACH)
            self._to = frame
        else:
            self.sent.append((self._to, P.decode(frame)))
            self._to = None


class Pool:
    local: set = set()

    def __init__(self):
        self.killed = []

    def idents(self):
        return set(self.local)

    def kill(self, ident):
        self.killed.append(ident)


class Clients:
    def __init__(self):
        self.sent = []

    def send(self, url, frame):
        self.sent.append((url, P.decode(frame)))
        return True


def work(batch_id):
    return P.work(1, batch_id, "tcp://c:1", "sequential", [batch_id], [7], [0.5])


def build(gone=()):
    stats, clients, waited = dict.fromkeys(COUNTERS, 0), Clients(), []
    outbox = Outbox(Router(gone))
    ledger = Ledger(outbox.give, FailedBatches(clients, stats).fail, policy=Broker("0"))
    side = WorkerSide(outbox, ledger, liveness=None, pool=Pool(), stats=stats,
                      stop_waiting_for=waited.append)
    return side, ledger, clients, waited


def batch_ids(msg) -> list:
    return np.frombuffer(msg.heads, P.HEAD)["batch_id"].tolist()


def test_batches_go_out_in_one_work_per_worker_and_pass():
    side, ledger, _, _ = build()
    side.on_frame(b"a", P.Ready("a", "h", 1).pack())
    ledger.submit(work(1))
    assert list(side.outbox) == [b"a"] and side.outbox.router.sent == []  # held until flush
    side.flush()
    assert [(i, type(m), batch_ids(m)) for i, m in side.outbox.router.sent] == \
        [(b"a", P.Assign, [1])]
    assert not side.outbox


def test_an_unreachable_worker_is_lost_and_its_batch_goes_to_another_in_the_same_flush():
    side, ledger, _, _ = build(gone={b"a"})
    for ident in (b"a", b"b"):
        side.on_frame(ident, P.Ready(ident.decode(), "h", 1).pack())
    ledger.submit(work(1))  # to the first idle worker: a, whose connection is gone
    ledger.submit(work(2))
    side.flush()
    assert side.pool.killed == [b"a"] and b"a" not in ledger.workers
    sent = [(i, batch_ids(m)) for i, m in side.outbox.router.sent]
    assert sent[0] == (b"b", [2]) and not side.outbox
    side.on_frame(b"b", P.Done(1, 2).pack())  # b finished 2: it is given 1, the undelivered one
    side.flush()
    assert [(i, batch_ids(m)) for i, m in side.outbox.router.sent][1:] == [(b"b", [1])]


def test_a_worker_lost_twice_fails_its_batch_once_and_hellos_stop_waiting():
    side, ledger, clients, waited = build()
    side.on_frame(b"a", P.Ready("a", "h", 1).pack())
    ledger.submit(work(1))
    side.flush()
    side.lost(b"a", "test")
    side.on_frame(b"b", P.Ready("b", "h", 1).pack())  # takes the retry
    side.flush()
    side.lost(b"b", "test")
    assert waited == [b"a", b"b"]
    assert side.stats["workers_lost"] == 2 and side.stats["failed"] == 1
    (url, msg), = clients.sent
    assert url == "tcp://c:1" and type(msg) is P.Results
    assert list(msg.statuses) == [P.FAILED]


def test_a_garbled_worker_message_costs_that_message():
    side, ledger, _, _ = build()
    ledger.mark_silent([b"a"])
    side.on_frame(b"a", b"\xc1 garbage")
    assert side.stats["dropped"] == 1 and ledger.silent == {b"a"}
    side.on_frame(b"a", P.Ready("a", "h", 1).pack())  # any message: it answers again
    assert ledger.silent == set() and b"a" in ledger.workers
