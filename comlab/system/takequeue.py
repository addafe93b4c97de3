"""A queue of byte frames from one process (the server) to readers it may lose at any moment (its
local workers): a reader SIGKILLed or stopped anywhere never wedges the queue or garbles it.

multiprocessing.Queue cannot promise that: a reader waits for data holding the queue's reader
lock, and one killed there (or mid-message) leaves the lock taken for good. Here:

* The frames travel on a pipe: ``[seq u64][length u64][body]``. A reader waits for the pipe to
  be readable in its own poll set, holding nothing, then takes one frame under a short lock: a
  POSIX record lock (``lockf``) on the pipe, which the kernel drops when its holder dies.
* While it reads, the holder's slot number is in a shared word (``reading``). A reader killed
  mid-frame leaves that word set: the next holder sees it and backs off (the stream is torn),
  and the writer, told of the death (``recover``), reads away the rest of the torn frame (it
  knows every byte it wrote, and FIONREAD says how many are still in the pipe) and hands the
  frame's seq back for a retry if the reader never published it.
* Each reader publishes the seq of the frame it took in its slot and counts its takes there;
  when it is done with a frame it says so there too, with the time (``finish``): the writer
  reads what a dead reader held or had just finished, and how far the queue has been taken,
  without a message.

The writer never blocks: a frame the pipe has no room for waits in a backlog that a feeder
thread writes as readers make room. POSIX only (record locks on a pipe: Linux).
"""

from __future__ import annotations

import array
import fcntl
import os
import select
import struct
import termios
import threading
import time
from collections import deque

HEAD = struct.Struct("<qq")  # seq, body length
NOTHING = -1                 # a slot's seq when its reader holds no frame
TORN = "torn"                # take(): a reader died mid-frame; the writer has not repaired it yet
FIELDS = 4                   # per slot: seq held, takes, seq last finished, finished at (ns)


