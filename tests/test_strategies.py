"""Strategies, driven the way a worker drives them: ``Cache().get(spec).run(responses, waits)``.

Timing bounds are wide on purpose (CI has 2 busy cores): they tell "concurrent" from "serial",
they do not measure performance.
"""

from __future__ import annotations

import threading
import time

import pytest

from comlab.system import strategies
from comlab.system.protocol import FAILED, OK

SPECS = ["thread-per-task", "thread-pool", "thread-pool:2", "sequential", "cpu-bound",
         "faulty:2"]
HEALTHY = [s for s in SPECS if not s.startswith("faulty")]


@pytest.fixture
def cache():
    c = strategies.Cache()
    yield c
    c.close()


def _check_columns(result, n):
    statuses, outs, starts, ends, errors = result
    assert len(statuses) == len(outs) == len(starts) == len(ends) == n
    assert errors is None or len(errors) == n
    for t0, t1 in zip(starts, ends):
        assert isinstance(t0, int) and isinstance(t1, int)
        assert t0 <= t1
    return statuses, outs, starts, ends, errors


@pytest.mark.parametrize("spec", HEALTHY)
def test_healthy_strategy_answers_every_task(cache, spec):
    responses = [3, 1, 4, 1, 5, 9]
    result = cache.get(spec).run(responses, [0.01, 0.0, 0.01, 0.0, 0.01, 0.0])
    statuses, outs, _, _, errors = _check_columns(result, len(responses))
    assert statuses == [OK] * len(responses)
    assert outs == responses  # in task order, whatever order they ran in
    assert errors is None


@pytest.mark.parametrize("spec", SPECS)
def test_empty_batch(cache, spec):
    assert cache.get(spec).run([], []) == ([], [], [], [], None)


@pytest.mark.parametrize("spec", SPECS)
def test_zero_wait_never_sleeps(cache, spec, monkeypatch):
    def no_sleep(seconds):
        raise AssertionError(f"time.sleep({seconds}) called for a zero-wait task")

    monkeypatch.setattr(time, "sleep", no_sleep)
    n = 20
    statuses, outs, _, _, errors = _check_columns(cache.get(spec).run(list(range(n)), [0] * n), n)
    # A sleep would have raised inside the task and shown up as an error.
    if spec.startswith("faulty"):
        assert all(e is None or "injected fault" in e for e in errors)
    else:
        assert statuses == [OK] * n and errors is None and outs == list(range(n))


def test_thread_per_task_runs_tasks_at_once_and_reuses_threads(cache):
    s = cache.get("thread-per-task")
    t0 = time.perf_counter()
    statuses, *_ = _check_columns(s.run([1] * 8, [0.2] * 8), 8)
    first = time.perf_counter() - t0
    assert statuses == [OK] * 8
    assert 0.2 <= first < 1.0, f"8 tasks of 0.2 s took {first:.2f} s: not concurrent"
    assert len(s.gang._all) == 8  # a thread of its own for each task

    t0 = time.perf_counter()
    statuses, *_ = _check_columns(s.run([1] * 8, [0.2] * 8), 8)
    second = time.perf_counter() - t0
    assert statuses == [OK] * 8
    assert second < 1.0
    assert len(s.gang._all) == 8, "a second batch started new threads"
    assert cache.get("thread-per-task") is s  # one instance per spec: the threads are kept


def test_gang_runs_each_job_on_its_own_thread_and_keeps_them():
    from comlab.system.gang import Gang
    gang = Gang("t")
    barrier = threading.Barrier(5, timeout=5)  # would time out unless all 5 run at once

    def job(i):
        barrier.wait()
        if i == 3:
            raise ValueError("three")
        return i, threading.get_ident()

    out = gang.map(job, [(i,) for i in range(5)])
    assert [o[0] for i, o in enumerate(out) if i != 3] == [0, 1, 2, 4]
    assert isinstance(out[3], ValueError)
    assert len({o[1] for i, o in enumerate(out) if i != 3}) == 4
    gang.warm(7)
    assert len(gang._all) == 7 and len(gang._parked) == 7
    assert gang.map(job, []) == []
    gang.close()
    for slot in gang._all:
        slot.thread.join(2)
        assert not slot.thread.is_alive()


