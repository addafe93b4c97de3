"""Arrival processes: each schedule has the rate and shape its spec says, is reproducible from
its seed, and bad specs are one line naming the spec (a trace: file:line)."""

import numpy as np
import pytest

from comlab import arrivals


def test_constant_is_evenly_spaced():
    off = arrivals.parse("constant").offsets(5, 4, 100.0)
    assert np.allclose(off, [0, 0.04, 0.08, 0.12, 0.16])


def test_poisson_gaps_are_exponential_at_the_rate():
    off = arrivals.parse("poisson").offsets(20000, 1, 500.0, seed=1)
    gaps = np.diff(off)
    assert gaps.mean() == pytest.approx(1 / 500, rel=0.1)
    assert 0.8 <= gaps.std() / gaps.mean() <= 1.2
    again = arrivals.parse("poisson").offsets(20000, 1, 500.0, seed=1)
    assert np.array_equal(off, again)
    assert not np.array_equal(off, arrivals.parse("poisson").offsets(20000, 1, 500.0, seed=2))


def test_poisson_batches_keep_the_task_rate():
    off = arrivals.parse("poisson").offsets(5000, 16, 1600.0, seed=3)
    assert np.diff(off).mean() == pytest.approx(16 / 1600, rel=0.1)


def test_bursty_keeps_the_mean_rate_and_is_burstier_than_poisson():
    off = arrivals.parse("bursty:0.5,1.5").offsets(20000, 1, 200.0, seed=4)
    gaps = np.diff(off)
    assert len(off) / off[-1] == pytest.approx(200.0, rel=0.15)
    assert gaps.std() / gaps.mean() > 1.5
    assert np.all(gaps >= 0)


def test_ramp_goes_from_r0_to_r1_then_stays():
    off = arrivals.parse("ramp:10,100,10").offsets(1000, 1, None)
    # by the ramp's end (10 s), (10 + 100) / 2 * 10 = 550 tasks were due
    assert off[550] == pytest.approx(10.0, rel=1e-9)
    assert 1 / off[1] == pytest.approx(10, rel=0.06)  # the rate starts at R0
    assert 1 / np.diff(off[540:550]).mean() == pytest.approx(100, rel=0.05)
    assert np.allclose(np.diff(off[600:]), 0.01)


def test_step_changes_the_rate_at_each_time():
    off = arrivals.parse("step:10@0,100@2").offsets(200, 1, None)
    assert off[20] == pytest.approx(2.0) and off[120] == pytest.approx(3.0)
    assert np.allclose(np.diff(off[:20]), 0.1) and np.allclose(np.diff(off[30:]), 0.01)


def test_a_replayed_trace_keeps_the_files_offsets(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("offset_s,task\n0,10.0.0.1:a\n0.5,10.0.0.2:b\n0.5,10.0.0.1:a\n2.25,10.0.0.3:c\n")
    spec = arrivals.parse(f"trace:{path}")
    assert spec.trace.keys == ["10.0.0.1:a", "10.0.0.2:b", "10.0.0.1:a", "10.0.0.3:c"]
    assert np.allclose(spec.offsets(4, 1, None), [0, 0.5, 0.5, 2.25])
    assert np.allclose(spec.offsets(2, 2, None), [0.5, 2.25])  # a batch leaves with its last task
    assert np.allclose(spec.offsets(2, 3, None), [0.5, 2.25])


@pytest.mark.parametrize("content,match", [
    ("0,10.0.0.1:a\n-1,10.0.0.1:a\n", r"trace.csv:2: offset"),
    ("1,10.0.0.1:a\n0.5,10.0.0.1:a\n", r"trace.csv:2: offset 0.5 s before"),
    ("0,10.0.0.1\n", r"trace.csv:1: bad task"),
    ("0,a:b,c\n", r"trace.csv:1: expected offset_s,ip:command"),
    ("offset,task\n", "no tasks"),
])
def test_bad_traces_name_file_and_line(tmp_path, content, match):
    path = tmp_path / "trace.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        arrivals.parse(f"trace:{path}")


@pytest.mark.parametrize("spec", ["normal", "poisson:3", "bursty:1", "bursty:0,1", "ramp:1,2",
                                  "step:10@1", "step:10@0,20@0", "step:10", "trace:", 3])
def test_bad_specs_are_one_line(spec):
    with pytest.raises(ValueError) as e:
        arrivals.parse(spec)
    assert "\n" not in str(e.value)


def test_rate_processes_need_a_rate():
    with pytest.raises(ValueError, match="needs a rate"):
        arrivals.parse("poisson").offsets(3, 1, None)
