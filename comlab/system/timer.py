"""A wake-up at an exact CLOCK_MONOTONIC instant that a ZeroMQ poll can wait on (Linux timerfd).

zmq_poll's timeout is whole milliseconds, so an open-loop client waiting for a send due in
0.4 ms can only spin (a core taken from the server and workers it measures) or oversleep. A
timerfd armed for the due instant is a file descriptor the same poll watches: the client sleeps
until the send is due or a result arrives, whichever is first. Where Linux's timerfd is missing
``Timer.open()`` returns None and the caller falls back to polling with millisecond timeouts.
"""

from __future__ import annotations

import ctypes
import os
import sys

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK, _TFD_CLOEXEC = 0o4000, 0o2000000
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class Timer:
    """``at(t_ns)`` arms the timer for that monotonic_ns instant; the fd is readable from then
    until ``clear()``."""

    def __init__(self, libc, fd: int) -> None:
        self._settime, self.fd = libc.timerfd_settime, fd
        self._spec = _Itimerspec()
        self._ref = ctypes.byref(self._spec)
        self.armed = 0

    @classmethod
    def open(cls) -> "Timer | None":
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        except (OSError, AttributeError):
            return None
        return cls(libc, fd) if fd >= 0 else None

    def at(self, t_ns: int) -> None:
        if t_ns == self.armed:
            return
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(t_ns, 1_000_000_000)
        if self._settime(self.fd, _TFD_TIMER_ABSTIME, self._ref, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        self.armed = t_ns

    def clear(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def precise_sleeps() -> None:
    """Ask Linux for 1 ns of timer slack (default 50 us): an emulated task's sleep then ends
    when it should, so the harness adds no overshoot of its own to every task (Linux only)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(29, 1)  # PR_SET_TIMERSLACK
        except (OSError, AttributeError):
            pass
