"""Example task functions for ``--task`` / ``task=`` (comlab.system.usertask).

Each is called in a worker's strategy thread as ``function(ip, command, response, wait)`` with
the server map's entry of the task, and returns the task's response. They live in the package
because worker processes import a task by its module path.

* ``spin``: real CPU-bound Python work, about ``wait`` seconds of one core (a loop of integer
  arithmetic whose length is ``wait`` x SPIN_PER_S steps, fixed, so the work does not depend on
  how long it takes): it holds the GIL, so threads of one worker take turns.
* ``io_wait``: real I/O, a wait of ``wait`` seconds on a socket that never becomes readable (the
  GIL is released while the thread waits): threads of one worker overlap.
"""

from __future__ import annotations

import select
import socket

SPIN_PER_S = 3_500_000  # steps of ``spin`` per second of `wait`: roughly a core-second on this
# 2-core VM (3.5-9 M steps/s measured under varying load): a fixed amount of work, not a time


def spin(ip: str, command: str, response: int, wait: float) -> int:
    """CPU-bound: ``wait`` x SPIN_PER_S steps of a linear congruential generator seeded by
    the response; returns the generator's last value (a function of the response)."""
    x = response & 0xFFFFFFFF
    for _ in range(int(wait * SPIN_PER_S)):
        x = (1103515245 * x + 12345) & 0x7FFFFFFF
    return x


def io_wait(ip: str, command: str, response: int, wait: float) -> int:
    """I/O-bound: wait ``wait`` seconds for a socket that stays silent; returns the response."""
    a, b = socket.socketpair()
    try:
        select.select([a], [], [], wait)
    finally:
        a.close()
        b.close()
    return response
