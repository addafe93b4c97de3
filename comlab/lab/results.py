"""Saved results: ``<dir>/records.parquet``, ``<dir>/meta.json`` and one part per finished run.

Each run is written to ``parts/`` as soon as it ends, so an interrupted sweep keeps what finished
and can resume; ``records.parquet`` is the parts joined, written when the sweep stops (finished
or not). meta.json carries how the figures were made (pyperf's habit): parameters, versions,
host, clock, timer slack, start and duration, and one entry per finished run.

Trust: a sweep resumes a saved result only when its parameters (which include the content hash
of the data), the comlab commit and dirty state, the host, its CPU count and the library
versions all match (``provenance.RESUME_KEYS``); otherwise ``ResumeRefused`` names what differs.
Starting afresh (``fresh=True``, ``comlab run --fresh``) moves the earlier result aside to
``<name>.<its start time>``: nothing is ever deleted. While a sweep writes a result it holds an
exclusive ``flock`` on ``<results_dir>/.<name>.lock``: a second sweep on it gets ``ResultLocked``;
the lock file is removed when the sweep ends.

Format history of meta.json (``format_version``; records.parquet is plain parquet throughout):

* 1 (no ``format_version`` key; comlab up to commit f3d5b7b): ``params``, ``environment``,
  ``started`` (rewritten by every resume), ``duration_s``, ``runs`` (one entry per run: ``key``,
  ``run``, the axes, ``part``, ``server_start_s``, ``run_wall_s``, ``duplicates``, ``garbage``,
  ``clock``). Loads (categoricals restored by name); cannot be resumed.
  Records of format 1 have no ``dispatch`` column: ``load_results`` adds it as "broker", the
  only design there was.
* 2: adds ``format_version``, ``name``, ``complete`` (false until every planned run finished),
  ``sessions`` (one per sweep that wrote to it: ``started``, ``duration_s``, ``runs``,
  ``loadavg_start``), ``resumed_runs``, ``started`` kept from the first session, ``dtypes``
  (column -> dtype of the records, restored on load), ``warnings`` (comlab.lab.stability).
  Runs gain ``session``, ``resumed`` (measured by an earlier session), ``timeout_s``,
  ``loadavg_start``, ``loadavg_end`` and ``server`` (the server's counters over the run). ``params`` gain ``data_sha256`` and name the data files
  actually used; ``environment`` gains ``git_dirty``, ``git_diff_sha256``, ``numpy``,
  ``pyarrow``. Open-loop runs carry ``arrivals`` (the process) and ``arrivals_seed`` (the
  seed their schedule was drawn from); ``params`` carry ``arrivals`` unless it is only
  "constant" (so results made before arrivals existed still resume).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import time
import warnings
from pathlib import Path

import pandas as pd

from .. import ComlabWarning
from . import atomic
from .atomic import DiskFull
from .provenance import differences, environment  # noqa: F401  (environment: bench uses it)
from .records import CATEGORIES
from .stability import loadavg

FORMAT_VERSION = 2
META = "meta.json"
RECORDS = "records.parquet"
PARTS = "parts"
FRESH_HINT = "fresh=True (comlab run --fresh) starts afresh and moves the earlier result aside"


class ResultError(ValueError):
    """A result directory that cannot be written as asked."""


class ResumeRefused(ResultError):
    """A saved result differs from the sweep that would resume it."""


class ResultLocked(ResultError):
    """Another sweep is writing this result."""


# What a result's name gets beside it: ".<name>.lock" and, moved aside, "<name>.<start>-<n>".
NAME_ROOM = len(".20260101-120000-99")


def check_name(name, results_dir=".") -> str:
    """A result's name is a plain name: a directory inside ``results_dir``, nothing else, short
    enough for the file system with its lock and moved-aside suffixes."""
    from .checks import name_max
    text = str(name)
    if not text or text.startswith(".") or any(c in text for c in ("/", "\\", "\0")) \
            or text != text.strip():
        raise ResultError(f"result name {text!r} is not a plain name (no path separators, no "
                          f"leading '.', not empty)")
    longest = name_max(results_dir) - NAME_ROOM
    if len(text.encode()) > longest:
        raise ResultError(f"result name {text[:20]!r}... is {len(text.encode())} bytes: at most "
                          f"{longest} (the file system's {name_max(results_dir)} less room for "
                          f"its lock and moved-aside names)")
    return text


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


class ResultStore:
    """One experiment's directory, locked while a sweep writes it (a context manager)."""

    def __init__(self, results_dir, name: str, params: dict, *, resume: bool = True) -> None:
        results_dir = Path(results_dir)
        self.path = results_dir / check_name(name, results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        self._lock_path = results_dir / f".{name}.lock"
        self._lock = _acquire(self._lock_path, self.path)
        try:
            self.env = environment()
            old = self._earlier(params, resume)
            (self.path / PARTS).mkdir(parents=True, exist_ok=True)
            atomic.remove_leftovers(self.path, self.path / PARTS)  # of a killed writer
            self.meta = self._new_meta(name, params, old)
            self._t0 = time.perf_counter()
            self._frames: dict[str, pd.DataFrame] = {}
            self.write_meta()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, exc_type, exc, _tb) -> None:
        try:
            if exc_type is not None and not issubclass(exc_type, DiskFull):
                self._finish_after_failure()
        finally:
            self.close()

    def close(self) -> None:
        if self._lock is not None:
            _release(self._lock, self._lock_path)
            self._lock = None

    def _earlier(self, params: dict, resume: bool) -> dict | None:
        """The saved meta to resume from; refuses or moves aside what cannot be resumed."""
        if not self.path.exists() or not any(self.path.iterdir()):
            return None
        old = read_meta(self.path)
        if not resume:
            self._move_aside(old)
            return None
        if old is None:
            raise ResumeRefused(f"{self.path} exists but holds no readable {META}; "
                                f"{FRESH_HINT}")
        check_format(old, self.path)
        diffs = differences(old, params, self.env)
        if old.get("format_version") is None:
            diffs.insert(0, "saved by an older comlab (meta.json format 1)")
        if diffs:
            raise ResumeRefused(f"{self.path} holds an earlier sweep that cannot be resumed: "
                                f"{'; '.join(diffs)}. {FRESH_HINT}")
        return old

    def _move_aside(self, old: dict | None) -> None:
        started = (old or {}).get("started") or _dt.datetime.fromtimestamp(
            self.path.stat().st_mtime).isoformat()
        stamp = started[:19].replace("-", "").replace(":", "").replace("T", "-")
        target, n = self.path.with_name(f"{self.path.name}.{stamp}"), 1
        while target.exists():
            target, n = self.path.with_name(f"{self.path.name}.{stamp}-{n}"), n + 1
        self.path.rename(target)
        warnings.warn(f"starting {self.path} afresh: the earlier result was moved to {target}",
                      ComlabWarning, stacklevel=4)

    def _new_meta(self, name: str, params: dict, old: dict | None) -> dict:
        old = old or {}
        runs = [{**r, "resumed": True} for r in old.get("runs", [])]
        sessions = old.get("sessions", []) + [{"started": _now(), "duration_s": 0.0, "runs": 0,
                                               "loadavg_start": loadavg()}]
        return {"format_version": FORMAT_VERSION, "name": name, "params": params,
                "environment": self.env, "started": old.get("started") or _now(),
                "complete": False, "duration_s": None, "sessions": sessions,
                "resumed_runs": len(runs), "runs": runs, "warnings": [], "dtypes": {}}

    @property
    def session(self) -> int:
        return len(self.meta["sessions"]) - 1

    def finished(self) -> dict:
        """Run key -> run entry, for runs saved already (resume)."""
        return {r["key"]: r for r in self.meta["runs"] if (self.path / PARTS / r["part"]).exists()}

    def save_run(self, df: pd.DataFrame, entry: dict) -> None:
        part = f"run-{entry['run']:05d}.parquet"
        atomic.write_bytes(self.path / PARTS / part, atomic.parquet_bytes(df))
        self._frames[part] = df  # finish() joins these without reading them back
        self.meta["runs"].append({**entry, "part": part, "session": self.session,
                                  "resumed": False})
        self.meta["sessions"][-1]["runs"] += 1
        self.write_meta()

    def write_meta(self, **extra) -> None:
        self.meta.update(extra)
        self.meta["sessions"][-1]["duration_s"] = round(time.perf_counter() - self._t0, 3)
        self.meta["duration_s"] = round(sum(s.get("duration_s") or 0
                                            for s in self.meta["sessions"]), 3)
        atomic.write_text(self.path / META, json.dumps(self.meta, indent=2, default=str))

    def finish(self, complete: bool = True) -> pd.DataFrame:
        """Join the finished runs into records.parquet; ``complete``: every planned run is in."""
        df = load_parts(self.path, [r["part"] for r in self.meta["runs"]], self._frames)
        atomic.write_bytes(self.path / RECORDS, atomic.parquet_bytes(df))
        self.write_meta(complete=complete, dtypes={c: str(t) for c, t in df.dtypes.items()})
        _set_attrs(df, self.meta)
        return df

    def _finish_after_failure(self) -> None:
        try:
            self.finish(complete=False)  # join what finished; never mask what got us here
        except Exception as exc:
            warnings.warn(f"could not join the finished runs of {self.path}: {exc}",
                          ComlabWarning)


