"""What this machine lets comlab spend, read before work starts.

Threads are processes to the kernel: pid_max (and threads-max) count every thread of every
process on the machine, and a thread start that fails raises "can't start new thread" wherever
it happens, in comlab or in someone else's process. So comlab budgets processes and threads
together, against what is free now, and leaves half of it to the rest of the machine.
RLIMIT_NPROC bounds a non-root user's tasks the same way (root is exempt from it).

A server's tree of processes gets a fixed share of the machine's tasks: ``thread_share`` splits
``SHARE`` of the kernel's limit between its workers (each gang of threads stays within its part,
bigger batches run in waves), the same number wherever it is computed (the server, its workers,
the lab's ideal-time model); ``check_server`` refuses, before anything starts, a pool that does
not fit in what is free now.

Memory is budgeted against MemAvailable the same way. Every check raises ValueError with one line
naming the limit, the number asked for and the number that would fit.
"""

from __future__ import annotations

import os
import resource

SHARE = 0.5  # of what is free now: the machine is shared, comlab never takes all of it
WORKER_BASE_TASKS = 8  # a worker's process and its own threads (main, ZeroMQ's, a pool's few)
GANG_MAX = 1024        # most threads one worker's gang may have (comlab.system.gang)


def _read_int(path: str, default: int) -> int:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def tasks_max() -> int:
    """Most tasks (processes + threads) the kernel allows at once on this machine."""
    return min(_read_int("/proc/sys/kernel/pid_max", 32768),
               _read_int("/proc/sys/kernel/threads-max", 1 << 22))


def tasks_in_use() -> int:
    """Tasks (processes + threads) alive on the machine now (the 4th field of /proc/loadavg)."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[1])
    except (OSError, ValueError, IndexError):
        return 0


def nproc_limit() -> int | None:
    """RLIMIT_NPROC for this user, or None when it does not bind (root, unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if os.geteuid() == 0 or soft == resource.RLIM_INFINITY:
        return None
    return soft


def task_budget() -> tuple[int, str]:
    """(tasks comlab may add now, the limit that sets it, in words)."""
    total, used = tasks_max(), tasks_in_use()
    budget = int((total - used) * SHARE)
    why = f"pid_max {total}, {used} in use, comlab takes at most {SHARE:.0%} of the rest"
    nproc = nproc_limit()
    if nproc is not None and int((nproc - used) * SHARE) < budget:
        budget = int((nproc - used) * SHARE)
        why = f"RLIMIT_NPROC {nproc}, {used} in use, comlab takes at most {SHARE:.0%} of the rest"
    return max(budget, 0), why


def check_tasks(needed: int, what: str) -> None:
    """ValueError unless ``needed`` more processes + threads fit in the budget."""
    budget, why = task_budget()
    if needed > budget:
        raise ValueError(f"{what} needs {needed:,} processes and threads; this machine has room "
                         f"for {budget:,} ({why})")


def static_budget() -> int:
    """SHARE of the kernel's task limit (RLIMIT_NPROC when it binds): fixed for the machine."""
    nproc = nproc_limit()
    total = tasks_max() if nproc is None else min(tasks_max(), nproc)
    return int(total * SHARE)


def thread_share(workers: int) -> int:
    """Threads each of ``workers`` local workers may run at once (its gang's size, at most
    GANG_MAX): the static budget split between them. A thread-per-task batch with more tasks
    runs in waves of this size."""
    per_worker = static_budget() // max(workers, 1) - WORKER_BASE_TASKS
    return max(1, min(GANG_MAX, per_worker))


def command_share(workers: int) -> int:
    """Commands (comlab.system.usertask) each of ``workers`` local workers may run at once:
    half its thread share, since a command is a process and the thread waiting for it another
    task of the kernel's, so threads and commands together stay within the share."""
    return max(1, thread_share(workers) // 2)


def check_server(workers: int) -> int:
    """A server with ``workers`` local workers: ValueError (one line) unless they fit in what is
    free now, each with one thread to run tasks; else the threads each may run (thread_share)."""
    check_tasks(workers * (WORKER_BASE_TASKS + 1) + WORKER_BASE_TASKS,
                f"a server with {workers:,} workers")
    return thread_share(workers)


def available_memory() -> int:
    """Bytes the kernel says can be allocated now without swapping (MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_memory(needed: int, what: str) -> None:
    """ValueError unless ``needed`` bytes fit in the memory budget."""
    budget = int(available_memory() * SHARE)
    if needed > budget:
        raise ValueError(f"{what} needs about {needed / 2**20:,.0f} MiB; this machine has room "
                         f"for {budget / 2**20:,.0f} MiB (MemAvailable "
                         f"{available_memory() / 2**20:,.0f} MiB, comlab takes at most "
                         f"{SHARE:.0%})")


# What one worker costs, measured on this 2-core VM (Python 3.11, pyzmq 27) with
# `python -m bench.worker_cost 32 16` and `... 16 512` (psutil's USS of each worker after a run):
# idle 3.0 MiB, after batches of 16 4.3 MiB (19 threads), of 512 12.6 MiB (515 threads): ~19 KiB
# of user memory per kept thread, plus ~25 KiB in the kernel (its stack, task struct). The
# MemAvailable drops it also prints are too noisy on a shared machine to set a figure.
WORKER_BYTES = 4 << 20    # one idle worker process, rounded up
THREAD_BYTES = 48 << 10   # one thread a worker keeps warm
WORKER_THREADS = 3        # an idle worker's own threads: main, libzmq's I/O thread and reaper
SERVER_TASKS = 16         # the server's threads, its forkserver, resource tracker, client agent


def check_workers(workers: int, threads_each: int, what: str,
                  extra_tasks: int = SERVER_TASKS) -> None:
    """ValueError unless ``workers`` worker processes of ``threads_each`` threads each (their
    own WORKER_THREADS included), plus ``extra_tasks`` for the rest, fit both budgets; one
    line naming the limit and how many workers would fit."""
    budget, why = task_budget()
    need = workers * threads_each + extra_tasks
    if need > budget:
        fit = max(0, (budget - extra_tasks) // threads_each)
        raise ValueError(f"{what}: {workers:,} workers of {threads_each:,} threads each need "
                         f"{need:,} processes and threads; this machine has room for "
                         f"{budget:,} ({why}): at most {fit:,} workers fit")
    each = WORKER_BYTES + max(0, threads_each - WORKER_THREADS) * THREAD_BYTES
    room = int(available_memory() * SHARE)
    if workers * each > room:
        raise ValueError(f"{what}: {workers:,} workers need about "
                         f"{workers * each / 2**20:,.0f} MiB ({each / 2**20:.1f} MiB each); "
                         f"this machine has room for {room / 2**20:,.0f} MiB (MemAvailable "
                         f"{available_memory() / 2**20:,.0f} MiB, comlab takes at most "
                         f"{SHARE:.0%}): at most {room // each:,} workers fit")
