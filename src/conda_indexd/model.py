"""The row types the layers pass between them: a package file as a store lists it, and the
rows a cache keeps. Plain named tuples, no behaviour; the store seam (stores/base.py) and
the cache seam (caches/base.py) re-export them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class FileState(NamedTuple):
    """One package file as the store lists it. The cache's `fs` rows keep path, mtime
    (LastModified remotely), size and `identity`, the store's change identity: any
    rewrite of the file gives it a new one, whatever its size and mtime (inode+ctime
    locally, the ETag remotely). `changed_at` is when the store saw the file change
    last, on its own clock (ctime locally, LastModified remotely), unlike an mtime a
    writer may set; it tells an upload in progress from a settled file."""

    path: str
    mtime: float
    size: int
    identity: str = ""
    changed_at: float = 0.0


class Listing(list[FileState]):
    """A subdir's package files as one listing found them (sorted by name), and in
    `sidecars` the attestation sidecars (names.is_sidecar_name: `<package>.sigs` and
    `<package>.sigs.<sha256>`, plain files only) that the same listing saw, so a full run
    looks at sidecars without listing the subdir a second time."""

    def __init__(self, packages: Iterable[FileState] = (), sidecars: Iterable[FileState] = ()) -> None:
        super().__init__(packages)
        self.sidecars = sorted(sidecars)


class Failure(NamedTuple):
    path: str
    reason: str
    message: str


class PublishedKey(NamedTuple):
    path: str
    sha256: str | None


class RecordRow(NamedTuple):
    path: str
    index_json: str  # the cached index.json text (filtered, + md5, sha256, size)
    name: str
    run_exports: str | None
    indexed_timestamp: int | None = None  # CEP-47, from our own table (None: none yet)


class ShardKey(NamedTuple):
    """What a name's shard depends on, one row per published package."""

    name: str
    path: str
    sha256: str


class TimestampGap(NamedTuple):
    """A published package without an indexed_timestamp yet (CEP-47)."""

    path: str
    sha256: str
    build_timestamp: object  # index.json's `timestamp` as stored (seconds or ms, or None)
    mtime: float  # the fs row's (LastModified for a bucket)
