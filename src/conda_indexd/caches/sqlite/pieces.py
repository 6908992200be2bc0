"""The record pieces kept beside cache.db, in `.cache/conda-indexd-pieces.db` (ours; conda-index's
cache.db keeps exactly its own tables), so a one-shot re-run or a daemon restart does not
serialise unchanged records again.

A piece is only used while the crc32 of the `index_json` row it was made from still
matches: conda-index's rows win whenever they disagree (a package it re-indexed gets a
new piece). It is a cache of a cache: when the file is unreadable it is started again,
and pieces of packages that left cache.db are dropped on a full refresh.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

PIECES_FILE = "conda-indexd-pieces.db"
BATCH = 2000  # rows looked up per query
_SCHEMA = "CREATE TABLE IF NOT EXISTS pieces (path TEXT PRIMARY KEY, crc INTEGER NOT NULL, piece BLOB NOT NULL)"


def text_crc(text: str) -> int:
    return zlib.crc32(text.encode())


class PieceStore:
    """{path: (crc of its index_json text, piece)} in one sqlite file."""

    def __init__(self, folder: Path, *, readonly: bool = False):
        """`readonly`: lookups only, through a connection that writes nothing (a forked
        reader's): an unreadable file means "no piece kept", and it is left as it is."""
        self.path = folder / PIECES_FILE
        self.readonly = readonly
        self.db: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self.db is None and self.readonly:
            self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        if self.db is None:
            try:
                self.db = self._connect()
            except sqlite3.Error as exc:
                log.warning("record pieces unreadable; starting them again", path=str(self.path), error=str(exc))
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                self.db = self._connect()
        return self.db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")  # a cache of a cache: no fsync per commit
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute(_SCHEMA)
        return db

    def lookup(self, rows: Iterable[tuple[str, str, str]]) -> Iterator[tuple[str, str, str, bytes | None]]:
        """(path, name, index_json text) -> the same with the stored piece, or None when
        absent or made from another text. Read in batches: memory stays bounded."""
        it = iter(rows)
        while batch := list(itertools.islice(it, BATCH)):
            stored: dict[str, tuple[int, bytes]] = {}
            try:
                db = self._open()
                query = f"SELECT path, crc, piece FROM pieces WHERE path IN ({','.join('?' * len(batch))})"
                stored = {p: (c, bytes(b)) for p, c, b in db.execute(query, [r[0] for r in batch])}
            except sqlite3.Error as exc:
                if not self.readonly:
                    log.warning("record pieces unreadable; serialising again", path=str(self.path), error=str(exc))
                    self.reset()
            for path, name, text in batch:
                known = stored.get(path)
                yield path, name, text, (known[1] if known is not None and known[0] == text_crc(text) else None)

    def save(self, pieces: Iterable[tuple[str, str, bytes]], *, keep: Iterable[str] | None = None) -> None:
        """Keep (path, index_json text it was made from, piece); `keep`: every path still
        published (the others' pieces are dropped)."""
        try:
            db = self._open()
            db.execute("BEGIN")
            db.executemany(
                "INSERT OR REPLACE INTO pieces (path, crc, piece) VALUES (?, ?, ?)",
                ((path, text_crc(text), piece) for path, text, piece in pieces),
            )
            if keep is not None:
                db.execute("CREATE TEMP TABLE IF NOT EXISTS keep (path TEXT PRIMARY KEY)")
                db.execute("DELETE FROM keep")
                db.executemany("INSERT OR IGNORE INTO keep VALUES (?)", ((p,) for p in keep))
                db.execute("DELETE FROM pieces WHERE path NOT IN (SELECT path FROM keep)")
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            log.warning("record pieces not saved", path=str(self.path), error=str(exc))
            self.reset()

    def reset(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def close(self) -> None:
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None


class TimestampStore:
    """CEP-47 indexed_timestamps in `conda-indexd-timestamps.db` beside cache.db: not a
    cache (never started again: a value once given is kept), so a damaged file is an
    error, and every commit is synced. Its own connection and transactions: cache.db's
    transactions never span both files."""

    def __init__(self, path: Path, *, readonly: bool = False):
        """`readonly`: `values` only, through a connection that writes nothing (a forked reader's)."""
        from conda_indexd.caches.base import CacheError
        from conda_indexd.caches.sqlite.schema import TIMESTAMP_SCHEMA

        self.path = path
        if readonly:
            self.db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            return
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA synchronous = FULL")
            if self.db.execute("SELECT count(*) FROM sqlite_master WHERE name IN ('indexed_timestamp', 'seeded', 'idx_later')").fetchone()[0] < 3:
                self.db.execute("BEGIN IMMEDIATE")
                for statement in TIMESTAMP_SCHEMA:
                    self.db.execute(statement)
                self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise CacheError(f"{path}: {exc}") from exc

    def seeded(self) -> bool:
        return self.db.execute("SELECT 1 FROM seeded").fetchone() is not None

    def values(self, keys: Iterable[tuple[str, str | None]]) -> dict[tuple[str, str], int]:
        """{(path, sha256): indexed_timestamp} of those keys that have one."""
        wanted = [(p, s) for p, s in keys if s]
        if not wanted:
            return {}
        rows = self.db.execute(
            "SELECT path, sha256, indexed_timestamp FROM indexed_timestamp WHERE path IN (SELECT value FROM json_each(?))",
            (json.dumps(sorted({p for p, _ in wanted})),),
        )
        want = set(wanted)
        return {(p, s): v for p, s, v in rows if (p, s) in want}

    def add(self, rows: Iterable[tuple[str, str, int, int | None]], seeded_at: int | None) -> None:
        """The first value wins (ON CONFLICT DO NOTHING)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany(
                "INSERT INTO indexed_timestamp (path, sha256, indexed_timestamp, build_timestamp) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", rows
            )
            if seeded_at is not None and self.db.execute("SELECT 1 FROM seeded").fetchone() is None:
                self.db.execute("INSERT INTO seeded (seeded_at) VALUES (?)", (seeded_at,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def later_than(self, skew_ms: int) -> list[tuple[str, str, int, int]]:
        """(path, sha256, build ms, indexed ms) whose build timestamp is more than `skew_ms` later."""
        return list(
            self.db.execute(
                "SELECT path, sha256, build_timestamp, indexed_timestamp FROM indexed_timestamp WHERE build_timestamp - indexed_timestamp > ?", (skew_ms,)
            )
        )

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
