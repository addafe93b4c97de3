"""Queueing theory to hold measurements against.

The seed's design, one queue shared by the server and c workers each taking the next task, is
the textbook M/M/c queue when arrivals are Poisson and service times exponential (one task a
batch, sequential workers). ``mmc`` gives its exact figures (Erlang C); ``ggc`` the Allen-Cunneen
approximation for other arrival and service distributions (the squared coefficients of variation
of inter-arrival and service times, 1 for exponential, 0 for constant).

    >>> q = mmc(servers=2, arrival_rate=1.5, service_rate=1.0)
    >>> round(q.p_wait, 4), round(q.mean_wait_s, 4), round(q.mean_sojourn_s, 4)
    (0.6429, 1.2857, 2.2857)

Times are in seconds, rates per second. Nothing here starts a process.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

__all__ = ["Queue", "mmc", "ggc", "erlang_c"]


def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, not {value!r}")
    return float(value)


def _servers(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"servers must be an integer >= 1, not {value!r}")
    return int(value)


def erlang_c(servers: int, offered_load: float) -> float:
    """P(an arrival waits) in M/M/c with offered load a = lambda / mu < c.

    Through the Erlang B recursion, which neither overflows nor loses precision for large c
    (the textbook sum of a^k / k! does both)."""
    c, a = _servers(servers), _positive(offered_load, "offered_load")
    if a >= c:
        raise ValueError(f"offered load {a:g} >= {c} servers: the queue grows without bound")
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1 - rho * (1 - b))


@dataclass(frozen=True)
class Queue:
    """Steady-state figures of a c-server queue; ``exact`` is False for an approximation."""

    model: str
    servers: int
    arrival_rate: float
    service_rate: float
    utilisation: float
    p_wait: float
    mean_wait_s: float
    mean_sojourn_s: float
    exact: bool = True

    def sojourn_quantile(self, q: float) -> float:
        """The q-quantile of the sojourn (wait + service), s: exact for M/M/c only."""
        if not self.exact:
            raise ValueError(f"{self.model}: only the means are known (an approximation); "
                             "percentiles need M/M/c")
        if not 0 < q < 1:
            raise ValueError(f"q must be in (0, 1), not {q!r}")
        lo, hi = 0.0, 1.0
        while self.sojourn_survival(hi) > 1 - q:
            hi *= 2
        for _ in range(200):  # bisection: the survival function is monotone
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.sojourn_survival(mid) > 1 - q else (lo, mid)
            if hi - lo <= 1e-12 * hi:
                break
        return hi

    def sojourn_survival(self, t: float) -> float:
        """P(sojourn > t) in M/M/c: the wait is 0 with probability 1 - p_wait, else
        exponential at c mu - lambda; the service is exponential at mu, independent of it."""
        mu, delta = self.service_rate, self.servers * self.service_rate - self.arrival_rate
        both = ((1 + mu * t) * math.exp(-mu * t) if math.isclose(delta, mu)
                else (delta * math.exp(-mu * t) - mu * math.exp(-delta * t)) / (delta - mu))
        return (1 - self.p_wait) * math.exp(-mu * t) + self.p_wait * both

    @property
    def p50_sojourn_s(self) -> float:
        return self.sojourn_quantile(0.5)

    @property
    def p99_sojourn_s(self) -> float:
        return self.sojourn_quantile(0.99)

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        if self.exact:
            out.update(p50_sojourn_s=self.p50_sojourn_s, p99_sojourn_s=self.p99_sojourn_s)
        return out


def mmc(servers: int, arrival_rate: float, service_rate: float) -> Queue:
    """M/M/c: Poisson arrivals at ``arrival_rate``, exponential service at ``service_rate``
    per server, ``servers`` servers, first come first served (Erlang C)."""
    c = _servers(servers)
    lam, mu = _positive(arrival_rate, "arrival_rate"), _positive(service_rate, "service_rate")
    p_wait = erlang_c(c, lam / mu)
    wq = p_wait / (c * mu - lam)
    return Queue("M/M/c", c, lam, mu, lam / (c * mu), p_wait, wq, wq + 1 / mu)


def ggc(servers: int, arrival_rate: float, service_rate: float, *, arrival_cv2: float = 1.0,
        service_cv2: float = 1.0) -> Queue:
    """G/G/c by the Allen-Cunneen approximation: the M/M/c wait scaled by (ca^2 + cs^2) / 2.

    ``arrival_cv2`` and ``service_cv2`` are the squared coefficients of variation (variance /
    mean^2) of the inter-arrival and service times: 1 for exponential, 0 for constant. With
    both 1 it is M/M/c exactly; for one server it is Kingman's formula."""
    base = mmc(servers, arrival_rate, service_rate)
    for value, name in ((arrival_cv2, "arrival_cv2"), (service_cv2, "service_cv2")):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    exact = arrival_cv2 == 1 and service_cv2 == 1
    wq = base.mean_wait_s * (arrival_cv2 + service_cv2) / 2
    return Queue("M/M/c" if exact else "G/G/c (Allen-Cunneen)", base.servers, base.arrival_rate,
                 base.service_rate, base.utilisation, base.p_wait, wq,
                 wq + 1 / base.service_rate, exact=exact)
