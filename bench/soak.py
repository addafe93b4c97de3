"""Soak: N zero-wait tasks in one run; every task must come back, memory must stay bounded.

    python -m bench.soak [--tasks 1000000] [--batch-size 64] [--workers 2]

Prints tasks, time, tasks/s and the peak RSS of every process (sampled every 50 ms), and exits
non-zero if any task is missing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time

import numpy as np
import psutil

from comlab.system import protocol as P
from comlab.lab.processes import AgentProcess, ServerProcess, workdir


def sample_rss(pids_of, peaks: dict, stop: threading.Event, period: float = 0.05) -> None:
    while not stop.wait(period):
        for proc in pids_of():
            try:
                name = " ".join(proc.cmdline()[1:4])[:60]
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            key = (proc.pid, name)
            peaks[key] = max(peaks.get(key, 0), rss)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--strategy", default="sequential")
    args = p.parse_args(argv)

    tmp = workdir()
    hosts = 1000
    map_file = f"{tmp}/map.txt"
    with open(map_file, "w") as f:
        for i in range(hosts):
            f.write(f"10.{i // 256}.{i % 256}.1:run:1:0\n")
    keys = [f"10.{(i % hosts) // 256}.{(i % hosts) % 256}.1:run" for i in range(args.tasks)]
    me = psutil.Process()
    peaks: dict = {}
    stop = threading.Event()
    server = agent = None
    try:
        server = ServerProcess(map_file, args.workers, tmp, strategy=args.strategy)
        agent = AgentProcess(tmp)
        sampler = threading.Thread(target=sample_rss, daemon=True,
                                   args=(lambda: me.children(recursive=True), peaks, stop))
        sampler.start()
        t0 = time.perf_counter()
        run = agent.run(keys, batch_size=args.batch_size, bind_url="tcp://127.0.0.1:*",
                        server_url=server.url, timeout=600.0, log_path=f"{tmp}/results.log")
        cols = run.columns()  # read back from the agent's result log, here
        wall = time.perf_counter() - t0
    finally:
        stop.set()
        if agent:
            agent.stop()
        if server:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    status = cols["status"]
    counts = {name: int(c) for name, c in zip(P.STATUS_NAMES,
                                               np.bincount(status, minlength=5))}
    sent, recv = cols["t_sent"], cols["t_received"]
    elapsed = (recv.max() - sent.min()) / 1e9
    print(f"tasks {args.tasks:,}  batch {args.batch_size}  workers {args.workers}  "
          f"strategy {args.strategy}")
    print(f"statuses {counts}")
    print(f"elapsed {elapsed:.2f} s (first send to last result), {args.tasks / elapsed:,.0f} "
          f"tasks/s; client call {wall:.2f} s")
    print("peak RSS per process:")
    for (pid, name), rss in sorted(peaks.items(), key=lambda kv: -kv[1]):
        print(f"  {rss / 2**20:8.1f} MiB  pid {pid:<7} {name}")
    print(f"  (this process: {me.memory_info().rss / 2**20:.1f} MiB at the end)")
    return 0 if counts["ok"] == args.tasks else 1


if __name__ == "__main__":
    sys.exit(main())
