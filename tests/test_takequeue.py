"""comlab.system.takequeue: a reader killed anywhere never wedges or garbles the shared queue
(issue 24, item 1). Readers are forked children; the test process is the writer (the server)."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import time

import pytest

from comlab.system.takequeue import FIELDS, NOTHING, TORN, TakeQueue

MP = multiprocessing.get_context("fork")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.005)
    return value


def _take_into(q: TakeQueue, slot: int, out) -> None:
    item = q.take(slot)
    while item is None or item is TORN:
        time.sleep(0.01)
        item = q.take(slot)
    out.send(item)


def take_in_child(q: TakeQueue, slot: int, timeout: float = 10.0):
    """What a fresh reader (a worker) takes next."""
    rx, tx = MP.Pipe(duplex=False)
    p = MP.Process(target=_take_into, args=(q, slot, tx), daemon=True)
    p.start()
    try:
        assert rx.poll(timeout), "a reader could not take from the queue: wedged"
        return rx.recv()
    finally:
        p.join(2)
        if p.is_alive():
            p.kill()
            p.join()


def _take_and_hang(q: TakeQueue, slot: int) -> None:
    q.take(slot)  # the frame is only partly written: waits for the rest, holding the lock


def _lock_and_hang(q: TakeQueue) -> None:
    fcntl.lockf(q.writer.fileno(), fcntl.LOCK_EX)
    time.sleep(60)


def _tear_header(q: TakeQueue, slot: int, nbytes: int) -> None:
    """What a reader does up to its death inside a frame's header (before publishing)."""
    fcntl.lockf(q.writer.fileno(), fcntl.LOCK_EX)
    q.shared[FIELDS * q.slots] = slot + 1
    os.read(q.reader.fileno(), nbytes)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture
def queue():
    q = TakeQueue(MP, 2)
    yield q
    q.close()


@pytest.mark.timeout(30)
def test_reader_killed_holding_the_lock_frees_it(queue):
    """The seed's queue: a reader killed while it held the reader lock wedged every other
    reader for good. A record lock goes with its holder."""
    p = MP.Process(target=_lock_and_hang, args=(queue,), daemon=True)
    p.start()
    wait_for(lambda: _locked(queue), 5, "the child holds the lock")
    queue.put(b"after")
    p.kill()
    p.join()
    assert queue.recover(0) is None  # it was not reading: nothing to repair
    assert take_in_child(queue, 1) == (0, b"after")


@pytest.mark.timeout(30)
def test_reader_killed_mid_body_is_repaired(queue, monkeypatch):
    """A reader killed with half a frame read: the rest is read away, the next frame is whole,
    and the dead reader's slot says which batch it held (the server retries it)."""
    monkeypatch.setattr(queue, "_start_feeder", lambda: None)  # the rest waits in the backlog
    big = os.urandom(1 << 20)
    assert queue.put(big) == 0
    p = MP.Process(target=_take_and_hang, args=(queue, 0), daemon=True)
    p.start()
    wait_for(lambda: queue.held(0) == 0 and queue._in_pipe() == 0, 5,
             "the reader published its frame and emptied the pipe")
    p.kill()
    p.join()
    assert queue.recover(0) is None  # published: lost_local retries it from the slot
    assert queue.held(0) == 0 and queue.taken() == 1
    assert not queue.backlog
    queue.put(b"next")
    assert take_in_child(queue, 1) == (1, b"next")
    assert queue.taken() == 2


@pytest.mark.timeout(30)
@pytest.mark.parametrize("nbytes", [0, 5])
def test_reader_killed_inside_a_header_gives_the_frame_back(queue, nbytes):
    """A reader that died before it could publish the frame it tore: recover names it."""
    queue.put(b"first")
    queue.put(b"second")
    p = MP.Process(target=_tear_header, args=(queue, 0, nbytes), daemon=True)
    p.start()
    p.join(5)
    assert queue.held(0) == NOTHING
    assert queue.recover(0) == (0 if nbytes else None)
    assert queue.taken() == (1 if nbytes else 0)
    assert take_in_child(queue, 1) == ((1, b"second") if nbytes else (0, b"first"))


@pytest.mark.timeout(30)
def test_a_torn_queue_is_not_read_until_repaired(queue):
    queue.put(b"first")
    queue.put(b"second")
    p = MP.Process(target=_tear_header, args=(queue, 0, 5), daemon=True)
    p.start()
    p.join(5)
    assert queue.take(1) is TORN
    assert queue.recover(0) == 0
    assert queue.take(1) == (1, b"second")


@pytest.mark.timeout(30)
def test_frames_larger_than_the_pipe_arrive_whole(queue):
    bodies = [os.urandom(n) for n in (10, 300_000, 70_000, 1)]
    for body in bodies:
        queue.put(body)
    got = [take_in_child(queue, i % 2) for i in range(len(bodies))]
    assert got == list(enumerate(bodies))
    assert queue.taken() == len(bodies)


def _locked(q: TakeQueue) -> bool:
    try:
        fcntl.lockf(q.writer.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    fcntl.lockf(q.writer.fileno(), fcntl.LOCK_UN)
    return False
