"""Is a result stable enough to trust? pyperf's habit: record the conditions, warn when they look bad.

Per run (in its meta.json entry): the load average at its start and end, and the server's
counters over the run (``server``: what the control socket's ``stats`` counted during the run,
e.g. ``retried``, ``worker_deaths``, ``dropped``; plus ``pending`` / ``busy`` at its end).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GAUGES = ("pending", "busy", "idle")  # the server's stats that are levels, not counters


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def counters(stats: dict) -> dict:
    """The numeric part of a server's ``stats`` answer (drops the workers list)."""
    return {k: v for k, v in stats.items() if isinstance(v, (int, float))
            and not isinstance(v, bool)}


@dataclass
class RunConditions:
    """The machine's and the server's state at the start of a run."""
    load_start: list | None
    stats_start: dict

    @classmethod
    def start(cls, server) -> "RunConditions":
        return cls(loadavg(), counters(server.control("stats")))

    def end(self, server) -> dict:
        """The run's entries for meta.json: load averages, and the server's counters over it."""
        stats = counters(server.control("stats"))
        delta = {k: v if k in GAUGES else v - self.stats_start.get(k, 0)
                 for k, v in stats.items()}
        return {"loadavg_start": self.load_start, "loadavg_end": loadavg(), "server": delta}
