"""The POSIX write library: a file replaced whole and durably, never seen half-written.

A new file's bytes go to a temporary name in the same folder (`names.temp_file_name`:
`.<name>.<8 hex>.tmp`), are fsynced, get an mtime at least one whole second newer than
the file they replace (nginx's ETag is mtime-seconds + size), and are renamed over the old
name; the folder's fsync is the caller's (`fsync_dir`). `clean_stale_temps` removes the
temporaries a killed writer left. `open_regular` opens a package file without following a
symlink or blocking on a FIFO. Used by the local store, the sqlite cache, the pkgs-dir
placement, and the command line's folder checks.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from conda_indexd.errors import Unreadable
from conda_indexd.names import TEMP_FILE, temp_file_name

CHUNK = 1 << 20


def writable_folder(path: Path) -> str | None:
    """Create `path` (with its parents) if needed; why it cannot be written, or None."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create {path}: {exc.strerror or exc}"
    return None if os.access(path, os.W_OK) else f"not writable: {path}"


def open_regular(path: Path) -> IO[bytes]:
    """Open a package file for reading, refusing anything but a regular file.

    O_NOFOLLOW: a symlink named `x.conda` is never followed (it may point outside the
    channel). O_NONBLOCK: opening a FIFO named `x.conda` does not wait for a writer.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Unreadable("not-a-regular-file", "a symlink; symlinks are not followed") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise Unreadable("permission-denied", f"no permission to read the file ({exc.strerror})") from None
        if exc.errno == errno.ENXIO:  # a socket
            raise Unreadable("not-a-regular-file", "not a regular file (a socket)") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file"
        raise Unreadable("not-a-regular-file", f"not a regular file ({kind})")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


# --- atomic replacement ----------------------------------------------------------------------


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
    except (FileNotFoundError, IsADirectoryError):
        return False


def temp_name(path: Path) -> Path:
    return path.with_name(temp_file_name(path.name))


def next_mtime(old_mtime: float | None, now: float) -> float:
    """An mtime whose whole seconds are past the old file's."""
    if old_mtime is None:
        return now
    return max(now, math.floor(old_mtime) + 1.0)


def write_atomic(path: Path, data: bytes, before_rename: Callable[[], None] | None = None) -> None:
    """temp name, fsync, mtime bump, rename (the folder's fsync is the caller's).
    `before_rename` may raise to leave the old file in place."""
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
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_stale_temps(folder: Path) -> int:
    """Remove temporary files a killed writer left behind (`.<name>.<8 hex>.tmp`).
    Names only are listed (a 100k-package subdir is looked at on every full run); only
    the few candidates are checked further."""
    removed = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for name in os.listdir(folder):
            if name[0] == "." and name.endswith(".tmp") and TEMP_FILE.match(name):
                path = folder / name
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISREG(os.lstat(path).st_mode):
                        os.unlink(path)
                        removed += 1
    return removed
