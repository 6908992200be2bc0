"""conda-index 0.13's cache.db schema and its migrations, and how damage is told and set aside."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from conda_indexd.caches.base import CacheError

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


# Ours (CEP-47): beside cache.db, its own connection (pieces.TimestampStore). One row per
# (filename, archive sha256) ever indexed, never updated or deleted; `seeded`: a row once
# the packages indexed before this table existed were given their value.
TIMESTAMPS_FILE = "conda-indexd-timestamps.db"
TIMESTAMP_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS indexed_timestamp (
            path TEXT NOT NULL, sha256 TEXT NOT NULL,
            indexed_timestamp INTEGER NOT NULL, build_timestamp INTEGER,
            PRIMARY KEY (path, sha256)
        )""",
    "CREATE INDEX IF NOT EXISTS idx_later ON indexed_timestamp (build_timestamp - indexed_timestamp)",
    "CREATE TABLE IF NOT EXISTS seeded (seeded_at INTEGER NOT NULL)",
)

# sqlite result codes for a damaged file (sqlite3.h)
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def is_corrupt(exc: BaseException) -> bool:
    """A cache.db that sqlite cannot read as a database (not disk full, not locked)."""
    return isinstance(exc, sqlite3.DatabaseError) and (
        getattr(exc, "sqlite_errorcode", None) in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in str(exc) or "not a database" in str(exc)
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


def migrate(db: sqlite3.Connection, db_path: Path) -> None:
    """Create or upgrade the schema (inside the caller's transaction), as conda-index does."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > USER_VERSION:
        raise CacheError(f"{db_path}: cache version {version} is newer than {USER_VERSION}")
    for statement in _SCHEMA:
        db.execute(statement)
    if version < 1:  # conda-index migration 1: bare filenames as paths
        db.create_function("basename", 1, lambda p: p.rsplit("/", 1)[-1] if isinstance(p, str) else p)
        for table in (*METADATA_TABLES, "stat"):
            db.execute(f"UPDATE OR IGNORE {table} SET path = basename(path) WHERE instr(path, '/')")
    if version < 2:  # migration 2: generated columns (present in our CREATE)
        columns = {row[1] for row in db.execute("PRAGMA table_xinfo(index_json)")}
        if "name" not in columns:
            db.execute("ALTER TABLE index_json ADD COLUMN name AS (json_extract(index_json, '$.name'))")
        if "sha256" not in columns:
            db.execute("ALTER TABLE index_json ADD COLUMN sha256 AS (json_extract(index_json, '$.sha256'))")
    if version < USER_VERSION:
        db.execute(f"PRAGMA user_version = {USER_VERSION}")
