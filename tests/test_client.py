"""The client's parts without sockets: which RESULTS a run takes (client.Acceptance)."""

from __future__ import annotations

import numpy as np
import pytest

from comlab.system import protocol as P
from comlab.system.client import Acceptance, ClientRun

RUN, SECRET, N, SIZE = 7, b"s" * 16, 8, 2
SEAL = P.Seal(SECRET)


def results(batches, *, run=RUN, worker="w1", attempt=0, tamper=False, token=None,
            status=P.OK) -> bytes:
    """A RESULTS frame answering ``batches`` ({batch_id: [task ids]}), sealed as a worker
    would seal it (``tamper``: responses changed after sealing; ``token``: this token)."""
    heads, ids, responses = [], [], []
    for b, task_ids in batches.items():
        rs = [100 + i for i in task_ids]
        tag = SEAL.token(b, P.ids_bytes(task_ids), P.ids_bytes(rs)) if token is None else token
        heads.append((b, attempt, 10 + b, 20 + b, tag, len(task_ids)))
        ids += task_ids
        responses += [r + 1 for r in rs] if tamper else rs
    n = len(ids)
    return P.results(run, worker, "host", heads, ids, [status] * n, responses, [30] * n,
                     [40] * n).pack()


FRAMES = [
    results({0: [0, 1]}),                        # taken, ACKed
    results({0: [0, 1]}, worker="w2", attempt=1),  # a retried batch: duplicate, still ACKed
    results({1: [2, 3]}, tamper=True),           # forged: its tasks fail, the ACK names it
    results({1: [2, 3]}),                        # then the honest answer: a duplicate
    results({2: [4]}, run=RUN + 1),              # another run's: stale
    results({2: [4]}, token=12345),              # no possession proof: garbage
    b"junk",                                     # garbage
    results({2: [4]}),                           # part of a batch: taken
    results({2: [5]}, worker="server", status=P.UNKNOWN),  # the server's own: not ACKed
    results({3: [7, 7]}),                        # a task named twice counts once
    results({2: [5], 3: [6, 7]}),                # two batches, one already answered in part
    results({3: [6, 7]}),                        # duplicate
]


class NumpyOnly(Acceptance):
    """Every frame on the vectorised path, even one batch."""
    check_one = staticmethod(lambda msg, n_tasks, batch_size: None)


def feed(kind):
    run = ClientRun(N, SIZE, "tcp://server", run_id=RUN)
    garbage = []
    take = kind(run, -(-N // SIZE), SEAL, garbage.append)
    taken = [take.accept(frame, 1000 + i) for i, frame in enumerate(FRAMES)]
    run.accepted = take.accounted
    return run, take, taken, garbage


def test_both_acceptance_paths_take_the_same_results_the_same_way(monkeypatch):
    one_batch_calls = []
    check_one = Acceptance.check_one
    monkeypatch.setattr(Acceptance, "check_one", staticmethod(
        lambda *a: one_batch_calls.append(1) or check_one(*a)))
    fast, fast_take, fast_taken, fast_garbage = feed(Acceptance)
    assert one_batch_calls, "the one-batch path was never tried"
    slow, slow_take, slow_taken, slow_garbage = feed(NumpyOnly)

    # What the run sees: the same, and what it should be.
    assert fast_taken == slow_taken == [2, 0, 2, 0, 0, 0, 0, 1, 1, 1, 1, 0]
    for run in (fast, slow):
        assert (run.accepted, run.duplicates, run.forged, run.garbage, run.stale) == \
            (8, 3, 1, 2, 1)
    assert fast_garbage == slow_garbage == [FRAMES[5], FRAMES[6]]
    # The ACK: taken (batch, attempt) pairs and forged ones, in the order they came.
    pairs = [(0, 0), (0, 1), (1, 0), (2, 0), (3, 0), (2, 0), (3, 0), (3, 0)]
    for take in (fast_take, slow_take):
        assert b"".join(take.acked) == b"".join(P.ids_bytes(p) for p in pairs)
        assert b"".join(take.forged) == P.ids_bytes((1, 0))
    # The records.
    a, b = fast.columns(), slow.columns()
    assert a.keys() == b.keys()
    for name in a:
        assert list(a[name]) == list(b[name]), name
    assert [P.STATUS_NAMES[s] for s in a["status"]] == \
        ["ok", "ok", "failed", "failed", "ok", "unknown", "ok", "ok"]
    assert list(a["attempt"]) == [0] * N
    assert list(a["t_received"]) == [1000, 1000, 1002, 1002, 1007, 1008, 1010, 1009]
    assert "fail their seal" in a["error"][2] and a["error"][0] is None
    assert list(a["response"][[0, 1, 4, 6, 7]]) == [100, 101, 104, 106, 107]


@pytest.mark.parametrize("kind", [Acceptance, NumpyOnly])
def test_a_batch_out_of_range_is_garbage(kind):
    run = ClientRun(N, SIZE, "tcp://server", run_id=RUN)
    take = kind(run, 4, SEAL)
    frame = results({4: [8]})  # task 8 of a run of 8: outside it
    assert take.accept(frame, 1) == 0 and run.garbage == 1 and not take.acked
    assert not np.any(take.answered)
