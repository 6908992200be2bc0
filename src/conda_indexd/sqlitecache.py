"""conda-index 0.13's per-subdir `cache.db` (channel-format.md §3.4): the sqlite `Caches`.

`failed` rows (ours) keep the short reason label in the row's `etag` column and the
one-line message in `last_modified` (both unused by conda-index for local files).
conda-index only queries the stages it knows, so it ignores these rows.

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
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .cache import CacheCorrupt, CacheError, Failure, FileState, MetadataRejected, PublishedKey, RecordRow, ShardKey
from .localstore import clean_stale_temps, same_content, write_atomic
from .logs import get_logger
from .sqlitepieces import PieceStore

if TYPE_CHECKING:
    from .archive import PackageMetadata

log = get_logger(__name__)

USER_VERSION = 2
METADATA_TABLES = ("about", "index_json", "recipe", "recipe_log", "run_exports", "post_install", "icon")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS about (path TEXT PRIMARY KEY, about BLOB)",
    """CREATE TABLE IF NOT EXISTS index_json (
            path TEXT PRIMARY KEY, index_json BLOB,
            name AS (json_extract(index_json, '$.name')),
            sha256 AS (json_extract(index_json, '$.sha256'))
        )""",
    "CREATE TABLE IF NOT EXISTS recipe (path TEXT PRIMARY KEY, recipe BLOB)",
    "CREATE TABLE IF NOT EXISTS recipe_log (path TEXT PRIMARY KEY, recipe_log BLOB)",
    "CREATE TABLE IF NOT EXISTS run_exports (path TEXT PRIMARY KEY, run_exports BLOB)",
    "CREATE TABLE IF NOT EXISTS post_install (path TEXT PRIMARY KEY, post_install BLOB)",
    "CREATE TABLE IF NOT EXISTS icon (path TEXT PRIMARY KEY, icon_png BLOB)",
    """CREATE TABLE IF NOT EXISTS stat (
                stage TEXT NOT NULL DEFAULT 'indexed',
                path TEXT NOT NULL,
                mtime NUMBER,
                size INTEGER,
                sha256 TEXT,
                md5 TEXT,
                last_modified TEXT,
                etag TEXT
            )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_stat ON stat (path, stage)",
    "CREATE INDEX IF NOT EXISTS idx_stat_stage ON stat (stage, path)",
)


# sqlite result codes for a damaged file (sqlite3.h)
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def is_corrupt(exc: BaseException) -> bool:
    """A cache.db that sqlite cannot read as a database (not disk full, not locked)."""
    return isinstance(exc, sqlite3.DatabaseError) and (
        getattr(exc, "sqlite_errorcode", None) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
        or "malformed" in str(exc)
        or "not a database" in str(exc)
    )


