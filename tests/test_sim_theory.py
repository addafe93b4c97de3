"""comlab.sim against queueing theory: the seed's design (the queue shared by c sequential
workers, one task a batch) with Poisson arrivals and exponential waits is M/M/c.

With every stage's cost set to zero the model is that queue and nothing else, so two things
must hold: on its own draws it is exactly the FCFS c-server queue (a few lines of heap, below),
and its mean sojourn is Erlang C's (comlab.theory.mmc), or Allen-Cunneen's for other waits.

The theory is taken at the rates the run drew (its mean gap and mean wait, and for G/G/c their
squared coefficients of variation): a draw of 20,000 tasks is itself off its nominal rate by
about 1 %, which at utilisation 0.8 moves the mean wait by ~5 %, so the nominal figures would
test the draw, not the model. Deterministic: one fixed seed, no clock.
"""

import heapq
import math

import numpy as np
import pytest

import comlab.sim as sim
from comlab import theory

MEAN_WAIT_S = 0.01
L = sim.Linear


def _free() -> sim.Calibration:
    """Every cost zero: the model is its queue and nothing else."""
    return sim.Calibration(
        cpus=64, hop_s=0.0, client_send=L(0.0), client_recv=L(0.0), server_intake=L(0.0),
        server_dispatch=L(0.0), server_done_s=0.0, worker_recv=L(0.0), handoff_s=0.0,
        task_end_s=0.0, thread_wake_s=0.0, overshoot_s=np.zeros(1), worker_result=L(0.0),
        result_wake_s=0.0, done_send_s=0.0, queue_take_s=0.0, inline_task_s=0.0,
        workload_s=np.full(64, MEAN_WAIT_S), source={"result": "theory"})


def _queue_run(servers: int, utilisation: float, wait: str, tasks: int, seed: int = 0):
    rate = utilisation * servers / MEAN_WAIT_S
    _, rec = sim.predict(_free(), [dict(batch_size=1, workers=servers, dispatch="queue",
                                        strategy="sequential", rate=rate, arrivals="poisson",
                                        wait=wait, tasks=tasks)], seed=seed, records=True)
    rec = rec.sort_values("task_id")
    return rec["t_intended"].to_numpy(), rec["wait_s"].to_numpy(), rec["latency_s"].to_numpy()


def _fcfs(servers: int, arrivals: np.ndarray, services: np.ndarray) -> np.ndarray:
    """Sojourns in a FCFS queue of ``servers`` servers: each task on the first free one."""
    free, out = [0.0] * servers, np.empty(len(arrivals))
    for i, (a, s) in enumerate(zip(arrivals, services)):
        start = max(a, heapq.heappop(free))
        heapq.heappush(free, start + s)
        out[i] = start + s - a
    return out


def _drawn(arrivals: np.ndarray, services: np.ndarray) -> dict:
    gaps = np.diff(arrivals)
    return dict(arrival_rate=1 / gaps.mean(), service_rate=1 / services.mean(),
                arrival_cv2=gaps.var() / gaps.mean() ** 2,
                service_cv2=services.var() / services.mean() ** 2)


@pytest.mark.parametrize("utilisation,tasks", [(0.5, 10_000), (0.8, 20_000)])
def test_the_queue_design_is_mmc(utilisation, tasks):
    """c = 2. At 20,000 tasks the mean's spread over seeds is ~3 % at utilisation 0.8 (~1.4 %
    at 0.5, 10,000 tasks): seed 0 is one draw of it, the exact path check is the strict one."""
    arrivals, services, sojourn = _queue_run(2, utilisation, "exponential", tasks)
    gaps = np.diff(arrivals)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # Poisson arrivals
    assert services.std() / services.mean() == pytest.approx(1.0, abs=0.05)  # exponential
    np.testing.assert_allclose(sojourn, _fcfs(2, arrivals, services), rtol=0, atol=1e-9)
    d = _drawn(arrivals, services)
    q = theory.mmc(2, d["arrival_rate"], d["service_rate"])
    assert q.utilisation == pytest.approx(utilisation, rel=0.03)
    assert sojourn.mean() == pytest.approx(q.mean_sojourn_s, rel=0.05)


def test_heavier_waits_are_allen_cunneen():
    """M/G/2 with lognormal:0.5 waits (cs^2 = 0.28) at utilisation 0.8, against the
    Allen-Cunneen approximation within 10 %: its own error here is ~2 % (the FCFS queue above
    over 400,000 tasks: +1.7 % against the nominal figures), and the mean of 20,000 tasks
    spreads ~3 % over seeds (0.0 % on average, at most 8.8 % in seeds 0-49)."""
    arrivals, services, sojourn = _queue_run(2, 0.8, "lognormal:0.5", 20_000)
    assert services.mean() == pytest.approx(MEAN_WAIT_S, rel=0.03)
    assert services.var() / services.mean() ** 2 == pytest.approx(math.exp(0.25) - 1, rel=0.1)
    np.testing.assert_allclose(sojourn, _fcfs(2, arrivals, services), rtol=0, atol=1e-9)
    q = theory.ggc(2, **_drawn(arrivals, services))
    assert not q.exact
    assert sojourn.mean() == pytest.approx(q.mean_sojourn_s, rel=0.10)
