"""One bench run: every section, the table, and the saved result (bench.json, meta.json, records).

    from bench.runner import run
    result = run("quick", out="results/bench-x")   # the dict saved as out/bench.json

Layout of ``out``: ``bench.json`` (every figure, its repeats, the environment, the command
line), ``meta.json`` (parameters + environment, as comlab's results have), ``table.txt``, and
one comlab result per experiment (``seed/``, ``zero-wait-w<N>/``, ``open-loop-<R>/``, each with
records.parquet and meta.json).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
import time
from pathlib import Path

from comlab.lab.results import environment

from . import report, sections

NOTES = [
    sections.BARE_LABEL + ".",
    "zero-wait: a task of wait 0 runs inline in every strategy (comlab/system/strategies.py), so "
    "thread-per-task, thread-pool and sequential do the same work there: differences are noise; "
    "cpu-bound is skipped (with wait 0 it is sequential too).",
    "ratio = figure / reference, both from this run; spreads are [min..max n=repeats] around "
    "the median (MAD in bench.json).",
]


def _clean(obj):
    """JSON-safe: NaN -> None, numpy scalars -> Python, tuple keys -> str."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def run(profile: str = "quick", out=None, *, dask: bool | None = None, log=print,
        argv: list | None = None) -> dict:
    """Run the bench with a profile ("full", "quick", "tiny"); save and return bench.json."""
    p = dict(sections.PROFILES[profile])
    if dask is not None:
        p["dask"] = dask and p["dask"]
    started = _dt.datetime.now().astimezone()
    out = Path(out) if out is not None else Path("results") / (
        "bench-" + started.strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    env = environment()
    env["loadavg_start"] = list(os.getloadavg())
    env["peers"] = _peer_versions()
    meta = {"params": {"profile": profile, **p}, "environment": env,
            "command": argv if argv is not None else [sys.executable, *sys.argv],
            "started": started.isoformat(timespec="seconds")}
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    log(f"comlab bench, profile {profile}; results in {out}")

    timings, raw, notes = {}, {}, list(NOTES)
    notes.append(
        f"profile {profile}: b = batch size, w = workers; seed: {p['seed_repeats']} runs at "
        f"wait_scale {p['seed_wait_scale']:g}; zero-wait: {p['zero_tasks']:,} tasks per run, "
        f"{p['zero_repeats']} run(s) per configuration, each bare {p['bare_repeats']}; closed "
        f"loop: {p['closed_repeats']} run(s) and as many of the thread reference; open loop: "
        f"{p['rate_seconds']:g} s (at least {p['rate_min_tasks']:,} tasks) per rate, 1 run; "
        f"peers: ProcessPoolExecutor {p['peer_zero_tasks']:,} tasks, Dask "
        f"{p['dask_zero_tasks']:,} tasks, {p['peer_repeats']} runs; comlab's side of a peer "
        "row is its own figure from sections 1 and 2 (zero-wait: sequential).")

    def step(name, fn, *args):
        log(f"[{name}]")
        t0 = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - t0, 2)
        log(f"  done in {timings[name]:.1f} s")
        return result

    rows5, raw["startup"] = step("5 start-up", sections.startup, p, out, log)
    rows1, raw["seed"] = step("1 seed", sections.seed, p, out, log)
    rows2, rows3, raw["zero_wait"] = step("2+3 zero-wait and bare", sections.zero_wait, p,
                                          out, log)
    rows2b, raw["closed_loop"] = step("2b closed loop", sections.closed_loop, p, out, log)
    rows4, raw["open_loop"] = step("4 open loop", sections.open_loop, p, out, log)
    zero_names = [f"zero-wait-w{w}" for w in p["workers"]]
    rows5b, raw["per_run"] = sections.per_run_overhead(out, [("zero-wait", zero_names),
                                                             ("seed", ["seed"])])
    rows6, raw["peers"], peer_notes = step("6 peers", sections.peer_rows, p, raw["seed"],
                                           raw["zero_wait"], log)
    notes += peer_notes

    rows7, raw["memory"] = step("7 memory", sections.memory, p, out, log)

    rows = rows1 + rows2 + rows2b + rows3 + rows4 + rows5 + rows5b + rows6 + rows7
    env["loadavg_end"] = list(os.getloadavg())
    duration = time.perf_counter() - t_start
    result = _clean({
        "bench": "comlab", "profile": profile, "params": p, "environment": env,
        "command": meta["command"], "date": meta["started"], "duration_s": round(duration, 1),
        "section_s": timings, "rows": rows, "raw": raw, "notes": notes,
        "targets": [{"target": t, "met": m} for t, m in report.targets(rows)],
        "experiments": sorted(d.name for d in out.iterdir() if (d / "meta.json").exists()),
    })
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    text = render(result)
    (out / "table.txt").write_text(text + "\n")
    meta["duration_s"] = round(duration, 1)
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    log("")
    log(text)
    log(f"\nsaved: {out / 'bench.json'} (+ records of {len(result['experiments'])} comlab "
        f"experiments); {duration:.0f} s in all")
    return result


def _peer_versions() -> dict:
    from importlib import metadata
    out = {}
    for name in ("dask", "distributed", "numpy", "pyarrow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def render(result: dict) -> str:
    """The table, the targets and the notes of a bench.json, as printed."""
    env = result["environment"]
    lines = [f"comlab bench ({result['profile']}), {result['date']}, {env['hostname']}, "
             f"{env['cpu_count']} CPUs, Python {env['python']}, pyzmq {env['pyzmq']} / "
             f"libzmq {env['libzmq']}, commit {(env.get('git_commit') or '?')[:10]}",
             "load average (1, 5, 15 min) at start " + _load(env.get("loadavg_start"))
             + ", at end " + _load(env.get("loadavg_end")) + " (other work on this machine)",
             "",
             report.table(result["rows"]), ""]
    met = sum(t["met"] for t in result["targets"])
    lines.append(f"targets: {met} of {len(result['targets'])} met")
    for t in result["targets"]:
        lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}")
    lines.append("")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def _load(values) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "?"


def latest(results_dir="results") -> Path | None:
    """The newest results/bench-*/bench.json, or None."""
    found = sorted(Path(results_dir).glob("bench-*/bench.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def load(path) -> dict:
    path = Path(path)
    return json.loads((path / "bench.json" if path.is_dir() else path).read_text())

