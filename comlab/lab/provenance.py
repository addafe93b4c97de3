"""Where a result came from: the environment a figure depends on, and the data's content hash.

A saved result is resumed only when everything in ``RESUME_KEYS`` (and the parameters, which
include ``data_sha256``) is the same as now: ``differences`` says what is not.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the comlab package: the code that measures

# What must match for saved runs to be resumed (besides the parameters).
RESUME_KEYS = ("comlab", "git_commit", "git_dirty", "git_diff_sha256", "hostname", "platform",
               "cpu_count", "python", "implementation", "pyzmq", "libzmq", "msgpack", "numpy",
               "pandas", "pyarrow")


def environment() -> dict:
    """Versions, code state, host and clock facts that a figure depends on."""
    import msgpack
    import numpy
    import pandas
    import pyarrow
    import zmq

    from .. import __version__
    clock = time.get_clock_info("monotonic")
    try:
        slack = int(Path("/proc/self/timerslack_ns").read_text())
    except OSError:
        slack = None
    return {
        "comlab": __version__, **git_state(),
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)), "numpy": numpy.__version__,
        "pandas": pandas.__version__, "pyarrow": pyarrow.__version__,
        **{name: _version(name) for name in ("matplotlib", "tqdm", "scipy", "simpy")},
        "platform": platform.platform(), "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "clock": {"name": "monotonic", "implementation": clock.implementation,
                  "resolution": clock.resolution, "monotonic": clock.monotonic},
        "timer_slack_ns": slack,
    }


def _version(distribution: str) -> str | None:
    """An installed distribution's version without importing it (matplotlib costs 0.3 s)."""
    from importlib import metadata
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=PACKAGE_DIR)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state() -> dict:
    """The commit of the comlab checkout, whether the package's files differ from it
    (``git_dirty``), and a hash of that difference (two different edits do not match)."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {"git_commit": None, "git_dirty": None, "git_diff_sha256": None}
    status = _git("status", "--porcelain", "--", ".") or ""
    diff = _git("diff", "HEAD", "--", ".") or ""
    dirty = bool(status.strip())
    return {"git_commit": commit.strip(), "git_dirty": dirty,
            "git_diff_sha256": _sha256(status + diff) if dirty else None}


def data_hash(keys, smap) -> str:
    """Content hash of the data a sweep uses: the tasks in order and the (scaled) server map."""
    lines = sorted(f"{ip}:{cmd}:{resp}:{wait!r}" for ip, cmds in smap.items()
                   for cmd, (resp, wait) in cmds.items())
    return _sha256("\n".join(keys) + "\n\0\n" + "\n".join(lines))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def differences(old_meta: dict, params: dict, env: dict) -> list[str]:
    """What differs between a saved result and a sweep about to run, one line each."""
    out = []
    old_params = old_meta.get("params", {})
    for key in sorted(set(old_params) | set(params)):
        if _norm(old_params.get(key)) != _norm(params.get(key)):
            what = "data (commands or server map contents)" if key == "data_sha256" else key
            out.append(f"{what}: {_short(old_params.get(key))} -> {_short(params.get(key))}")
    old_env = old_meta.get("environment", {})
    for key in RESUME_KEYS:
        if old_env.get(key) != env.get(key):
            out.append(f"{key}: {_short(old_env.get(key))} -> {_short(env.get(key))}")
    return out


def _norm(value):
    """Parameters as they read back from JSON (tuples are lists)."""
    return json.loads(json.dumps(value, default=str))


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
