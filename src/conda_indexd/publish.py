"""Atomic, change-only file replacement (channel-format.md §2.3, §8.2; ops-notes nginx).

`publish(path, data)`:
- returns False and touches nothing when `path` already holds exactly `data`;
- otherwise writes `.<name>.<random>.tmp` in the same folder, fsyncs it, gives it an
  mtime at least one whole second newer than the file it replaces (nginx's ETag is
  mtime-seconds + size), `os.replace`s it over `path`, and fsyncs the folder.
A reader never sees a partial file: the name always points at a complete old or new one.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import time
from pathlib import Path

CHUNK = 1 << 20


def same_content(path: Path, data: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size != len(data):
                return False
            view = memoryview(data)
            offset = 0
            while chunk := f.read(CHUNK):
                if view[offset : offset + len(chunk)] != chunk:
                    return False
                offset += len(chunk)
            return offset == len(data)
    except FileNotFoundError:
        return False


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def next_mtime(old_mtime: float | None, now: float) -> float:
    """An mtime whose whole seconds are past the old file's."""
    if old_mtime is None:
        return now
    return max(now, math.floor(old_mtime) + 1.0)


def publish(path: Path, data: bytes, *, sync_dir: bool = True) -> bool:
    """Replace `path` with `data` atomically when the content differs. True if written.

    sync_dir=False leaves the folder's fsync to the caller (one for a batch of files).
    """
    if same_content(path, data):
        return False
    try:
        old_mtime: float | None = path.stat().st_mtime
    except FileNotFoundError:
        old_mtime = None
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        mtime = next_mtime(old_mtime, time.time())
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)
    return True


def remove(path: Path) -> bool:
    """Delete an output we no longer write (e.g. `.bz2` after --no-bz2). True if removed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_TEMP = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


def clean_stale_temps(folder: Path) -> int:
    """Remove temporary files a killed publisher left behind (`.<name>.<8 hex>.tmp`).

    Call only while holding the channel lock and with no publish running.
    """
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if _TEMP.match(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed
