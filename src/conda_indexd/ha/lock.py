"""One writer per channel: the `WriterLock` seam.

`WriterLock` is what the CLI and the daemon hold while they index: a flock in a channel
folder (flock.py), a lease object in a bucket (ha/s3lease.py), none for a pair sharing one
folder, whose database lease orders the writers (`NoLock`); backends.open_lock picks one.
`lost` is set when the lock was taken away while held.
"""

from __future__ import annotations

import threading
from typing import Protocol

from conda_indexd.errors import IndexdError


class ChannelBusy(IndexdError):
    pass


class WriterLock(Protocol):
    lost: threading.Event  # set when another writer took the channel over

    def acquire(self) -> WriterLock:
        """Raises ChannelBusy (one line) when another live writer holds it."""
        ...

    def release(self) -> None: ...
    def __enter__(self) -> WriterLock: ...
    def __exit__(self, *exc: object) -> None: ...


class NoLock:
    """For a pair sharing one channel folder: the database lease orders the writers."""

    def __init__(self) -> None:
        self.lost = threading.Event()

    def acquire(self) -> NoLock:
        return self

    def release(self) -> None:
        pass

    def __enter__(self) -> NoLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
