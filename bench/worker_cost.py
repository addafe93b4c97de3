"""What a worker costs: ``python -m bench.worker_cost N BATCH``.

Starts ``comlab.run_server`` with N local workers, runs the seed's 512 tasks in batches of BATCH
(so each worker keeps BATCH threads warm), then reads every worker with psutil
(``memory_full_info``: RSS, USS, PSS; thread count) and MemAvailable before and after. The
figures behind comlab.system.limits.WORKER_BYTES / THREAD_BYTES / WORKER_THREADS.
"""
import json, statistics, subprocess, sys, time
import psutil
from comlab import data
from comlab.system.limits import available_memory

n, batch = int(sys.argv[1]), int(sys.argv[2])
a0 = available_memory()
srv = subprocess.Popen([sys.executable, "-m", "comlab.run_server",
                        str(data.seed_path("server_data.txt")), "tcp://127.0.0.1:*", "", str(n),
                        "--ready-json", "--watch-stdin"], stdout=subprocess.PIPE,
                       stdin=subprocess.PIPE)
try:
    info = json.loads(srv.stdout.readline())
    a1 = available_memory()
    subprocess.run([sys.executable, "-m", "comlab.run_client", str(data.seed_path("client_data.txt")),
                    str(batch), "tcp://127.0.0.1:*", info["bind"]], capture_output=True,
                   timeout=60, check=True)
    time.sleep(0.5)
    a2 = available_memory()
    rows = []
    for k in psutil.Process(srv.pid).children(recursive=True):
        if "multiprocessing" in " ".join(k.cmdline()):
            continue  # forkserver, resource tracker
        m = k.memory_full_info()
        rows.append((m.rss, m.uss, m.pss, k.num_threads()))
    med = lambda i: statistics.median(r[i] for r in rows) / 2**20  # noqa: E731
    print(f"{len(rows)} workers, batch {batch}: median RSS {med(0):.2f} USS {med(1):.2f} "
          f"PSS {med(2):.2f} MiB, threads {max(r[3] for r in rows)}; MemAvailable down "
          f"{(a0 - a1) / n / 2**20:.2f} MiB per worker at start, {(a0 - a2) / n / 2**20:.2f} "
          f"MiB after the run")
finally:
    srv.stdin.close()
    srv.wait(10)
