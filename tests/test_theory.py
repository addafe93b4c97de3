"""comlab.theory: Erlang C against the textbook figures, M/M/1's closed forms, and a plain
simulation of a c-server FCFS queue (the percentiles too)."""

import heapq
import math

import numpy as np
import pytest

from comlab import theory


def test_mm2_textbook_figures():
    q = theory.mmc(2, 1.5, 1.0)
    assert (round(q.p_wait, 4), round(q.mean_wait_s, 4), round(q.mean_sojourn_s, 4)) == \
        (0.6429, 1.2857, 2.2857)
    assert q.utilisation == pytest.approx(0.75)


def test_mm1_sojourn_is_exponential():
    q = theory.mmc(1, 0.8, 1.0)
    assert q.p_wait == pytest.approx(0.8)
    assert q.mean_sojourn_s == pytest.approx(5.0)
    assert q.p99_sojourn_s == pytest.approx(math.log(100) / 0.2, rel=1e-9)
    assert q.p50_sojourn_s == pytest.approx(math.log(2) / 0.2, rel=1e-9)


def test_erlang_c_is_stable_for_many_servers():
    p = theory.erlang_c(1000, 950.0)
    assert 0 < p < 1
    assert theory.erlang_c(1, 0.5) == pytest.approx(0.5)


def _simulate(c, lam, mu, n=200_000, seed=1):
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / lam, n))
    services = rng.exponential(1 / mu, n)
    free = [0.0] * c  # when each server frees, a heap
    sojourn = np.empty(n)
    for i in range(n):
        start = max(arrivals[i], heapq.heappop(free))
        heapq.heappush(free, start + services[i])
        sojourn[i] = start + services[i] - arrivals[i]
    return sojourn[n // 10:]  # without the warm-up


@pytest.mark.parametrize("c,lam,mu", [(2, 1.5, 1.0), (4, 2.0, 1.0), (2, 1.0, 1.0)])
def test_mmc_matches_a_simulation(c, lam, mu):
    q = theory.mmc(c, lam, mu)
    s = _simulate(c, lam, mu)
    assert s.mean() == pytest.approx(q.mean_sojourn_s, rel=0.05)
    assert np.quantile(s, 0.99) == pytest.approx(q.p99_sojourn_s, rel=0.05)
    assert np.mean(s > q.p50_sojourn_s) == pytest.approx(0.5, abs=0.01)


def test_allen_cunneen():
    exact = theory.ggc(2, 1.5, 1.0)
    assert exact.exact and exact.mean_wait_s == pytest.approx(theory.mmc(2, 1.5, 1.0).mean_wait_s)
    md = theory.ggc(1, 0.5, 1.0, service_cv2=0.0)  # M/D/1: Pollaczek-Khinchine is exact
    assert md.mean_wait_s == pytest.approx(0.5 / (2 * 1.0 * 0.5))
    assert not md.exact
    with pytest.raises(ValueError, match="only the means"):
        md.p99_sojourn_s


@pytest.mark.parametrize("args,match", [
    ((2, 2.0, 1.0), "grows without bound"),
    ((0, 1.0, 1.0), "servers must be an integer"),
    ((2, -1.0, 1.0), "arrival_rate must be"),
    ((2, 1.0, float("nan")), "service_rate must be"),
])
def test_bad_arguments_are_one_line(args, match):
    with pytest.raises(ValueError, match=match):
        theory.mmc(*args)
