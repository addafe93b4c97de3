"""Peers on comlab's two workloads: concurrent.futures, and Dask when it is installed.

* Seed example (512 tasks that each sleep ``wait`` s): ``ThreadPoolExecutor(512)`` in-process;
  Dask ``LocalCluster`` of 4 processes x 128 threads with ``client.map``.
* Zero-wait throughput (tasks that return 1 at once): ``ProcessPoolExecutor(2).map`` with
  chunksize 1 and 256; Dask ``LocalCluster`` of 2 processes x 1 thread, ``client.map`` per task
  and over chunks of 256 tasks.

Pools and clusters are started (and warmed up) before the clock starts, as comlab's pool is; a
figure is the wall time of one ``map`` + gather, from the first submit to the last result.
Functions live in this module so that worker processes import them by name.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, wait as _wait

DASK_SKIPPED = "dask: skipped (pip install -e '.[peers]')"


def sleep_task(wait: float) -> int:
    time.sleep(wait)
    return 1


def respond(key) -> int:
    return 1


def respond_chunk(keys) -> list:
    return [1 for _ in keys]


def keys_for(n: int) -> list:
    return [f"10.0.{(i >> 8) & 255}.{i & 255}:run" for i in range(n)]


# -- concurrent.futures ----------------------------------------------------------------------
def threads_seed(n_tasks: int = 512, wait: float = 1.0, threads: int = 512,
                 repeats: int = 3) -> list:
    """Makespans (s) of n_tasks sleeps of ``wait`` s on one ThreadPoolExecutor(threads)."""
    out = []
    with ThreadPoolExecutor(threads) as ex:
        for _ in range(repeats):
            t0 = time.perf_counter()
            futures = [ex.submit(sleep_task, wait) for _ in range(n_tasks)]
            _wait(futures)
            out.append(time.perf_counter() - t0)
            assert sum(f.result() for f in futures) == n_tasks
    return out


def processes_zero(n_tasks: int, chunksizes=(1, 256), workers: int = 2,
                   repeats: int = 3) -> dict:
    """{chunksize: [throughput_tps per repeat]} of ProcessPoolExecutor(workers).map(respond)."""
    keys = keys_for(n_tasks)
    out: dict = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        list(ex.map(respond, keys[: 4 * workers]))  # every process started and warm
        for chunksize in chunksizes:
            out[chunksize] = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                got = sum(ex.map(respond, keys, chunksize=chunksize))
                out[chunksize].append(n_tasks / (time.perf_counter() - t0))
                assert got == n_tasks
    return out


# -- Dask -------------------------------------------------------------------------------------
def dask_available() -> bool:
    try:
        import dask.distributed  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def dask_cluster(n_workers: int, threads_per_worker: int, timeout: float = 120.0):
    from dask.distributed import Client, LocalCluster
    with LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                      processes=True, dashboard_address=None, silence_logs=logging.ERROR,
                      timeout=timeout) as cluster, Client(cluster, timeout=timeout) as client:
        client.wait_for_workers(n_workers, timeout=timeout)
        yield client


def dask_seed(n_tasks: int = 512, wait: float = 1.0, repeats: int = 3, processes: int = 4,
              threads: int = 128) -> dict:
    """Makespans (s) of n_tasks sleeps on a LocalCluster(processes x threads); start-up time."""
    t0 = time.perf_counter()
    with dask_cluster(processes, threads) as client:
        start_s = time.perf_counter() - t0
        client.gather(client.map(sleep_task, [0.0] * processes * 4, pure=False))
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            got = sum(client.gather(client.map(sleep_task, [wait] * n_tasks, pure=False)))
            out.append(time.perf_counter() - t0)
            assert got == n_tasks
    return {"makespans_s": out, "cluster_start_s": start_s}


def dask_zero(n_tasks: int, chunk: int = 256, repeats: int = 3, processes: int = 2) -> dict:
    """Throughputs (tasks/s) of client.map per task and over chunks of ``chunk`` tasks."""
    keys = keys_for(n_tasks)
    chunks = [keys[i:i + chunk] for i in range(0, n_tasks, chunk)]
    t0 = time.perf_counter()
    with dask_cluster(processes, 1) as client:
        start_s = time.perf_counter() - t0
        client.gather(client.map(respond, keys[: 4 * processes], pure=False))
        per_task, chunked = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            got = sum(client.gather(client.map(respond, keys, pure=False)))
            per_task.append(n_tasks / (time.perf_counter() - t0))
            assert got == n_tasks
            t0 = time.perf_counter()
            got = sum(map(sum, client.gather(client.map(respond_chunk, chunks, pure=False))))
            chunked.append(n_tasks / (time.perf_counter() - t0))
            assert got == n_tasks
    return {1: per_task, chunk: chunked, "cluster_start_s": start_s}