def quarantine(db_path: Path) -> Path:
    """Move a damaged cache.db (and its journal) aside, keeping it for inspection; the
    next open starts an empty cache that is rebuilt from the packages."""
    target = db_path.with_name(f"{db_path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-journal", "-wal", "-shm"):
        src = db_path.with_name(db_path.name + suffix)
        if src.exists():
            os.replace(src, target.with_name(target.name + suffix))
    return target


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

    def pieces(self) -> PieceStore:
        if self._pieces is None:
            self._pieces = PieceStore(self.db_path.parent)
        return self._pieces

    def __enter__(self) -> SqliteCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > USER_VERSION:
            raise CacheError(f"{self.db_path}: cache version {version} is newer than {USER_VERSION}")
        with self.transaction():
            for statement in _SCHEMA:
                self.db.execute(statement)
            if version < 1:  # conda-index migration 1: bare filenames as paths
                self.db.create_function("basename", 1, lambda p: p.rsplit("/", 1)[-1] if isinstance(p, str) else p)
                for table in (*METADATA_TABLES, "stat"):
                    self.db.execute(f"UPDATE OR IGNORE {table} SET path = basename(path) WHERE instr(path, '/')")
            if version < 2:  # migration 2: generated columns (present in our CREATE)
                columns = {row[1] for row in self.db.execute("PRAGMA table_xinfo(index_json)")}
                if "name" not in columns:
                    self.db.execute("ALTER TABLE index_json ADD COLUMN name AS (json_extract(index_json, '$.name'))")
                if "sha256" not in columns:
                    self.db.execute("ALTER TABLE index_json ADD COLUMN sha256 AS (json_extract(index_json, '$.sha256'))")
            if version < USER_VERSION:
                self.db.execute(f"PRAGMA user_version = {USER_VERSION}")

    def transaction(self) -> _Transaction:
        return _Transaction(self)

    # --- fs stage -------------------------------------------------------------------

    @_guarded
    def replace_fs_state(self, files: Iterable[FileState]) -> None:
        """Only the difference is written: on a big subdir where little changed,
        rewriting every row costs more than the listing itself."""
        new = {f.path: f for f in files}
        old = self.fs_state()
        gone = old.keys() - new.keys()
        changed = [f for path, f in new.items() if path not in old or old[path][1:3] != f[1:3]]
        if not gone and not changed:
            return
        with self.transaction():
            self.db.executemany("DELETE FROM stat WHERE stage = 'fs' AND path = ?", ((p,) for p in gone))
            self._upsert_fs(changed)

    @_guarded
    def update_fs_state(self, present: Iterable[FileState], gone: Iterable[str]) -> None:
        with self.transaction():
            self._upsert_fs(present)
            self.db.executemany("DELETE FROM stat WHERE stage = 'fs' AND path = ?", ((p,) for p in gone))

    def _upsert_fs(self, files: Iterable[FileState]) -> None:
        self.db.executemany(
            "INSERT INTO stat (stage, path, mtime, size) VALUES ('fs', ?, ?, ?) "
            "ON CONFLICT (path, stage) DO UPDATE SET mtime = excluded.mtime, size = excluded.size",
            ((f.path, f.mtime, f.size) for f in files),
        )

    @_guarded
    def fs_state(self) -> dict[str, FileState]:
        return {
            path: FileState(path, mtime, size)
            for path, mtime, size in self.db.execute("SELECT path, mtime, size FROM stat WHERE stage = 'fs'")
        }

    # --- what to extract ---------------------------------------------------------------

    @_guarded
    def changed_packages(self, paths: Iterable[str] | None = None) -> list[FileState]:
        query = """
            SELECT fs.path, fs.mtime, fs.size FROM stat AS fs
            LEFT JOIN stat AS ix ON ix.path = fs.path AND ix.stage = 'indexed'
            LEFT JOIN stat AS bad ON bad.path = fs.path AND bad.stage = 'failed'
            WHERE fs.stage = 'fs'
              AND (ix.path IS NULL OR ix.mtime != fs.mtime OR ix.size != fs.size)
              AND (bad.path IS NULL OR bad.mtime != fs.mtime OR bad.size != fs.size)
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
                        self.db.execute(
                            f"INSERT OR REPLACE INTO {table} (path, {table}) VALUES (?, json(?))", (path, value)
                        )
                if meta.icon is None:
                    self.db.execute("DELETE FROM icon WHERE path = ?", (path,))
                else:
                    self.db.execute("INSERT OR REPLACE INTO icon (path, icon_png) VALUES (?, ?)", (path, meta.icon))
                self.db.execute(
                    "INSERT OR REPLACE INTO index_json (path, index_json) VALUES (?, json(?))",
                    (path, json.dumps(index)),
                )
                self.db.execute(
                    "INSERT OR REPLACE INTO stat (stage, path, mtime, size, sha256, md5) VALUES ('indexed', ?, ?, ?, ?, ?)",
                    (path, state.mtime, state.size, index["sha256"], index["md5"]),
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
                "INSERT OR REPLACE INTO stat (stage, path, mtime, size, etag, last_modified) "
                "VALUES ('failed', ?, ?, ?, ?, ?)",
                (path, state.mtime, state.size, reason, message),
            )

    # --- reads for the outputs -------------------------------------------------------------

    _PUBLISHED = """
            FROM stat AS fs
            JOIN stat AS ix ON ix.path = fs.path AND ix.stage = 'indexed'
                 AND ix.mtime = fs.mtime AND ix.size = fs.size
            JOIN index_json ON index_json.path = fs.path
    """

    def shard_keys(self) -> Iterator[ShardKey]:
        rows = self._rows(
            "SELECT index_json.name, fs.path, index_json.sha256"
            + self._PUBLISHED
            + "WHERE fs.stage = 'fs' ORDER BY index_json.name, fs.path"
        )
        return (ShardKey(*row) for row in rows)

    def shard_rows(self) -> Iterator[tuple[str, str, str, str | None]]:
        return self._rows(
            "SELECT index_json.name, fs.path, index_json.index_json, run_exports.run_exports"
            + self._PUBLISHED
            + "LEFT JOIN run_exports ON run_exports.path = fs.path WHERE fs.stage = 'fs' "
            + "ORDER BY index_json.name, fs.path"
        )

    def published_keys(self, paths: Iterable[str] | None = None) -> Iterator[PublishedKey]:
        """From the stat rows alone (no JSON is read)."""
        query = """
            SELECT fs.path, ix.sha256 FROM stat AS fs
            JOIN stat AS ix ON ix.path = fs.path AND ix.stage = 'indexed'
                 AND ix.mtime = fs.mtime AND ix.size = fs.size
            WHERE fs.stage = 'fs'
        """
        return (PublishedKey(*row) for row in self._rows(*_limit(query, "fs.path", paths)))

    def records_for(self, paths: Iterable[str]) -> Iterator[RecordRow]:
        rows = self._rows(
            """
            SELECT index_json.path, index_json.index_json, index_json.name, run_exports.run_exports
            FROM index_json LEFT JOIN run_exports USING (path)
            WHERE index_json.path IN (SELECT value FROM json_each(?))
            """,
            (json.dumps(list(paths)),),
        )
        return (RecordRow(*row) for row in rows)

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

    def published_digests(self) -> dict[str, str | None]:
        return dict(self.published_keys())

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
        rows = self.db.execute(
            """
            SELECT fs.path, bad.etag, bad.last_modified FROM stat AS bad
            CROSS JOIN stat AS fs ON fs.path = bad.path AND fs.stage = 'fs'
                 AND bad.mtime = fs.mtime AND bad.size = fs.size
            WHERE bad.stage = 'failed' ORDER BY fs.path
            """
        )
        return [Failure(path, reason or "unreadable", message or "") for path, reason, message in rows]

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


class SqliteCaches:
    """`<channel>/<subdir>/.cache/cache.db`, as conda-index keeps them (the `Caches` seam)."""

    def __init__(self, channel: Path):
        self.channel = channel
        self.location = str(channel)

    def db_path(self, subdir: str) -> Path:
        return self.channel / subdir / ".cache" / "cache.db"

    def open(self, subdir: str) -> SqliteCache:
        return SqliteCache(self.db_path(subdir))


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