class TakeQueue:
    def __init__(self, mp, slots: int) -> None:
        """``mp``: a multiprocessing context (its Pipe and RawArray pass to forkserver children);
        ``slots``: readers at once."""
        self.reader, self.writer = mp.Pipe(duplex=False)
        for conn in (self.reader, self.writer):
            os.set_blocking(conn.fileno(), False)  # shared by every process holding the pipe
        # FIELDS per slot, then the ``reading`` word: the slot + 1 of a reader mid-frame.
        self.shared = mp.RawArray("q", [NOTHING, 0, NOTHING, 0] * slots + [0])
        self.slots = slots
        self._writer_state()

    def _writer_state(self) -> None:
        self.seq = 0                      # frames put
        self.total = 0                    # bytes put
        self.written = 0                  # ... of which the pipe has accepted
        self.frames: deque = deque()      # (seq, start, end) of frames not known taken
        self.backlog: deque = deque()     # memoryviews not written yet, in order
        self.wlock = threading.Lock()
        self.more = threading.Condition(self.wlock)
        self.feeder = None
        self.closed = False

    def __getstate__(self):  # what a reader process gets (forkserver): no writer state
        return {"reader": self.reader, "writer": self.writer, "shared": self.shared,
                "slots": self.slots}

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self._writer_state()

    # -- the writer (server) ---------------------------------------------------------------------
    def put(self, body: bytes) -> int:
        """Queue one frame; its seq (frames are numbered in put order, from 0)."""
        seq = self.seq
        frame = HEAD.pack(seq, len(body)) + body
        with self.wlock:
            self.seq += 1
            self.frames.append((seq, self.total, self.total + len(frame)))
            self.total += len(frame)
            view = memoryview(frame)
            if not self.backlog:
                view = view[self._write(view):]
            if len(view):
                self.backlog.append(view)
                self._start_feeder()
                self.more.notify()
            if len(self.frames) > 256 and not seq % 64:
                self._trim(self.written - self._in_pipe())
        return seq

    def _write(self, view) -> int:
        try:
            n = os.write(self.writer.fileno(), view)
        except BlockingIOError:
            return 0
        self.written += n
        return n

    def _start_feeder(self) -> None:
        if self.feeder is None:
            self.feeder = threading.Thread(target=self._feed, name="comlab-queue-feeder",
                                           daemon=True)
            self.feeder.start()

    def _feed(self) -> None:
        """Write the backlog as readers make room in the pipe."""
        fd = self.writer.fileno()
        while True:
            with self.more:
                while not self.backlog and not self.closed:
                    self.more.wait()
                if self.closed:
                    return
            try:
                select.select([], [fd], [], 0.5)
            except (OSError, ValueError):  # closed under us
                return
            with self.wlock:
                if self.closed:
                    return
                while self.backlog:
                    view = self.backlog[0]
                    n = self._write(view)
                    if n < len(view):
                        self.backlog[0] = view[n:]
                        break
                    self.backlog.popleft()

    def _in_pipe(self) -> int:
        buf = array.array("i", [0])
        fcntl.ioctl(self.reader.fileno(), termios.FIONREAD, buf)
        return buf[0]

    def _trim(self, consumed: int) -> None:
        frames = self.frames
        while frames and frames[0][2] <= consumed:
            frames.popleft()

    def taken(self) -> int:
        """Frames readers have begun to take (they take them in order)."""
        s = self.shared
        return sum(s[i] for i in range(1, FIELDS * self.slots, FIELDS))

    def held(self, slot: int) -> int:
        return self.shared[FIELDS * slot]

    def finished(self, slot: int) -> tuple[int, int]:
        """(seq, time.monotonic_ns()) of the frame the reader of ``slot`` finished last."""
        i = FIELDS * slot
        return self.shared[i + 2], self.shared[i + 3]

    def reset(self, slot: int) -> None:
        """A new reader gets ``slot``: it holds nothing (its takes stay counted)."""
        i = FIELDS * slot
        self.shared[i] = self.shared[i + 2] = NOTHING

    def recover(self, slot: int) -> int | None:
        """The reader of ``slot`` is dead. If it died mid-frame, read away the rest of that
        frame and let the others read again; the frame's seq if the dead reader never published
        it in its slot (its work must be retried), else None."""
        shared, mark, i = self.shared, FIELDS * self.slots, FIELDS * slot
        if shared[mark] != slot + 1:
            return None
        fd = self.writer.fileno()
        fcntl.lockf(fd, fcntl.LOCK_EX)  # the dead reader's lock is gone; others back off
        try:
            with self.wlock:
                consumed = self.written - self._in_pipe()
                self._trim(consumed)
                torn = None
                if self.frames and self.frames[0][1] < consumed:
                    seq, _, end = self.frames.popleft()
                    self._discard(min(end, self.written) - consumed, end)
                    torn = seq if shared[i] != seq else None
                # Every frame begun counts as taken, the torn one too (the dead reader may have
                # died before counting it).
                begun = self.frames[0][0] if self.frames else self.seq
                shared[i + 1] += begun - self.taken()
            shared[mark] = 0
            return torn
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)

    def _discard(self, in_pipe: int, end: int) -> None:
        """Drop the rest of a torn frame: ``in_pipe`` bytes from the pipe, and whatever of it up
        to ``end`` was not written yet from the backlog."""
        fd = self.reader.fileno()
        while in_pipe > 0:
            in_pipe -= len(os.read(fd, min(in_pipe, 1 << 20)))
        skip = end - self.written
        while skip > 0 and self.backlog:
            view = self.backlog[0]
            if len(view) <= skip:
                self.backlog.popleft()
                skip -= len(view)
                self.written += len(view)
            else:
                self.backlog[0] = view[skip:]
                self.written += skip
                skip = 0

    def close(self) -> None:
        with self.more:
            self.closed = True
            self.backlog.clear()
            self.more.notify()
        for conn in (self.reader, self.writer):
            conn.close()

    # -- a reader (worker) -------------------------------------------------------------------
    def fileno(self) -> int:
        """Readable when a frame may be waiting: wait on it holding nothing."""
        return self.reader.fileno()

    def finish(self, slot: int) -> None:
        """The reader of ``slot`` is done with the frame it holds (its results are sent, though
        perhaps still in its socket's queue: a death soon after may cost them)."""
        i = FIELDS * slot
        self.shared[i + 3] = time.monotonic_ns()
        self.shared[i + 2] = self.shared[i]
        self.shared[i] = NOTHING

    def take(self, slot: int, alive=lambda: True):
        """The next (seq, body), None if another reader took it first, or TORN. ``alive()``
        is asked while a frame is only partly written (False: give up, EOFError)."""
        shared, mark, i = self.shared, FIELDS * self.slots, FIELDS * slot
        lock_fd = self.writer.fileno()
        fcntl.lockf(lock_fd, fcntl.LOCK_EX)  # waits only for another reader's short read
        try:
            if shared[mark]:
                return TORN
            fd = self.reader.fileno()
            shared[mark] = slot + 1
            try:
                first = os.read(fd, HEAD.size)
            except BlockingIOError:
                shared[mark] = 0
                return None
            seq, n = HEAD.unpack(first + _read_exact(fd, HEAD.size - len(first), alive))
            shared[i] = seq               # published before the body: a death from here on
            shared[i + 1] += 1            # is the server's to retry
            body = _read_exact(fd, n, alive)
            shared[mark] = 0
            return seq, body
        finally:
            fcntl.lockf(lock_fd, fcntl.LOCK_UN)


def _read_exact(fd: int, n: int, alive) -> bytes:
    parts = []
    while n > 0:
        try:
            chunk = os.read(fd, min(n, 1 << 20))
        except BlockingIOError:  # the writer is still writing this frame
            if not select.select([fd], [], [], 1.0)[0] and not alive():
                raise EOFError("the queue's writer is gone") from None
            continue
        if not chunk:
            raise EOFError("the queue's writer is gone")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)
