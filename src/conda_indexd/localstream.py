"""LocalStore.writer: a published file written in pieces (the ChannelStore `writer`).

The bytes go to the same temporary name as LocalStore.write (`.<name>.<8 hex>.tmp`, so a
killed writer's leftovers are cleaned the same way), while they are compared with the file
they would replace. On commit: equal bytes drop the temporary (nothing fsynced, nothing
renamed, False); otherwise fsync, an mtime past the old file's whole seconds (nginx ETags),
rename, folder fsync (True). A reader never sees a partial file.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


class LocalWriter:
    def __init__(self, path: Path, temp: Path, fd: int):
        self.path = path
        self.temp = temp
        self.fd = fd
        self.old: BinaryIO | None = None
        self.old_mtime: float | None = None
        self.same = True
        self.size = 0
        try:
            self.old = open(path, "rb")  # noqa: SIM115 - closed in close()
            st = os.fstat(self.old.fileno())
            self.old_mtime, self.old_size = st.st_mtime, st.st_size
        except (FileNotFoundError, IsADirectoryError):
            self.same = False

    def write(self, data: bytes) -> None:
        if self.same and self.old is not None:
            self.same = self.old.read(len(data)) == data
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.size += len(data)

    def commit(self, *, sync: bool = True) -> bool:
        from .localstore import fsync_dir, next_mtime

        if self.same and self.old is not None and self.old_size == self.size:
            self.close()
            return False
        os.fsync(self.fd)
        self._close_files()
        mtime = next_mtime(self.old_mtime, time.time())
        os.utime(self.temp, (mtime, mtime))
        os.replace(self.temp, self.path)
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
def local_writer(root: Path, key: str) -> Iterator[LocalWriter]:
    from .localstore import temp_name

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
    writer = LocalWriter(path, temp, fd)
    try:
        yield writer
    finally:
        writer.close()
