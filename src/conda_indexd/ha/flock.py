"""A channel folder's writer lock: an exclusive, non-blocking flock on
`<channel>/.conda-indexd.lock`, holding the writer's pid (the `WriterLock` of ha/lock.py)."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from conda_indexd.ha.lock import ChannelBusy

LOCK_NAME = ".conda-indexd.lock"


class ChannelLock:
    def __init__(self, channel: Path):
        self.path = channel / LOCK_NAME
        self.fd: int | None = None
        self.lost = threading.Event()  # a flock is never taken away

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
