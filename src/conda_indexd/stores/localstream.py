"""LocalStore.writer and LocalStore.copy: a published file written in pieces (the
ChannelStore `writer`), or given a second name (`copy`: see link_atomic).

The bytes go to the same temporary name as LocalStore.write (`.<name>.<8 hex>.tmp`, so a
killed writer's leftovers are cleaned the same way), while they are compared with the file
they would replace: the comparison stops at the first difference, and the old file is not
read at all when the caller's `size` hint already differs from its size. On commit: equal
bytes drop the temporary (nothing fsynced, nothing renamed, False); otherwise fsync, an
mtime past the old file's whole seconds (nginx ETags), rename, folder fsync (True). A
reader never sees a partial file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from conda_indexd.util.fsio import fsync_dir, next_mtime, temp_name

CHUNK = 1 << 20


class LocalWriter:
    def __init__(self, path: Path, temp: Path, fd: int, size: int | None = None, before_rename: Callable[[], None] | None = None):
        self.before_rename = before_rename  # may raise: the old file stays
        self.path = path
        self.temp = temp
        self.fd = fd
        self.old: BinaryIO | None = None
        self.old_mtime: float | None = None
        self.same = True
        self.size = 0
        self.old_size = -1
        self.unread = False  # the old file was not compared: the size hint said it differs
        try:
            self.old = open(path, "rb")  # noqa: SIM115 - closed in close()
            st = os.fstat(self.old.fileno())
            self.old_mtime, self.old_size = st.st_mtime, st.st_size
        except (FileNotFoundError, IsADirectoryError):
            self.same = False
        if size is not None and self.old is not None and size != self.old_size:
            self._differs()
            self.unread = True

    def _differs(self) -> None:
        """The new bytes differ from the old file's: stop reading it."""
        self.same = False
        if self.old is not None:
            self.old.close()
            self.old = None

    def write(self, data: bytes) -> None:
        if self.same and self.old is not None and self.old.read(len(data)) != data:
            self._differs()
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.size += len(data)

    def commit(self, *, sync: bool = True) -> bool:

        same = self.same and self.old is not None and self.old_size == self.size
        if self.unread and self.size == self.old_size:  # a wrong hint: compare now
            same = same_files(self.temp, self.path)
        if same:
            self.close()
            return False
        os.fsync(self.fd)
        self._close_files()
        mtime = next_mtime(self.old_mtime, time.time())
        os.utime(self.temp, (mtime, mtime))
        if self.before_rename is not None:
            self.before_rename()
        replace_freeing_later(self.temp, self.path, self.old_size)
        if sync:
            fsync_dir(self.path.parent)
        return True

    def close(self) -> None:
        """Release everything; an uncommitted temporary is removed."""
        self._close_files()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp)

    def _close_files(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.old is not None:
            self.old.close()
            self.old = None


@contextlib.contextmanager
def local_writer(root: Path, key: str, size: int | None = None, before_rename: Callable[[], None] | None = None) -> Iterator[LocalWriter]:

    path = root / key
    temp = temp_name(path)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileNotFoundError:
        # as LocalStore.write: the file's own folder is made on first use, never the
        # folders above it (a vanished channel must not be recreated)
        if path.parent == root or not path.parent.parent.is_dir():
            raise
        path.parent.mkdir(exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    writer = LocalWriter(path, temp, fd, size, before_rename)
    try:
        yield writer
    finally:
        writer.close()


def same_files(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (read until the first difference)."""
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                chunk = fa.read(CHUNK)
                if chunk != fb.read(CHUNK):
                    return False
                if not chunk:
                    return True
    except (FileNotFoundError, IsADirectoryError):
        return False


BIG = 32 << 20  # an old file this big is freed after the rename, off the publish path
_reaper = ThreadPoolExecutor(1, thread_name_prefix="conda-indexd-unlink")


def replace_freeing_later(tmp: Path, path: Path, old_size: int | None = None) -> None:
    """os.replace(tmp, path), except that a big old file's blocks are freed in the
    background: freeing 460 MB takes the file system about half a second, which readers
    need not wait for. The old inode keeps a temporary name until then (a crash leaves it
    to the stale-temporary clean-up)."""

    if old_size is None:
        with contextlib.suppress(OSError):
            old_size = os.stat(path, follow_symlinks=False).st_size
    trash = None
    if old_size is not None and old_size >= BIG:
        trash = temp_name(path)
        try:
            os.link(path, trash)
        except OSError:
            trash = None
    os.replace(tmp, path)
    if trash is not None:
        _reaper.submit(_unlink, trash)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)


def link_atomic(source: Path, path: Path, old_mtime: float | None, before_rename: Callable[[], None] | None = None) -> bool:
    """`path` becomes a second name of `source`'s inode: a hard link under a temporary name
    renamed over `path` (where the file system refuses links, a copy, fsynced). Its mtime
    must pass the old file's whole seconds (nginx ETags): then the shared inode's mtime
    moves forward, and True says `source`'s moved too. The folder's fsync is the caller's."""

    mtime = os.stat(source).st_mtime
    bumped = next_mtime(old_mtime, mtime)
    tmp = temp_name(path)
    shared = True
    try:
        try:
            os.link(source, tmp)
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            shared = False
            _copy_file(source, tmp)
        if bumped != mtime:
            os.utime(tmp, (bumped, bumped))
        if before_rename is not None:
            before_rename()
        replace_freeing_later(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return shared and bumped != mtime


def _copy_file(source: Path, tmp: Path) -> None:
    shutil.copy2(source, tmp)  # sendfile where the kernel has it; the mode and mtime too
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
