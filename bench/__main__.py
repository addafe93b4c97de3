"""``python -m bench [--quick] [--out DIR] [--no-dask]``: comlab against its ideal, a bare
pipeline, raw pyzmq and its peers, in one run; prints a table with ratios and saves it.

Sections: 1 seed example (makespan / ideal), 2 zero-wait throughput per strategy, batch size
and worker count, 2b the closed loop (1 worker, batch 1, tasks of 10 ms) next to a thread's
sleep + queue hand-off, 3 the bare 3-hop pipeline (bench/bare.py) and the bare load-balancing
broker (bench/bare_broker.py) on the same sizes, interleaved with comlab, 4 per-task
overhead at batch 1 under open-loop load next to a raw REQ/REP round trip (bench/reqrep.py),
5 pool start-up and the per-run overhead of a sweep, 6 concurrent.futures and Dask on the seed
and zero-wait workloads, 7 the client agent's peak memory over 1,000,000 zero-wait tasks
(bench/soak.py). ``--quick`` takes under 2 minutes, the full bench under 15.

Beside it, run on their own: ``python -m bench.theory`` (the queue and broker designs against
M/M/c queueing theory), ``bench.cpu``, ``bench.soak``, ``bench.wire``, ``bench.chaos``.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="profile", const="quick",
                      help="fewer tasks and repeats: under 2 minutes")
    mode.add_argument("--tiny", action="store_const", dest="profile", const="tiny",
                      help="seconds, for smoke tests and notebooks (no Dask)")
    p.add_argument("--out", metavar="DIR", help="output directory "
                                                "(default results/bench-<timestamp>)")
    p.add_argument("--no-dask", action="store_true", help="skip Dask even if installed")
    args = p.parse_args(argv)
    from .runner import run
    run(args.profile or "full", args.out, dask=False if args.no_dask else None,
        argv=[sys.executable, "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
