"""Files written whole or not at all: a temporary file in the same folder, fsynced, then
``os.replace``d over the target (and the folder fsynced), so a full disk, a Ctrl-C or a SIGKILL
mid-write leaves the earlier file as it was, never a truncated one.

A full disk (ENOSPC, EDQUOT) is ``DiskFull``: one line naming the folder, the file and the bytes
it needed."""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(ValueError):
    """A result could not be written for want of space; the earlier files are unchanged."""


def write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module's docstring)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, OSError) and exc.errno in FULL:
            raise DiskFull(_full_message(path, len(data))) from None
        raise
    _sync_dir(path.parent)
    return path


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def parquet_bytes(df) -> bytes:
    """A DataFrame as parquet, in memory first: its size is known before the disk is touched."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def remove_leftovers(*folders) -> None:
    """Temporary files of a writer that was killed mid-write (call only under the folder's
    lock: a live writer's file looks the same)."""
    for folder in folders:
        for tmp in Path(folder).glob(".*.tmp"):
            _remove(tmp)


def _full_message(path: Path, needed: int) -> str:
    try:
        free = f"{shutil.disk_usage(path.parent).free:,} bytes free"
    except OSError:
        free = "free space unknown"
    return (f"{path.parent}: the disk is full: {path.name} needs {needed:,} bytes, {free}; "
            f"the files already there are unchanged")


def _remove(tmp: Path) -> None:
    try:
        tmp.unlink()
    except OSError:
        pass


def _sync_dir(folder: Path) -> None:
    """The rename itself survives a power cut only once the folder is synced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
