"""CPU per task per process: ``python -m bench.cpu BATCH N WORKERS [DISPATCH [WAIT]]``.

A ServerProcess (WORKERS workers, sequential, a map of WAIT-second tasks: default 0) and an
in-process Client; psutil CPU times of every process around one run of N tasks, divided by N
(after a warm-up run). With a WAIT each result comes on its own (nothing to coalesce): the
per-message costs, and the wake-ups of processes that sleep between messages.
"""
import sys, time, shutil, os
import psutil
from comlab.lab.processes import ServerProcess, workdir
from comlab.system.client import Client

b, n, w = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
dispatch = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] != "-" else None
wait = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
tmp = workdir()
hosts = 1000
with open(f"{tmp}/map.txt", "w") as f:
    for i in range(hosts):
        f.write(f"10.{i // 256}.{i % 256}.1:run:1:{wait!r}\n")
keys = [f"10.{(i % hosts) // 256}.{(i % hosts) % 256}.1:run" for i in range(n)]
server = ServerProcess(f"{tmp}/map.txt", w, tmp, strategy="sequential", dispatch=dispatch)
try:
    sp = psutil.Process(server.proc.pid)
    procs = [sp] + sp.children(recursive=True)
    me = psutil.Process()
    Client(keys[:2000], b, "tcp://127.0.0.1:*", server.url, timeout=60).run()  # warm
    def cpu():
        out = {}
        for p in procs + [me]:
            try:
                t = p.cpu_times(); out[p.pid] = t.user + t.system
            except psutil.Error: pass
        return out
    c0 = cpu(); t0 = time.perf_counter()
    run = Client(keys, b, "tcp://127.0.0.1:*", server.url, timeout=120).run()
    wall = time.perf_counter() - t0
    c1 = cpu()
    s = run.summary()
    print(f"batch {b} workers {w} {dispatch}: {s['ok']} ok, {n / s['elapsed_s']:,.0f} tasks/s, wall {wall:.2f}")
    names = {sp.pid: "server", me.pid: "client"}
    tot = 0
    for pid in c1:
        d = (c1[pid] - c0.get(pid, 0)) / n * 1e6
        tot += d
        print(f"  {names.get(pid, 'worker ' + str(pid)):14s} {d:7.1f} us/task")
    print(f"  total          {tot:7.1f} us/task")
finally:
    server.stop(); shutil.rmtree(tmp, ignore_errors=True)
