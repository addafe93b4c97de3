"""Soak: N zero-wait tasks in one run; every task must come back, memory must stay bounded.

    python -m bench.soak [--tasks 1000000] [--batch-size 256] [--workers 2]

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


def measure(tasks: int, batch_size: int, workers: int = 2, strategy: str = "sequential",
            hosts: int = 1000) -> dict:
    """One run of ``tasks`` zero-wait tasks through the lab's own client agent; the statuses,
    the elapsed time and the peak RSS of every process (the agent's under "agent_peak_mib")."""
    tmp = workdir()
    map_file = f"{tmp}/map.txt"
    with open(map_file, "w") as f:
        for i in range(hosts):
            f.write(f"10.{i // 256}.{i % 256}.1:run:1:0\n")
    keys = [f"10.{(i % hosts) // 256}.{(i % hosts) % 256}.1:run" for i in range(tasks)]
    me = psutil.Process()
    peaks: dict = {}
    stop = threading.Event()
    server = agent = None
    try:
        server = ServerProcess(map_file, workers, tmp, strategy=strategy)
        agent = AgentProcess(tmp)
        sampler = threading.Thread(target=sample_rss, daemon=True,
                                   args=(lambda: me.children(recursive=True), peaks, stop))
        sampler.start()
        t0 = time.perf_counter()
        run = agent.run(keys, batch_size=batch_size, bind_url="tcp://127.0.0.1:*",
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
    counts = {name: int(c) for name, c in zip(P.STATUS_NAMES,
                                               np.bincount(cols["status"], minlength=5))}
    elapsed = (cols["t_received"].max() - cols["t_sent"].min()) / 1e9
    agent_peak = max((rss for (_, name), rss in peaks.items() if "comlab.lab.agent" in name),
                     default=0)
    return {"tasks": tasks, "batch_size": batch_size, "workers": workers, "strategy": strategy,
            "counts": counts, "elapsed_s": float(elapsed), "wall_s": wall, "peaks": peaks,
            "agent_peak_mib": agent_peak / 2**20, "lab_rss_mib": me.memory_info().rss / 2**20}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--strategy", default="sequential")
    args = p.parse_args(argv)
    m = measure(args.tasks, args.batch_size, args.workers, args.strategy)
    print(f"tasks {args.tasks:,}  batch {args.batch_size}  workers {args.workers}  "
          f"strategy {args.strategy}")
    print(f"statuses {m['counts']}")
    print(f"elapsed {m['elapsed_s']:.2f} s (first send to last result), "
          f"{args.tasks / m['elapsed_s']:,.0f} tasks/s; client call {m['wall_s']:.2f} s")
    print("peak RSS per process:")
    for (pid, name), rss in sorted(m["peaks"].items(), key=lambda kv: -kv[1]):
        print(f"  {rss / 2**20:8.1f} MiB  pid {pid:<7} {name}")
    print(f"  (this process: {m['lab_rss_mib']:.1f} MiB at the end)")
    return 0 if m["counts"]["ok"] == args.tasks else 1


if __name__ == "__main__":
    sys.exit(main())
