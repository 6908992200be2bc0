"""The row types the layers pass between them: a package file as a store lists it, a
listing of them (column-wise), and the rows a cache keeps. Plain named tuples and one
container, no I/O; the store seam (stores/base.py) and the cache seam (caches/base.py)
re-export them."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple, overload


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


class Listing(Sequence[FileState]):
    """A subdir's package files as one listing found them, sorted by path, and in
    `sidecars` the attestation sidecars (names.is_sidecar_name: `<package>.sigs` and
    `<package>.sigs.<sha256>`, plain files only) that the same listing saw, so a full run
    looks at sidecars without listing the subdir a second time.

    A listing of the whole subdir (`ChannelStore.list_subdir`) also carries what else it
    saw, so a full run's quiet check and shard upkeep list nothing again: `files`, every
    other plain file directly in the subdir (the outputs), sorted by path, and `shards`,
    {name: size} of the plain files in its shard folder. Both are None in a listing of
    packages only (`list_packages`): not looked at.

    Kept column-wise: a path string per file and its numbers in arrays, so a
    million-file listing costs about 100 MB less than a million FileState tuples, and
    `digest` hashes whole columns. A FileState is made only when one is asked for. A
    folder's identities (`inode:ctime_ns`) are kept as two integer arrays
    (`extend_stats`); any other store's (an ETag) as strings (`append`)."""

    __slots__ = ("paths", "mtimes", "sizes", "changed", "_ids", "_inodes", "_ctimes_ns", "sidecars", "files", "shards")

    def __init__(self, packages: Iterable[FileState] = (), sidecars: Iterable[FileState] = (),
                 files: Iterable[FileState] | None = None, shards: dict[str, int] | None = None) -> None:  # fmt: skip
        self.paths: list[str] = []
        self.mtimes = array("d")
        self.sizes = array("q")
        self.changed = array("d")
        self._ids: list[str] = []
        self._inodes = array("Q")
        self._ctimes_ns = array("q")
        for f in packages:
            self.append(f)
        self.sidecars = sorted(sidecars)
        self.files: list[FileState] | None = sorted(files) if files is not None else None
        self.shards: dict[str, int] | None = shards

    def append(self, f: FileState) -> None:
        if self._inodes:
            raise TypeError("this listing keeps inode identities: use extend_stats")
        self.paths.append(f.path)
        self.mtimes.append(f.mtime)
        self.sizes.append(f.size)
        self.changed.append(f.changed_at)
        self._ids.append(f.identity)

    def extend_stats(self, paths: list[str], mtimes: array[float], sizes: array[int], changed: array[float], inodes: array[int], ctimes_ns: array[int]) -> None:
        """Files of a folder, column by column: the identity of each is `inode:ctime_ns` (see FileState)."""
        if self._ids:
            raise TypeError("this listing keeps string identities: use append")
        if not len(paths) == len(mtimes) == len(sizes) == len(changed) == len(inodes) == len(ctimes_ns):
            raise ValueError("columns of different lengths")
        self.paths += paths
        self.mtimes += mtimes
        self.sizes += sizes
        self.changed += changed
        self._inodes += inodes
        self._ctimes_ns += ctimes_ns

    def identity(self, i: int) -> str:
        return self._ids[i] if self._ids else f"{self._inodes[i]}:{self._ctimes_ns[i]}"

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, i: int) -> FileState: ...
    @overload
    def __getitem__(self, i: slice) -> list[FileState]: ...
    def __getitem__(self, i: int | slice) -> FileState | list[FileState]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self.paths)
        return FileState(self.paths[i], self.mtimes[i], self.sizes[i], self.identity(i), self.changed[i])

    def __iter__(self) -> Iterator[FileState]:
        for i in range(len(self.paths)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Listing):
            return list(self) == list(other) and (self.sidecars, self.files, self.shards) == (other.sidecars, other.files, other.shards)
        return isinstance(other, list) and list(self) == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Listing({list(self)!r}, sidecars={self.sidecars!r}, files={self.files!r}, shards={self.shards!r})"

    def rows(self) -> Iterator[tuple[str, float, int, str]]:
        """(path, mtime, size, identity) of each file in path order: FileState's first four,
        as the cache's fs rows keep them."""
        paths, mtimes, sizes, identity = self.paths, self.mtimes, self.sizes, self.identity
        for i in range(len(paths)):
            yield paths[i], mtimes[i], sizes[i], identity(i)

    def sort(self) -> None:
        """Into path order (a store that lists in another order calls it once)."""
        paths = self.paths
        if all(paths[i] < paths[i + 1] for i in range(len(paths) - 1)):
            return
        order = sorted(range(len(paths)), key=paths.__getitem__)
        self.paths = [paths[i] for i in order]
        for name in ("mtimes", "sizes", "changed", "_inodes", "_ctimes_ns"):
            column = getattr(self, name)
            if column:
                setattr(self, name, array(column.typecode, (column[i] for i in order)))
        if self._ids:
            self._ids = [self._ids[i] for i in order]

    def digest(self) -> str:
        """sha256 of the listing column by column (paths NUL-joined, the numbers packed,
        the identities joined or packed): equal listings give equal digests, without a
        string or tuple per file."""
        h = hashlib.sha256(b"%d\n" % len(self.paths))
        if self.paths:
            joined = "\0".join(self.paths).encode("utf-8", "surrogateescape")
            h.update(b"%d\n" % len(joined))
            h.update(joined)
            del joined
            h.update(self.mtimes.tobytes())
            h.update(self.sizes.tobytes())
            if self._ids:
                h.update(b"ids\n" + "\0".join(self._ids).encode("utf-8", "surrogateescape"))
            else:
                h.update(b"inodes\n" + self._inodes.tobytes() + self._ctimes_ns.tobytes())
        return h.hexdigest()


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