def test_thread_pool_2_queues_tasks(cache):
    s = cache.get("thread-pool:2")
    t0 = time.perf_counter()
    statuses, *_ = _check_columns(s.run([1] * 4, [0.1] * 4), 4)
    took = time.perf_counter() - t0
    assert statuses == [OK] * 4
    assert took >= 0.2, f"4 tasks of 0.1 s on 2 threads took only {took:.3f} s"
    assert len(s.pool._threads) <= 2


def test_thread_pool_default_size(cache):
    assert cache.get("thread-pool").size == 4


def test_sequential_waits_add_up(cache):
    t0 = time.perf_counter()
    statuses, _, starts, ends, _ = _check_columns(
        cache.get("sequential").run([1] * 4, [0.05] * 4), 4)
    took = time.perf_counter() - t0
    assert statuses == [OK] * 4
    assert took >= 0.2
    for i in range(3):  # one after another
        assert ends[i] <= starts[i + 1]


def test_faulty_2_fails_every_second_task(cache):
    n = 7
    statuses, outs, _, _, errors = _check_columns(
        cache.get("faulty:2").run(list(range(10, 10 + n)), [0] * n), n)
    assert statuses == [OK, FAILED, OK, FAILED, OK, FAILED, OK]
    for i in range(n):
        if i % 2:
            assert outs[i] is None
            assert "RuntimeError" in errors[i] and "injected fault" in errors[i]
        else:
            assert outs[i] == 10 + i and errors[i] is None


def test_faulty_3(cache):
    statuses, *_ = _check_columns(cache.get("faulty:3").run([1] * 6, [0] * 6), 6)
    assert statuses == [OK, OK, FAILED, OK, OK, FAILED]


@pytest.mark.parametrize("spec", HEALTHY)
def test_raising_task_fails_alone(cache, spec):
    s = cache.get(spec)

    def task(response, wait):
        if response == 2:
            raise ValueError("boom")
        return response

    s.task = task  # the emulated task of this instance
    statuses, outs, _, _, errors = _check_columns(s.run([1, 2, 3], [0.01, 0.01, 0]), 3)
    assert statuses == [OK, FAILED, OK]
    assert outs == [1, None, 3]
    assert errors[0] is None and errors[2] is None
    assert errors[1] == "ValueError: boom"


def test_cpu_bound_busy_works(cache):
    s = cache.get("cpu-bound")
    t0 = time.process_time()
    statuses, *_ = _check_columns(s.run([1, 1], [0.05, 0.05]), 2)
    assert statuses == [OK, OK]
    assert time.process_time() - t0 > 0.02  # CPU was burnt, not slept


@pytest.mark.parametrize("spec", SPECS + ["thread-pool:16", "faulty:1"])
def test_check_accepts(spec):
    assert strategies.check(spec) == spec


@pytest.mark.parametrize("spec", [
    "nope", "", "thread_per_task", "Sequential", "thread-pool:0", "thread-pool:-1",
    "thread-pool:x", "thread-pool:1.5", "faulty:0", "faulty:two", "sequential:3",
    "thread-per-task:4", "cpu-bound:1",
])
def test_check_rejects(spec, cache):
    with pytest.raises(ValueError):
        strategies.check(spec)
    with pytest.raises(ValueError):
        cache.get(spec)


def test_check_names_known_strategies():
    with pytest.raises(ValueError, match="thread-per-task"):
        strategies.check("nope")


def test_default_is_known():
    assert strategies.check(strategies.DEFAULT) == strategies.DEFAULT
