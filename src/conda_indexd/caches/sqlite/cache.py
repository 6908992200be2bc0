"""conda-index 0.13's per-subdir `cache.db` (docs/spec §3.4): the sqlite `Caches`.

Change identity (the store's `FileState.identity`, inode+ctime locally): `fs` and
`indexed` rows keep it in the `etag` column, which conda-index leaves empty for local
files, so a file rewritten with the same size and mtime (rsync --times, cp -p) is read
again. A row without one (written by conda-index) is trusted once and then given the
current identity. `failed` rows (ours) keep the short reason label in `etag`, the
one-line message in `last_modified` and the identity in `md5` (meaningless for a file
that could not be read). conda-index only queries the stages it knows and compares
mtime and size, so it ignores all of this.

Unlike conda-index, the output only contains files whose `indexed` row matches the
current `fs` row: a package replaced by a broken file drops out instead of being served
with stale metadata, and a failed file's stale metadata rows are removed, so a
conda-index run on this cache.db does not serve them either.

Damage is handled here and nowhere else: a damaged file found on open is moved aside
(`cache.db.corrupt-<time>`) and a new cache is started; damage found mid-run moves the
file aside the same way and raises `CacheCorrupt`, so the caller re-runs from an empty
cache. The packages are the source of truth; the cache only saves work.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from conda_indexd.caches.base import (
    CacheCorrupt,
    CacheError,
    Failure,
    FileState,
    MetadataRejected,
    PublishedKey,
    RecordReader,
    RecordRow,
    ShardKey,
    TimestampGap,
)
from conda_indexd.caches.sqlite.pieces import PieceStore, TimestampStore
from conda_indexd.caches.sqlite.schema import METADATA_TABLES, TIMESTAMPS_FILE, is_corrupt, migrate, quarantine
from conda_indexd.model import Listing
from conda_indexd.util.fsio import clean_stale_temps, same_content, write_atomic
from conda_indexd.util.logs import get_logger

if TYPE_CHECKING:
    from conda_indexd.archive.reader import PackageMetadata

log = get_logger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(method: _F) -> _F:
    """Damage found by a method: the file is moved aside and CacheCorrupt raised."""

    @functools.wraps(method)
    def wrapper(self: SqliteCache, *args: Any, **kwargs: Any) -> Any:
        with self._guard():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class SqliteCache:
    """One subdir's cache.db (the `SubdirCache` protocol). Used from one thread at a time."""

    def __init__(self, db_path: Path):
        self.db_path = db_path
        self._pieces: PieceStore | None = None
        self._stamps: TimestampStore | None = None
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise CacheError(f"{db_path}: {exc}") from exc
            if getattr(self, "db", None) is not None:
                self.db.close()
            moved = quarantine(db_path)
            log.warning("cache.db is damaged; moved aside and rebuilding from the packages", path=str(db_path), moved_to=moved.name, error=str(exc))
            try:
                self._open()
            except sqlite3.Error as exc2:
                raise CacheError(f"{db_path}: {exc2}") from exc2
        except OSError as exc:
            raise CacheError(f"{db_path.parent}: {exc.strerror or exc}") from exc

    def _open(self) -> None:
        db_path = self.db_path
        try:
            db_path.parent.mkdir(exist_ok=True)
            clean_stale_temps(db_path.parent)  # state files left half-written by a killed run
            self.db = sqlite3.connect(str(db_path), isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA foreign_keys = ON")
            # One local writer; rollback journal kept (conda-index uses no WAL, and WAL
            # breaks on network file systems). synchronous=NORMAL is safe in that mode
            # for our purpose: a lost transaction only means re-extracting a package.
            self.db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError:
            raise
        except sqlite3.Error as exc:
            raise CacheError(f"{db_path}: {exc}") from exc

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            moved = quarantine(self.db_path)
            log.warning("cache.db is damaged; moved aside and rebuilding from the packages", path=str(self.db_path), moved_to=moved.name, error=str(exc))
            raise CacheCorrupt(f"{self.db_path}: {exc}", moved.name) from exc

    def _rows(self, query: str, params: Iterable[Any] = ()) -> Iterator[Any]:
        with self._guard():
            cursor = self.db.execute(query, tuple(params))
        return self._iterate(cursor)

    def _iterate(self, cursor: sqlite3.Cursor) -> Iterator[Any]:
        with self._guard():
            yield from cursor

    def close(self) -> None:
        self.db.close()
        if self._pieces is not None:
            self._pieces.close()
        if self._stamps is not None:
            self._stamps.close()

    def memo_folder(self) -> Path:
        return self.db_path.parent

    @_guarded
    def generation(self) -> str:
        """What changes whenever anyone commits a change to cache.db. In the rollback
        journal mode (SQLite's default, and conda-index's), the file change counter in the
        database header (bytes 24-27) is incremented by every transaction that modified
        the file, whoever wrote it (https://www.sqlite.org/fileformat2.html#file_change_counter):
        with the file's inode, one read of 100 bytes, where counting two million rows took
        a second. In WAL mode that counter is not kept, so there it is the row counts and
        highest rowids of the record tables (conda-index writes rows with INSERT OR
        REPLACE: a new rowid), and the stat rows' mtime and size totals (an fs row updated
        in place, as by a cancelled run, shows there too)."""
        try:
            with open(self.db_path, "rb") as f:
                header = f.read(100)
                inode = os.fstat(f.fileno()).st_ino
        except OSError:
            header, inode = b"", 0
        if len(header) == 100 and header[:16] == b"SQLite format 3\0" and header[18] == 1 and header[19] == 1:
            return f"counter:{inode}:{int.from_bytes(header[24:28], 'big')}"
        row = self.db.execute(
            "SELECT (SELECT count(*) FROM index_json), (SELECT max(rowid) FROM index_json),"
            " (SELECT count(*) FROM stat), (SELECT max(rowid) FROM stat),"
            " (SELECT total(mtime) || '/' || total(size) FROM stat)"  # rows updated in place
        ).fetchone()
        return ":".join(map(str, row))

    def pieces(self) -> PieceStore:
        if self._pieces is None:
            self._pieces = PieceStore(self.db_path.parent)
        return self._pieces

    def __enter__(self) -> SqliteCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        with self.transaction():
            migrate(self.db, self.db_path)

    def transaction(self) -> _Transaction:
        return _Transaction(self)

    # --- fs stage -------------------------------------------------------------------

    @_guarded
    def replace_fs_state(self, files: Iterable[FileState]) -> set[str]:
        """Only the difference is written: on a big subdir where little changed,
        rewriting every row costs more than the listing itself. The old rows are
        compared as they are read, as plain tuples (never all held at once)."""
        if isinstance(files, Listing):
            gone, changed = self._fs_difference(files)
        else:
            pending = {f.path: f for f in files}  # listed files not yet matched with their row
            gone, changed = [], []
            for row in self.db.execute(_FS_ROWS):
                f = pending.pop(row[0], None)
                if f is None:
                    gone.append(row[0])
                elif f[:4] != row:
                    changed.append(f)
            changed += pending.values()  # files without a row
        if not gone and not changed:
            return set()
        with self.transaction():
            self.db.executemany("DELETE FROM stat WHERE stage = 'fs' AND path = ?", ((p,) for p in gone))
            self._upsert_fs(changed)
        return {*gone, *(f.path for f in changed)}

    def _fs_difference(self, listing: Listing) -> tuple[list[str], list[FileState]]:
        """(paths whose row is gone, listed files whose row differs or is missing): the
        listing and the rows (read in path order through the (stage, path) index, byte
        order, which is code point order) are merged, so neither side is held in a dict."""
        gone: list[str] = []
        changed: list[FileState] = []
        listed = listing.rows()
        nxt = next(listed, None)
        for row in self.db.execute(_FS_ROWS + " ORDER BY path"):
            path = row[0]
            while nxt is not None and nxt[0] < path:
                changed.append(FileState(*nxt))  # a listed file without a row
                nxt = next(listed, None)
            if nxt is not None and nxt[0] == path:
                if nxt != row:
                    changed.append(FileState(*nxt))
                nxt = next(listed, None)
            else:
                gone.append(path)
        while nxt is not None:
            changed.append(FileState(*nxt))
            nxt = next(listed, None)
        return gone, changed

    @_guarded
    def update_fs_state(self, present: Iterable[FileState], gone: Iterable[str]) -> None:
        with self.transaction():
            self._upsert_fs(present)
            self.db.executemany("DELETE FROM stat WHERE stage = 'fs' AND path = ?", ((p,) for p in gone))

    def _upsert_fs(self, files: Iterable[FileState]) -> None:
        files = list(files)
        self.db.executemany(
            "INSERT INTO stat (stage, path, mtime, size, etag) VALUES ('fs', ?, ?, ?, ?) "
            "ON CONFLICT (path, stage) DO UPDATE SET mtime = excluded.mtime, size = excluded.size, etag = excluded.etag",
            ((f.path, f.mtime, f.size, f.identity or None) for f in files),
        )
        # rows conda-index wrote have no identity: trusted once (same mtime and size), then given one
        self.db.executemany(
            "UPDATE stat SET etag = ? WHERE stage = 'indexed' AND path = ? AND etag IS NULL AND mtime = ? AND size = ?",
            ((f.identity, f.path, f.mtime, f.size) for f in files if f.identity),
        )

    @_guarded
    def fs_state(self) -> dict[str, FileState]:
        return {row[0]: FileState(*row) for row in self.db.execute(_FS_ROWS)}

    # --- what to extract ---------------------------------------------------------------

    @_guarded
    def changed_packages(self, paths: Iterable[str] | None = None) -> list[FileState]:
        query = """
            SELECT fs.path, fs.mtime, fs.size, coalesce(fs.etag, '') FROM stat AS fs
            LEFT JOIN stat AS ix ON ix.path = fs.path AND ix.stage = 'indexed'
            LEFT JOIN stat AS bad ON bad.path = fs.path AND bad.stage = 'failed'
            WHERE fs.stage = 'fs'
              AND (ix.path IS NULL OR ix.mtime != fs.mtime OR ix.size != fs.size OR ix.etag IS NOT fs.etag)
              AND (bad.path IS NULL OR bad.mtime != fs.mtime OR bad.size != fs.size OR bad.md5 IS NOT fs.etag)
        """
        query, params = _limit(query, "fs.path", paths)
        return [FileState(*row) for row in self.db.execute(query + " ORDER BY fs.path", params)]

    # --- writes after extraction ---------------------------------------------------------

    @_guarded
    def store(self, meta: PackageMetadata, state: FileState) -> None:
        path = state.path
        index = meta.index_json
        try:
            with self.transaction():
                for table, value in (
                    ("about", meta.about),
                    ("recipe", meta.recipe),
                    ("run_exports", meta.run_exports),
                    ("post_install", meta.post_install),
                ):
                    if value is None:
                        self.db.execute(f"DELETE FROM {table} WHERE path = ?", (path,))
                    else:
                        self.db.execute(f"INSERT OR REPLACE INTO {table} (path, {table}) VALUES (?, json(?))", (path, value))
                if meta.icon is None:
                    self.db.execute("DELETE FROM icon WHERE path = ?", (path,))
                else:
                    self.db.execute("INSERT OR REPLACE INTO icon (path, icon_png) VALUES (?, ?)", (path, meta.icon))
                self.db.execute(
                    "INSERT OR REPLACE INTO index_json (path, index_json) VALUES (?, json(?))",
                    (path, json.dumps(index)),
                )
                self.db.execute(
                    "INSERT OR REPLACE INTO stat (stage, path, mtime, size, sha256, md5, etag) VALUES ('indexed', ?, ?, ?, ?, ?, ?)",
                    (path, state.mtime, state.size, index["sha256"], index["md5"], state.identity or None),
                )
                self.db.execute("DELETE FROM stat WHERE stage = 'failed' AND path = ?", (path,))
        except sqlite3.OperationalError as exc:
            if "malformed JSON" not in str(exc):
                raise
            raise MetadataRejected(f"metadata rejected by cache.db ({exc})") from exc

    @_guarded
    def store_failure(self, state: FileState, reason: str, message: str) -> None:
        path = state.path
        with self.transaction():
            for table in METADATA_TABLES:
                self.db.execute(f"DELETE FROM {table} WHERE path = ?", (path,))
            self.db.execute("DELETE FROM stat WHERE stage = 'indexed' AND path = ?", (path,))
            self.db.execute(
                "INSERT OR REPLACE INTO stat (stage, path, mtime, size, etag, last_modified, md5) VALUES ('failed', ?, ?, ?, ?, ?, ?)",
                (path, state.mtime, state.size, reason, message, state.identity or None),
            )

    # --- reads for the outputs -------------------------------------------------------------

    _PUBLISHED = """
            FROM stat AS fs
            JOIN stat AS ix ON ix.path = fs.path AND ix.stage = 'indexed'
                 AND ix.mtime = fs.mtime AND ix.size = fs.size AND ix.etag IS fs.etag
            JOIN index_json ON index_json.path = fs.path
    """

    def shard_keys(self) -> Iterator[ShardKey]:
        rows = self._rows("SELECT index_json.name, fs.path, index_json.sha256" + self._PUBLISHED + "WHERE fs.stage = 'fs' ORDER BY index_json.name, fs.path")
        return (ShardKey(*row) for row in rows)

    def shard_rows(self) -> Iterator[tuple[str, str, str, str | None]]:
        return self._rows(
            "SELECT index_json.name, fs.path, index_json.index_json, run_exports.run_exports"
            + self._PUBLISHED
            + "LEFT JOIN run_exports ON run_exports.path = fs.path WHERE fs.stage = 'fs' "
            + "ORDER BY index_json.name, fs.path"
        )

    _PUBLISHED_KEYS = """
            SELECT fs.path, ix.sha256 FROM stat AS fs
            JOIN stat AS ix ON ix.path = fs.path AND ix.stage = 'indexed'
                 AND ix.mtime = fs.mtime AND ix.size = fs.size AND ix.etag IS fs.etag
            WHERE fs.stage = 'fs'
    """

    def published_keys(self, paths: Iterable[str] | None = None) -> Iterator[PublishedKey]:
        """From the stat rows alone (no JSON is read)."""
        return map(PublishedKey._make, self._rows(*_limit(self._PUBLISHED_KEYS, "fs.path", paths)))

    def records_for(self, paths: Iterable[str]) -> Iterator[RecordRow]:
        return _records(self._rows(_RECORDS, (json.dumps(list(paths)),)), self.stamps())

    def fork_reader(self) -> Callable[[], RecordReader]:
        """A forked worker opens cache.db, the timestamps and the kept pieces read-only."""
        return functools.partial(SqliteReader, self.db_path)

    @_guarded
    def metadata_texts(self, path: str) -> tuple[str | None, ...]:
        row = self.db.execute(
            """
            SELECT index_json, about, post_install, recipe, run_exports FROM index_json
            LEFT JOIN about USING (path) LEFT JOIN post_install USING (path)
            LEFT JOIN recipe USING (path) LEFT JOIN run_exports USING (path)
            WHERE index_json.path = ?
            """,
            (path,),
        ).fetchone()
        return tuple(row) if row else (None, None, None, None, None)

    @_guarded
    def published_digests(self) -> dict[str, str | None]:
        return dict(self.db.execute(self._PUBLISHED_KEYS))  # straight from the cursor: no Python code per row

    def run_exports(self) -> Iterator[tuple[str, str | None]]:
        return self._rows(
            """
            SELECT stat.path, run_exports.run_exports FROM stat
            LEFT JOIN run_exports USING (path)
            WHERE stat.stage = 'fs' ORDER BY stat.path
            """
        )

    @_guarded
    def failures(self) -> list[Failure]:
        rows = self.db.execute(_FAILED_NOW + " ORDER BY fs.path")
        return [Failure(path, reason or "unreadable", message or "") for path, reason, message in rows]

    # --- CEP-47 indexed_timestamp (ours: conda-indexd-timestamps.db, pieces.py's TimestampStore) ---

    def stamps(self) -> TimestampStore:
        if self._stamps is None:
            self._stamps = TimestampStore(self.db_path.with_name(TIMESTAMPS_FILE))
        return self._stamps

    def timestamps_seeded(self) -> bool:
        return self.stamps().seeded()

    def missing_timestamps(self, paths: Iterable[str] | None = None) -> Iterator[TimestampGap]:
        """Streamed, a batch at a time (a million gaps on a migrated channel's first run)."""
        query, params = _limit(
            "SELECT fs.path, index_json.sha256, json_extract(index_json.index_json, '$.timestamp'), fs.mtime"
            + self._PUBLISHED
            + "WHERE fs.stage = 'fs' AND index_json.sha256 IS NOT NULL",
            "fs.path",
            paths,
        )
        stamps = self.stamps()
        for batch in _batched(self._rows(query, params), 2000):
            known = stamps.values((path, sha) for path, sha, _, _ in batch)
            yield from (TimestampGap(*row) for row in batch if (row[0], row[1]) not in known)

    def add_timestamps(self, rows: Iterable[tuple[str, str, int, int | None]], *, seeded_at: int | None = None) -> None:
        self.stamps().add(rows, seeded_at)

    def flagged_timestamps(self, skew_ms: int) -> list[tuple[str, str, int, int]]:
        suspicious = self.stamps().later_than(skew_ms)  # few: then which of them are published
        if not suspicious:
            return []
        published = dict(self.published_keys({path for path, _, _, _ in suspicious}))
        return sorted(row for row in suspicious if published.get(row[0]) == row[1])

    @_guarded
    def forget_failures(self, reason: str) -> set[str]:
        with self.transaction():
            paths = {row[0] for row in self.db.execute("SELECT path FROM stat WHERE stage = 'failed' AND etag = ?", (reason,))}
            self.db.execute("DELETE FROM stat WHERE stage = 'failed' AND etag = ?", (reason,))
        return paths

    # --- state files beside cache.db --------------------------------------------------------

    def load_state(self, name: str) -> bytes | None:
        try:
            return (self.db_path.parent / name).read_bytes()
        except FileNotFoundError:
            return None

    def save_state(self, name: str, data: bytes) -> None:
        path = self.db_path.parent / name
        if not same_content(path, data):
            write_atomic(path, data)

    def append_state(self, name: str, data: bytes, size: int) -> bool:
        try:
            fd = os.open(self.db_path.parent / name, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            if os.fstat(fd).st_size != size:
                return False
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if data:
                os.fdatasync(fd)  # durable before the memo that goes with it is saved, as save_state
            return True
        finally:
            os.close(fd)


_RECORDS = """
    SELECT index_json.path, index_json.index_json, index_json.name, run_exports.run_exports, index_json.sha256
    FROM index_json LEFT JOIN run_exports USING (path)
    WHERE index_json.path IN (SELECT value FROM json_each(?))
"""


def _records(rows: Iterable[tuple[str, str, str, str | None, str | None]], stamps: TimestampStore) -> Iterator[RecordRow]:
    for batch in _batched(rows, 2000):  # their indexed_timestamps, a batch at a time
        values = stamps.values((path, sha) for path, _, _, _, sha in batch)
        for path, text, name, run_exports, sha in batch:
            yield RecordRow(path, text, name, run_exports, values.get((path, sha)))


class SqliteReader:
    """cache.db's records in a forked worker (the `RecordReader` seam): connections of its
    own, opened read-only after the fork, so the parent's are never used in the child."""

    def __init__(self, db_path: Path):
        self.db = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
        self.stamps = TimestampStore(db_path.with_name(TIMESTAMPS_FILE), readonly=True)
        self.pieces = PieceStore(db_path.parent, readonly=True)

    def records_for(self, paths: Iterable[str]) -> Iterator[RecordRow]:
        return _records(self.db.execute(_RECORDS, (json.dumps(list(paths)),)), self.stamps)

    def kept_pieces(self) -> PieceStore:
        return self.pieces

    def close(self) -> None:
        self.db.close()
        self.stamps.close()
        self.pieces.close()


class SqliteCaches:
    """`<channel>/<subdir>/.cache/cache.db`, as conda-index keeps them (the `Caches` seam).

    A channel in object storage keeps its caches in a local state folder instead:
    `folder=""` gives `<root>/<subdir>/cache.db` (the ETag is the row's identity)."""

    def __init__(self, channel: Path, *, folder: str = ".cache"):
        self.channel = channel
        self.folder = folder
        self.location = str(channel)

    def db_path(self, subdir: str) -> Path:
        return self.channel / subdir / self.folder / "cache.db" if self.folder else self.channel / subdir / "cache.db"

    def open(self, subdir: str) -> SqliteCache:
        return SqliteCache(self.db_path(subdir))


_FS_ROWS = "SELECT path, mtime, size, coalesce(etag, '') FROM stat WHERE stage = 'fs'"  # FileState's first four


def _batched(rows: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(rows)
    while batch := list(itertools.islice(it, n)):
        yield batch


_FAILED_NOW = """
    SELECT fs.path, bad.etag, bad.last_modified FROM stat AS bad
    CROSS JOIN stat AS fs ON fs.path = bad.path AND fs.stage = 'fs'
         AND bad.mtime = fs.mtime AND bad.size = fs.size AND bad.md5 IS fs.etag
    WHERE bad.stage = 'failed'"""


def failure_of(db: Path, filename: str, identity: str | None = None) -> Failure | None:
    """Why the indexer left `filename` out, read from a subdir's cache.db without writing
    it (another process, `conda-indexd wait`, reads while the indexer writes): the failed
    row, when it matches the file's fs row as it is now (a changed file is read again) and,
    given the file's `identity` on disk, that fs row is about that file (not one replaced
    since the indexer last looked). None when there is none, or the cache cannot be read."""
    if not db.is_file():
        return None
    query, params = _FAILED_NOW + " AND bad.path = ?", [filename]
    if identity is not None:
        query, params = query + " AND fs.etag = ?", [filename, identity]
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=2)
        try:
            row = con.execute(query, params).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return None if row is None else Failure(row[0], row[1] or "unreadable", row[2] or "")


def _limit(query: str, column: str, paths: Iterable[str] | None) -> tuple[str, tuple[str, ...]]:
    if paths is None:
        return query, ()
    return query + f" AND {column} IN (SELECT value FROM json_each(?))", (json.dumps(sorted(paths)),)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT; nested uses join the outer transaction, so a caller
    can group many stores into one commit (one journal sync instead of one per package)."""

    def __init__(self, cache: SqliteCache):
        self.cache = cache

    def __enter__(self) -> None:
        db = self.cache.db
        with self.cache._guard():
            if not db.in_transaction:
                db.execute("BEGIN IMMEDIATE")
                self.outer = True
            else:
                self.outer = False

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self.outer:
            with self.cache._guard():
                self.cache.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
