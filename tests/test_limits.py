"""The machine's limits as comlab reads them: the budgets are positive, bounded by what the
kernel allows, and a request beyond them is one line naming the limit."""

import pytest

from comlab.system import limits


def test_task_budget_is_a_share_of_what_is_free():
    budget, why = limits.task_budget()
    assert 0 < budget < limits.tasks_max() - limits.tasks_in_use()
    assert "in use" in why


def test_check_tasks_refuses_beyond_the_budget_with_one_line():
    budget, _ = limits.task_budget()
    limits.check_tasks(1, "a test")
    with pytest.raises(ValueError) as e:
        limits.check_tasks(limits.tasks_max() + 1, "a pool of 40,000 workers")
    assert "\n" not in str(e.value)
    assert "a pool of 40,000 workers needs" in str(e.value) and "room for" in str(e.value)


def test_rlimit_nproc_binds_non_root(monkeypatch):
    monkeypatch.setattr(limits.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(limits.resource, "getrlimit", lambda _: (limits.tasks_in_use() + 100, -1))
    budget, why = limits.task_budget()
    assert budget == 50 and why.startswith("RLIMIT_NPROC")


def test_check_memory():
    limits.check_memory(1 << 20, "a test")
    with pytest.raises(ValueError, match="needs about .* MiB; this machine has room for"):
        limits.check_memory(limits.available_memory() * 2, "a sweep")
