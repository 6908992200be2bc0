"""One writer per channel: an exclusive, non-blocking flock on `<channel>/.conda-indexd.lock`."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = ".conda-indexd.lock"


class ChannelBusy(Exception):
    pass


class ChannelLock:
    def __init__(self, channel: Path):
        self.path = channel / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> ChannelLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ChannelBusy(f"{self.path.parent} is being indexed by pid {holder}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> ChannelLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class NoLock(ChannelLock):
    """For a pair sharing one channel folder: the database lease orders the writers."""

    def acquire(self) -> ChannelLock:
        return self

    def release(self) -> None:
        pass