def _acquire(lock_path: Path, result: Path):
    """An exclusive flock on ``lock_path``, created if need be. Its holder unlinks it on
    release (``_release``), so no lock file outlives its sweep; a file unlinked between our
    open and our flock is not the lock any more: try again on the new one."""
    while True:
        f = open(lock_path, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise ResultLocked(f"{result} is being written by another sweep (lock {lock_path} "
                               f"is held); wait for it to finish or choose another name") from None
        try:
            if os.stat(lock_path).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()


def _release(f, lock_path: Path) -> None:
    """Unlink while still holding the lock (a waiter then sees a stale inode and retries)."""
    try:
        os.unlink(lock_path)
    except FileNotFoundError:
        pass
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()


def read_meta(path) -> dict | None:
    try:
        return json.loads((Path(path) / META).read_text())
    except (OSError, ValueError):
        return None


def load_parts(path: Path, parts: list, in_memory: dict | None = None,
               dtypes: dict | None = None) -> pd.DataFrame:
    in_memory = in_memory or {}
    frames = [in_memory[p] if p in in_memory else pd.read_parquet(path / PARTS / p)
              for p in parts if p in in_memory or (path / PARTS / p).exists()]
    if not frames:
        return pd.DataFrame()
    return restore_dtypes(pd.concat(frames, ignore_index=True), dtypes)


def restore_dtypes(df: pd.DataFrame, dtypes: dict | None = None) -> pd.DataFrame:
    """Categoricals are per part in parquet: unify them after a concat; then (format 2) give
    every column the dtype meta.json recorded for it."""
    from .records import STATUS
    for name in CATEGORIES:
        if name in df:
            df[name] = df[name].astype("category")
    if "status" in df:
        df["status"] = df["status"].astype(str).astype(STATUS)
    for name, dtype in (dtypes or {}).items():
        if name in df and name != "status" and str(df[name].dtype) != dtype:
            df[name] = df[name].astype(dtype)
    return df


def _set_attrs(df: pd.DataFrame, meta: dict) -> None:
    """What summarize needs beyond the records: the cores of the machine that ran them (the
    cpu-bound ideal) and each run's timeout (the latency a lost task counts with); and the
    parameters, so that compare can tell whether two results ran the same workload."""
    df.attrs["params"] = meta.get("params", {})
    df.attrs["cpu_count"] = meta.get("environment", {}).get("cpu_count")
    name = meta.get("name")
    df.attrs["timeouts"] = {(r.get("experiment", name), r["run"]): r["timeout_s"]
                            for r in meta.get("runs", []) if r.get("timeout_s") is not None}


def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """Records of a saved experiment: exactly the runs its meta.json lists (records.parquet
    when it holds those runs, else their parts: an interrupted or killed sweep)."""
    path = Path(path)
    meta = load_meta(path)
    dtypes = meta.get("dtypes") if meta.get("format_version", 1) >= 2 else None
    df = _listed_runs(path, meta, dtypes)
    if meta.get("format_version", 1) < 2 and len(df) and "dispatch" not in df:
        # Saved before dispatch designs were an axis: every run used today's default broker.
        df.insert(int(df.columns.get_loc("transport")) + 1, "dispatch",
                  pd.Categorical(["broker"] * len(df)))
    _set_attrs(df, meta)
    return df


def _listed_runs(path: Path, meta: dict, dtypes) -> pd.DataFrame:
    """records.parquet may be older than meta.json (a sweep killed before it joined its runs)
    or unreadable (written in place by an older comlab): then the parts decide."""
    runs = meta.get("runs", [])
    wanted = {int(r["run"]) for r in runs}
    joined, error = None, None
    if (path / RECORDS).exists():
        try:
            joined = pd.read_parquet(path / RECORDS)
        except (OSError, ValueError) as exc:
            error = exc
        if joined is not None and "run" in joined and set(joined["run"].unique()) == wanted:
            return restore_dtypes(joined, dtypes)
    missing = [r["run"] for r in runs if not (path / PARTS / r.get("part", "-")).is_file()]
    if error is not None and not runs:
        raise ResultError(f"{path / RECORDS}: unreadable: {' '.join(str(error).split())[:200]}")
    if not missing:
        return load_parts(path, [r["part"] for r in runs], dtypes=dtypes)
    if joined is not None and "run" in joined and wanted <= set(joined["run"].unique()):
        return restore_dtypes(joined[joined["run"].isin(wanted)].reset_index(drop=True), dtypes)
    why = f"{RECORDS} is unreadable ({' '.join(str(error).split())[:120]})" if error else \
        f"{RECORDS} does not hold them"
    raise ResultError(f"{path}: {META} lists {len(wanted)} runs, but runs {_few(missing)} are "
                      f"not in {PARTS}/ and {why}")


def _few(values, shown: int = 5) -> str:
    text = ", ".join(map(str, values[:shown]))
    return text + (f" and {len(values) - shown} more" if len(values) > shown else "")


def load_meta(path: str | os.PathLike) -> dict:
    """meta.json of a saved result; ``FileNotFoundError`` naming it when there is none,
    ``ResultError`` when a newer comlab wrote it."""
    path = Path(path)
    if not (path / META).is_file():
        raise FileNotFoundError(f"{path}: not a comlab result (no {META})")
    return check_format(json.loads((path / META).read_text()), path)


def saved_dir(path) -> Path:
    """A saved result's directory, checked before anything reads it: ``ResultError`` saying
    why not (no such directory, no meta.json, an unreadable one, another tool's, a newer
    format) in one line."""
    p = Path(path)
    if not (p / META).is_file():
        what = "no such directory" if not p.is_dir() else f"no {META} in it"
        raise ResultError(f"{p}: not a saved comlab result ({what})")
    try:
        meta = json.loads((p / META).read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        why = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ResultError(f"{p / META}: unreadable: {why}") from None
    check_format(meta, p)
    return p


def check_format(meta, path) -> dict:
    """A meta.json this comlab can read: a JSON object of a format_version it knows."""
    if not isinstance(meta, dict):
        raise ResultError(f"{Path(path) / META}: not a JSON object")
    if not isinstance(meta.get("runs"), list) or not isinstance(meta.get("params"), dict):
        raise ResultError(f"{Path(path)}: not a saved comlab result (its {META} has no 'runs' "
                          f"list and 'params' object: another tool's?)")
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise ResultError(f"{Path(path) / META}: format_version {version!r} is newer than this "
                          f"comlab reads ({FORMAT_VERSION}): load it with the comlab that "
                          f"wrote it, or upgrade")
    return meta
