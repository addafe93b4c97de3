"""Signals in processes that block in poll: a wakeup pipe, and teardowns a second Ctrl-C spares."""

from __future__ import annotations

import contextlib
import os
import signal
import threading


class WakeupPipe:
    """``signal.set_wakeup_fd`` on a private non-blocking pipe, to poll next to the sockets.

    Python runs a signal handler only between bytecodes; a signal landing just before a blocking
    poll would otherwise wait, unhandled, for the next message (a SIGTERM to an idle server was
    lost that way). The C handler writes a byte here, the poll returns, the handler runs.
    """

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._w, False)
        self._old = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)

    @classmethod
    def open(cls) -> WakeupPipe | None:
        """A pipe, or None off the main thread (where signals are not delivered)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        return cls()

    def drain(self) -> None:
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        signal.set_wakeup_fd(self._old)
        os.close(self.fd)
        os.close(self._w)


@contextlib.contextmanager
def ignored_signals(*signums):
    """A second Ctrl-C must not interrupt the teardown that the first one started."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in signums}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
