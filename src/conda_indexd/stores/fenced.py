"""Fencing: a deposed leader must not publish or write anything after a new one took over.

A `Fence` is asked before every publish step (`check`, raising `Fenced`) and inside every
cache write transaction (`check_in_transaction`, which takes the leadership row FOR KEY SHARE
so a takeover waits for that transaction or the transaction sees the new token).
`FencedStore` wraps the output store so that every write and removal of a published file
is checked first and recorded (ha/leader.py's publish log); the indexer itself does not know.
A single daemon or `index` uses `NoFence`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import IO, Any, Protocol

from conda_indexd.errors import Fenced as Fenced  # re-exported: the fence raises it
from conda_indexd.stores.base import ChannelStore, FileState, Listing, StreamWriter


class Fence(Protocol):
    def check(self, step: str, subdir: str | None = None) -> None:
        """Raise Fenced unless this process holds the leadership now; record the step."""
        ...

    def check_in_transaction(self, conn: Any, step: str) -> None:
        """Same, inside a database transaction on `conn` (the lease row locked FOR KEY SHARE)."""
        ...

    def assert_proven(self, step: str) -> None:
        """Raise Fenced unless the lease is still proven now, without a round trip: asked
        right before each rename (or removal) of an output and before each cache COMMIT."""
        ...


class NoFence:
    def check(self, step: str, subdir: str | None = None) -> None:
        pass

    def check_in_transaction(self, conn: Any, step: str) -> None:
        pass

    def assert_proven(self, step: str) -> None:
        pass


class FencedStore:
    """A ChannelStore whose writes and removals are checked by the fence first."""

    def __init__(self, inner: ChannelStore, fence: Fence):
        self.inner = inner
        self.fence = fence
        self.location = inner.location
        self.read_ahead = inner.read_ahead
        # the last moment before a rename or a PUT is the inner store's: it asks the fence
        # there (LocalStore.guard, S3Store.guard); a store without one is fenced by its
        # checks alone
        if hasattr(inner, "guard"):
            inner.guard = fence.assert_proven

    def _check(self, key: str) -> None:
        subdir = key.rpartition("/")[0]
        self.fence.check(f"write {key}", subdir.split("/")[0] or None)

    # writes: checked
    def write(self, key: str, data: bytes, *, sync: bool = True) -> bool:
        self._check(key)
        return self.inner.write(key, data, sync=sync)

    def writer(self, key: str, *, size: int | None = None) -> AbstractContextManager[StreamWriter]:
        return _fenced_writer(self, key, size)

    def copy(self, src: str, dst: str, *, sync: bool = True) -> bool:
        self._check(dst)
        return self.inner.copy(src, dst, sync=sync)

    def remove(self, key: str) -> bool:
        self._check(key)
        return self.inner.remove(key)

    def prepare(self, subdir: str, *, recover: bool) -> None:
        self.fence.check(f"prepare {subdir}", subdir)
        self.inner.prepare(subdir, recover=recover)

    # reads: passed through
    def check(self) -> None:
        self.inner.check()

    def subdirs(self) -> list[str]:
        return self.inner.subdirs()

    def list_packages(self, subdir: str) -> Listing:
        return self.inner.list_packages(subdir)

    def list_subdir(self, subdir: str) -> Listing:
        return self.inner.list_subdir(subdir)

    def stat_packages(self, subdir: str, names: Iterable[str]) -> tuple[list[FileState], list[str]]:
        return self.inner.stat_packages(subdir, names)

    def stat_files(self, folder: str, names: Iterable[str] | None = None) -> tuple[list[FileState], list[str]]:
        return self.inner.stat_files(folder, names)

    def open_package(self, subdir: str, name: str) -> AbstractContextManager[IO[bytes]]:
        return self.inner.open_package(subdir, name)

    def read(self, key: str) -> bytes | None:
        return self.inner.read(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def sync(self, folder: str) -> None:
        self.inner.sync(folder)

    def list_files(self, folder: str) -> dict[str, int]:
        return self.inner.list_files(folder)


class _FencedWriter:
    """A streamed write checked when it starts and again right before its commit."""

    def __init__(self, store: FencedStore, key: str, inner: StreamWriter):
        self.store, self.key, self.inner = store, key, inner

    def write(self, data: bytes) -> None:
        self.inner.write(data)

    def commit(self, *, sync: bool = True) -> bool:
        self.store._check(self.key)
        return self.inner.commit(sync=sync)


@contextmanager
def _fenced_writer(store: FencedStore, key: str, size: int | None) -> Iterator[StreamWriter]:
    store._check(key)
    with store.inner.writer(key, size=size) as inner:
        yield _FencedWriter(store, key, inner)
