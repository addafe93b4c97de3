"""The ideal-time model on hand-worked cases."""

import pytest

from comlab.lab.ideal import batch_duration, ideal_makespan, list_schedule


def test_batch_duration_per_strategy():
    waits = [1.0, 3.0, 2.0]
    assert batch_duration(waits, "thread-per-task") == 3.0
    assert batch_duration(waits, "sequential") == 6.0
    assert batch_duration(waits, "cpu-bound") == 6.0
    # two threads: 1 -> t0 [0,1], 3 -> t1 [0,3], 2 -> t0 [1,3]
    assert batch_duration(waits, "thread-pool:2") == 3.0
    # one thread is sequential
    assert batch_duration(waits, "thread-pool:1") == 6.0
    assert batch_duration([], "sequential") == 0.0
    with pytest.raises(ValueError):
        batch_duration(waits, "nonsense")


def test_seed_example_is_one_second():
    # 512 one-second tasks in batches of 16 on 32 workers: 32 batches at once
    batches = [[1.0] * 16 for _ in range(32)]
    assert ideal_makespan(batches, 32, "thread-per-task") == 1.0
    assert ideal_makespan(batches, 16, "thread-per-task") == 2.0
    assert ideal_makespan(batches, 32, "sequential") == 16.0


def test_list_schedule_in_order_greedy():
    # jobs 3,1,1,1 on 2 machines: m0 [0,3], m1 [0,1],[1,2],[2,3] -> 3
    assert list_schedule([3, 1, 1, 1], 2) == 3
    # in-order greedy, not optimal: 1,1,2 on 2 machines -> m0 [0,1] then 2 -> 3
    assert list_schedule([1, 1, 2], 2) == 3
    assert list_schedule([], 4) == 0.0


def test_open_loop_releases_delay_batches():
    # one worker, batches of 0.1 s released every 1 s: the last ends at 2.1
    assert ideal_makespan([[0.1]] * 3, 1, "sequential", releases=[0, 1, 2]) == pytest.approx(2.1)


def test_cpu_bound_limited_by_cores():
    batches = [[1.0]] * 4
    assert ideal_makespan(batches, 4, "cpu-bound", cpus=2) == 2.0
    assert ideal_makespan(batches, 4, "thread-per-task", cpus=2) == 1.0
