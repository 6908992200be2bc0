"""The cache seam: what was extracted from each package, and the fs stage, per subdir.

conda-index's `stat` table stages (docs/spec §3.4):
- `fs`: what the store lists (path, mtime, size), from a listing or per touched path;
- `indexed`: written with the metadata tables after a successful extraction;
- `failed` (ours): an archive that could not be indexed, with the mtime and size it had
  then, so it is not read again until it changes.
A package is published when its `indexed` row matches its current `fs` row.

`Caches` opens one `SubdirCache` per subdir. `SqliteCaches` (caches/sqlite/cache.py) is
conda-index 0.13's `<subdir>/.cache/cache.db`. Implementations raise `CacheCorrupt` (after
moving the damaged cache aside themselves) when they find damage mid-run, and
`MetadataRejected` for a package whose metadata the cache cannot hold. The shared
contract is tests/test_contract_cache.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from conda_indexd.errors import IndexdError
from conda_indexd.model import Failure, FileState, PublishedKey, RecordRow, ShardKey, TimestampGap

if TYPE_CHECKING:
    from conda_indexd.archive.reader import PackageMetadata

__all__ = ["FileState", "Failure", "PublishedKey", "RecordReader", "RecordRow", "ShardKey", "SubdirCache", "Caches", "TimestampGap"]


class CacheError(IndexdError):
    """The cache cannot be used at all (too new, unwritable, unreachable): one line."""


class CacheCorrupt(CacheError):
    """Damage found mid-run; the damaged cache was already moved aside (`moved_to`), so
    the next open starts empty and is rebuilt from the packages."""

    def __init__(self, message: str, moved_to: str):
        super().__init__(message)
        self.moved_to = moved_to


class MetadataRejected(IndexdError):
    """The cache refuses one package's metadata (e.g. JSON its engine cannot store)."""


class Pieces(Protocol):
    """Record pieces kept between processes (caches/sqlite/pieces.PieceStore), each valid only
    for the exact index_json text it was made from."""

    def lookup(self, rows: Iterable[tuple[str, str, str]]) -> Iterator[tuple[str, str, str, bytes | None]]:
        """(path, name, index_json text) -> the same with the stored piece or None."""
        ...

    def save(self, pieces: Iterable[tuple[str, str, bytes]], *, keep: Iterable[str] | None = None) -> None:
        """(path, index_json text, piece); `keep`: all published paths (drop the rest)."""
        ...


class RecordReader(Protocol):
    """The published records read in a forked worker process (SubdirCache.fork_reader),
    through connections of its own: never the parent's, and it writes nothing."""

    def records_for(self, paths: Iterable[str]) -> Iterator[RecordRow]: ...

    def kept_pieces(self) -> Pieces | None:
        """The kept pieces, for `lookup` only (None: none)."""
        ...

    def close(self) -> None: ...


class SubdirCache(Protocol):
    """One subdir's cache, used from one thread at a time (the indexer's writer)."""

    def close(self) -> None: ...
    def __enter__(self) -> SubdirCache: ...
    def __exit__(self, *exc: object) -> None: ...

    def transaction(self) -> AbstractContextManager[None]:
        """Group writes into one commit; nested uses join the outer one."""
        ...

    # fs stage
    def replace_fs_state(self, files: Iterable[FileState]) -> set[str]:
        """A full listing: the fs stage becomes exactly these files. Returns the paths
        whose rows changed (added, removed or different)."""
        ...

    def update_fs_state(self, present: Iterable[FileState], gone: Iterable[str]) -> None:
        """Touched paths only: upsert the present, drop the gone."""
        ...

    def fs_state(self) -> dict[str, FileState]: ...

    def changed_packages(self, paths: Iterable[str] | None = None) -> list[FileState]:
        """fs rows with neither a matching `indexed` nor a matching `failed` row, by path."""
        ...

    # after extraction
    def store(self, meta: PackageMetadata, state: FileState) -> None:
        """All metadata and the `indexed` row of one package. May raise MetadataRejected."""
        ...

    def store_failure(self, state: FileState, reason: str, message: str) -> None:
        """Remember a failed archive and drop any stale metadata it had."""
        ...

    # reads for the outputs
    def published_keys(self, paths: Iterable[str] | None = None) -> Iterator[PublishedKey]: ...
    def published_digests(self) -> dict[str, str | None]: ...
    def records_for(self, paths: Iterable[str]) -> Iterator[RecordRow]: ...
    def shard_keys(self) -> Iterator[ShardKey]: ...
    def shard_rows(self) -> Iterator[tuple[str, str, str, str | None]]:
        """(name, filename, index_json text, run_exports text) of every published package."""
        ...

    def metadata_texts(self, path: str) -> tuple[str | None, ...]:
        """(index_json, about, post_install, recipe, run_exports) texts of one package."""
        ...

    def run_exports(self) -> Iterator[tuple[str, str | None]]:
        """(filename, run_exports text or None) for every fs row, by filename."""
        ...

    def failures(self) -> list[Failure]:
        """Archives currently skipped (a `failed` row matching the fs row), by path."""
        ...

    def pieces(self) -> Pieces | None:
        """Where serialised records are kept between processes (None: nowhere)."""
        ...

    def fork_reader(self) -> Callable[[], RecordReader] | None:
        """What a forked worker process calls once to read records on its own (None: this
        cache cannot be read from a forked child; the records are read here, serially)."""
        ...

    def memo_folder(self) -> Path | None:
        """A local folder for the record memo's files (None: a temporary file, not kept)."""
        ...

    def generation(self) -> str | None:
        """Changes whenever another process may have changed the records (a saved memo
        is used only while it is equal; None: never)."""
        ...

    # CEP-47 indexed_timestamp: ours, per (filename, archive sha256), set once, never changed
    def timestamps_seeded(self) -> bool:
        """Whether the packages indexed before the table existed were given theirs."""
        ...

    def missing_timestamps(self, paths: Iterable[str] | None = None) -> Iterable[TimestampGap]:
        """Published packages (of `paths`; None: all) without an indexed_timestamp (may be
        streamed: the caller gives values while reading, add_timestamps between rows)."""
        ...

    def add_timestamps(self, rows: Iterable[tuple[str, str, int, int | None]], *, seeded_at: int | None = None) -> None:
        """(path, sha256, indexed_timestamp ms, build timestamp ms or None); a row
        already there is kept (the first value wins). `seeded_at`: mark the table seeded."""
        ...

    def flagged_timestamps(self, skew_ms: int) -> list[tuple[str, str, int, int]]:
        """Published (path, sha256, build ms, indexed ms) whose build timestamp is more
        than `skew_ms` later than their indexed_timestamp."""
        ...

    def forget_failures(self, reason: str) -> set[str]:
        """Drop the `failed` rows of one reason (read again); their paths."""
        ...

    # what later runs remember beside the cache rows (the shard upkeep's state)
    def load_state(self, name: str) -> bytes | None: ...
    def save_state(self, name: str, data: bytes) -> None: ...
    def append_state(self, name: str, data: bytes, size: int) -> bool:
        """Append `data` to the saved state `name` if it is still `size` bytes long (as
        this process last saved or loaded it), durably as save_state; False when it is
        not (or there is none): the caller saves it whole."""
        ...


class Caches(Protocol):
    """Where the caches of a channel live."""

    location: str

    def open(self, subdir: str) -> SubdirCache:
        """Raises CacheError when the cache cannot be used."""
        ...
