"""Saved results: ``<dir>/records.parquet``, ``<dir>/meta.json`` and one part per finished run.

Each run is written to ``parts/`` as soon as it ends, so an interrupted sweep keeps what finished
and can resume; ``records.parquet`` is the parts joined, written when the experiment stops.
meta.json carries how the figures were made (pyperf's habit): parameters, versions, host, clock,
timer slack, start and duration, and one entry per finished run.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd

from .. import __version__
from .records import CATEGORIES

META = "meta.json"
RECORDS = "records.parquet"
PARTS = "parts"


def environment() -> dict:
    """Versions, host and clock facts that a figure depends on."""
    import zmq
    import msgpack
    clock = time.get_clock_info("monotonic")
    try:
        slack = int(Path("/proc/self/timerslack_ns").read_text())
    except OSError:
        slack = None
    return {
        "comlab": __version__, "git_commit": _git_commit(),
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)), "pandas": pd.__version__,
        "platform": platform.platform(), "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "clock": {"name": "monotonic", "implementation": clock.implementation,
                  "resolution": clock.resolution, "monotonic": clock.monotonic},
        "timer_slack_ns": slack,
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class ResultStore:
    """One experiment's directory."""

    def __init__(self, path: str | os.PathLike, params: dict, *, resume: bool = True) -> None:
        self.path = Path(path)
        (self.path / PARTS).mkdir(parents=True, exist_ok=True)
        old = self.read_meta() if resume else None
        self.meta = {"params": params, "environment": environment(),
                     "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                     "duration_s": None, "runs": []}
        if old and old.get("params") == params:
            self.meta["runs"] = old.get("runs", [])
        else:
            for part in (self.path / PARTS).glob("*.parquet"):
                part.unlink()
        self._t0 = time.perf_counter()
        self._frames: dict[str, pd.DataFrame] = {}
        self.write_meta()

    def read_meta(self) -> dict | None:
        try:
            return json.loads((self.path / META).read_text())
        except (OSError, ValueError):
            return None

    def finished(self) -> dict:
        """Run key -> run entry, for runs saved already (resume)."""
        return {r["key"]: r for r in self.meta["runs"] if (self.path / PARTS / r["part"]).exists()}

    def save_run(self, df: pd.DataFrame, entry: dict) -> None:
        part = f"run-{entry['run']:05d}.parquet"
        df.to_parquet(self.path / PARTS / part, index=False)
        self._frames[part] = df  # finish() joins these without reading them back
        self.meta["runs"].append({**entry, "part": part})
        self.write_meta()

    def write_meta(self, **extra) -> None:
        self.meta.update(extra)
        self.meta["duration_s"] = round(time.perf_counter() - self._t0, 3)
        tmp = self.path / (META + ".tmp")
        tmp.write_text(json.dumps(self.meta, indent=2, default=str))
        tmp.replace(self.path / META)

    def finish(self) -> pd.DataFrame:
        df = load_parts(self.path, [r["part"] for r in self.meta["runs"]], self._frames)
        df.to_parquet(self.path / RECORDS, index=False)
        self.write_meta()
        df.attrs["cpu_count"] = self.meta["environment"]["cpu_count"]
        return df


def load_parts(path: Path, parts: list, in_memory: dict | None = None) -> pd.DataFrame:
    in_memory = in_memory or {}
    frames = [in_memory[p] if p in in_memory else pd.read_parquet(path / PARTS / p)
              for p in parts if p in in_memory or (path / PARTS / p).exists()]
    if not frames:
        return pd.DataFrame()
    return restore_dtypes(pd.concat(frames, ignore_index=True))


def restore_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    """Categoricals are per part in parquet; unify them after a concat."""
    from .records import STATUS
    for name in CATEGORIES:
        if name in df:
            df[name] = df[name].astype("category")
    if "status" in df:
        df["status"] = df["status"].astype(str).astype(STATUS)
    return df


def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """Records of a saved experiment (records.parquet, or the parts of an interrupted one)."""
    path = Path(path)
    meta = json.loads((path / META).read_text())
    if (path / RECORDS).exists():
        df = restore_dtypes(pd.read_parquet(path / RECORDS))
    else:
        df = load_parts(path, [r["part"] for r in meta["runs"]])
    # The ideal time of cpu-bound runs depends on the cores of the machine that ran them.
    df.attrs["cpu_count"] = meta.get("environment", {}).get("cpu_count")
    return df


def load_meta(path: str | os.PathLike) -> dict:
    return json.loads((Path(path) / META).read_text())
