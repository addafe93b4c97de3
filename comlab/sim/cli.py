"""``comlab predict``: the model calibrated from a saved result, on the command line.

Without ``--workers``/``--hosts``/... it predicts the result's own configurations and prints
predicted vs measured makespan and p99 with the error of each (the validation table); with
them, it predicts the configurations given (every combination of the lists). ``--rate`` with
``--arrivals`` (comlab.arrivals) simulates an open-loop client, ``--wait`` draws the waits
(comlab.distributions), both from ``--seed``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..lab import checks

_ints = checks.listed(checks.at_least_arg(0), "integers >= 0")
_strs = checks.listed(str, "names")
_seconds = checks.arg(checks.non_negative, maximum=3600.0)  # a hop's added latency


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="predict a sweep with the simulation calibrated from a "
                                       "saved result (default: its own sweep, vs measured)")
    p.add_argument("result", help="a result directory, e.g. results/main")
    p.add_argument("--workers", type=_ints, metavar="W,W,...", help="worker processes")
    p.add_argument("--hosts", type=_ints, metavar="H,H,...",
                   help="worker hosts, each its own machine (default 0: workers on the "
                        "server's machine, as comlab run)")
    p.add_argument("--batch-sizes", type=_ints, metavar="B,B,...",
                   help="tasks per batch (default: the result's)")
    p.add_argument("--dispatch", type=_strs, metavar="D,D,...",
                   help="dispatch designs: broker, broker:K, queue (default: the result's)")
    p.add_argument("--strategy", type=_strs, metavar="S,S,...",
                   help="worker strategies (default: the result's)")
    p.add_argument("--tasks", type=int, metavar="N",
                   help="tasks per run (default: the result's; waits cycle through its own)")
    p.add_argument("--cpus", type=int, metavar="N", help="cores per machine (default: the "
                                                          "result's machine)")
    p.add_argument("--latency", type=_seconds, default=0.0, metavar="S",
                   help="added to each hop between two machines, in s (default 0)")
    p.add_argument("--rate", type=checks.rates_arg, metavar="R,R,...",
                   help="open loop: tasks/s the client sends at (none: closed loop, as fast as "
                        "the pipe takes; default)")
    p.add_argument("--arrivals", type=checks.arrivals_arg, action="append", metavar="SPEC",
                   help="when an open-loop client sends (repeat to sweep): constant, poisson, "
                        "bursty:ON,OFF (with --rate), ramp:R0,R1,SECONDS, step:R1@T1,..., "
                        "trace:FILE (default constant: without --rate the closed loop)")
    p.add_argument("--wait", type=checks.wait_spec_arg, metavar="DIST",
                   help="draw the waits: exponential, lognormal[:SIGMA], pareto[:ALPHA], "
                        "empirical:FILE, ... (default: the result's own waits, cycled)")
    p.add_argument("--wait-mean", type=checks.non_negative_arg, metavar="S",
                   help="mean wait of --wait, in s (default: the result's mean wait)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of the arrivals and waits drawn (repeat r: N + r; default 0)")
    p.add_argument("--calibration", metavar="DIR",
                   help="calibrate from this result instead (e.g. a one-host comlab run) and "
                        "predict RESULT's own configurations against its measurements")
    p.add_argument("--csv", metavar="FILE", type=checks.output_file_arg(),
                   help="also write every predicted column")
    p.set_defaults(func=run)


def run(args) -> int:
    import pandas as pd

    from . import predict, sweep
    from .calibrate import calibrate_each
    from ..lab.results import ResultError, saved_dir
    try:
        for path in (args.result, args.calibration):
            if path is not None:
                saved_dir(path)
    except ResultError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    source = args.calibration or args.result
    if args.wait_mean is not None and not args.wait:
        print("error: --wait-mean needs --wait (the distribution to draw from)",
              file=sys.stderr)
        return 2
    for name in ("tasks", "cpus"):
        v = getattr(args, name)
        if v is not None and v < 1:
            print(f"error: --{name} must be >= 1, not {v}", file=sys.stderr)
            return 2
    try:
        cal = calibrate_each(source)  # one per strategy and dispatch design: they cost apart
    except (ValueError, OSError) as exc:
        print(f"error: {source}: cannot calibrate from it: {exc}", file=sys.stderr)
        return 2
    own = not any(getattr(args, k) for k in ("workers", "hosts", "batch_sizes", "dispatch",
                                             "strategy", "tasks", "cpus", "rate", "wait")) \
        and not args.latency and not args.arrivals
    t0 = time.perf_counter()
    try:
        if own:
            pred = predict(cal, measured=args.result, name=Path(args.result).name,
                           seed=args.seed)
        else:
            from ..lab.results import load_results
            rec = load_results(args.result)
            axes = dict(batch_size=args.batch_sizes or sorted(rec["batch_size"].unique()),
                        workers=args.workers or sorted(rec["workers"].unique()),
                        hosts=args.hosts or [0],
                        dispatch=args.dispatch or sorted(map(str, rec["dispatch"].unique())),
                        strategy=args.strategy or sorted(map(str, rec["strategy"].unique())),
                        tasks=args.tasks, cpus=args.cpus, latency_s=args.latency,
                        rate=args.rate or [None], arrivals=args.arrivals or ["constant"],
                        wait=args.wait,
                        wait_mean_s=args.wait_mean)
            configs = [dict(c, arrivals="constant") if args.rate and c["rate"] is None
                       and not c["arrivals"].startswith("trace:") else c
                       for c in sweep(**axes)]  # --rate none: that configuration is closed
            pred = predict(cal, configs, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    cols = ["batch_size", "workers", "hosts", "dispatch", "strategy", "rate", "makespan_s",
            "throughput_tps", "latency_p50_s", "latency_p99_s", "server_utilisation",
            "client_utilisation", "extrapolated"]
    with pd.option_context("display.width", 200, "display.max_rows", 500,
                           "display.max_columns", 50, "display.float_format", "{:.4g}".format):
        if own:
            print(f"predicted vs measured {args.result} (median over repeats), calibrated "
                  f"from {source}; error = predicted / measured - 1")
            table = validation(args.result, pred)
            for c in ("makespan_error", "p99_error", "server_utilisation"):
                table[c] = table[c].map("{:+.1%}".format if "error" in c else "{:.1%}".format)
            print(table.to_string(index=False))
        else:
            print(f"predicted, calibrated from {source}")
            print(pred[[c for c in cols if c in pred]].to_string(index=False))
    print(f"simulated {len(pred)} configuration(s) in {wall:.1f} s", file=sys.stderr)
    if pred.attrs.get("note"):
        print(f"note: {pred.attrs['note']}", file=sys.stderr)
    if args.csv:
        from ..lab.atomic import write_text
        write_text(args.csv, pred.to_csv(index=False))
        print(f"every column: {args.csv}", file=sys.stderr)
    return 0


def validation(result, pred) -> "pd.DataFrame":
    """Measured vs predicted makespan and p99 per configuration (medians over repeats), with
    the relative error of each."""
    from ..lab.records import summarize
    from ..lab.results import load_results
    measured = summarize(load_results(result))
    axes = [c for c in ("batch_size", "workers", "strategy", "dispatch") if c in measured]
    axes += [c for c in ("rate", "arrivals") if c in measured and c in pred]  # open-loop rows
    for df in (measured, pred):
        for c in ("strategy", "dispatch", "arrivals"):
            if c in df:  # a closed loop's arrivals, if named at all, are constant
                df[c] = df[c].astype(object).where(df[c].notna(), "constant").astype(str)
    m = measured.groupby(axes, dropna=False)[["makespan_s", "latency_p99_s"]].median()
    p = pred.groupby(axes, dropna=False)[["makespan_s", "latency_p99_s",
                                          "server_utilisation"]].median()
    if "extrapolated" in pred:
        p = p.join(pred.groupby(axes, dropna=False)["extrapolated"].any())
    t = m.join(p, lsuffix="", rsuffix="_pred", how="inner").reset_index()
    out = t[axes].copy()
    for k, label in (("makespan_s", "makespan"), ("latency_p99_s", "p99")):
        out[f"{label}_measured_s"] = t[k]
        out[f"{label}_predicted_s"] = t[f"{k}_pred"]
        out[f"{label}_error"] = t[f"{k}_pred"] / t[k] - 1
    out["server_utilisation"] = t["server_utilisation"]
    if "extrapolated" in t:
        out["extrapolated"] = t["extrapolated"]
    return out
