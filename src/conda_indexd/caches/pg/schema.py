"""conda-index's PostgreSQL schema and the connection: the tables its SQLAlchemy model
creates (checked, or created when missing), the channel id in `<channel>/.cache/cache.json`,
URLs (conda-index's SQLAlchemy ones accepted), one-line errors. Used by caches/pg/cache.py (the
cache) and ha/leader.py (the lease)."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from conda_indexd.caches.base import CacheError
from conda_indexd.config import DEFAULT_DB_URL as DEFAULT_DB_URL  # re-exported


def _psycopg() -> Any:
    """psycopg, imported on first use (the postgresql extra; ~0.1 s to import, which a
    daemon or index run on sqlite should not pay)."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the postgresql extra
        raise PgCacheError("--db postgresql needs psycopg: pip install 'conda-indexd[postgresql]'") from None
    return psycopg


CHANNEL_ID_PATTERN = r"[a-z0-9_][a-z0-9_.-]*"  # conda-index's (CEP-26 path component)
CONNECT_TIMEOUT = 5

JSON_TABLES = ("about", "recipe", "run_exports", "post_install")
# table -> {column: information_schema data_type} that must be there (conda-index's model)
EXPECTED: dict[str, dict[str, str]] = {
    **{t: {"path": "text", t: "jsonb"} for t in JSON_TABLES},
    "icon": {"path": "text", "icon_png": "bytea"},
    "index_json": {"path": "text", "index_json": "jsonb", "name": "text", "sha256": "text"},
    "stat": {"stage": "text", "path": "text", "mtime": "integer", "size": "integer", "sha256": "text",
             "md5": "text", "last_modified": "text", "etag": "text"},
}  # fmt: skip
_DDL = (
    *(f"CREATE TABLE IF NOT EXISTS {t} (path TEXT NOT NULL PRIMARY KEY, {t} JSONB)" for t in JSON_TABLES),
    "CREATE TABLE IF NOT EXISTS icon (path TEXT NOT NULL PRIMARY KEY, icon_png BYTEA)",
    """CREATE TABLE IF NOT EXISTS index_json (path TEXT NOT NULL PRIMARY KEY, index_json JSONB,
        name TEXT GENERATED ALWAYS AS (jsonb_extract_path_text(index_json, 'name')) STORED,
        sha256 TEXT GENERATED ALWAYS AS (jsonb_extract_path_text(index_json, 'sha256')) STORED)""",
    """CREATE TABLE IF NOT EXISTS stat (stage TEXT NOT NULL, path TEXT NOT NULL, mtime INTEGER, size INTEGER,
        sha256 TEXT, md5 TEXT, last_modified TEXT, etag TEXT, PRIMARY KEY (stage, path))""",
    "CREATE TABLE IF NOT EXISTS conda_indexd_state (path TEXT PRIMARY KEY, data BYTEA NOT NULL)",
    # CEP-47 (ours): one row per <channel_id>/<subdir>/<filename> and archive sha256, never
    # updated or deleted; a subdir's prefix in _seeded once its earlier packages got theirs
    """CREATE TABLE IF NOT EXISTS conda_indexd_indexed_timestamp (path TEXT NOT NULL, sha256 TEXT NOT NULL,
        indexed_timestamp BIGINT NOT NULL, build_timestamp BIGINT, PRIMARY KEY (path, sha256))""",
    "CREATE TABLE IF NOT EXISTS conda_indexd_timestamps_seeded (prefix TEXT PRIMARY KEY, seeded_at BIGINT NOT NULL)",
)
_SCHEMA_LOCK = 0x636F6E64  # pg_advisory_xact_lock key while creating tables ("cond")


def conninfo(url: str) -> str:
    """A libpq URL from conda-index's SQLAlchemy URL (`postgresql+psycopg2://` -> `postgresql://`)."""
    return re.sub(r"^(postgres(?:ql)?)\+[a-z0-9_]+://", r"\1://", url)


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def channel_id(channel: Path) -> str:
    """The channel's id from `.cache/cache.json`, made (race-free) when missing."""
    path = channel / ".cache" / "cache.json"
    try:
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(f".cache.json.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"channel_id": os.urandom(8).hex()}))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # first one wins; the others read its id
            tmp.unlink()
        value = json.loads(path.read_text()).get("channel_id")
    except OSError as exc:
        raise CacheError(f"{path}: {exc.strerror or exc}") from exc
    except (ValueError, AttributeError) as exc:
        raise CacheError(f"{path}: not conda-index's cache.json ({exc})") from exc
    if not isinstance(value, str) or not re.fullmatch(CHANNEL_ID_PATTERN, value):
        raise CacheError(f'{path} contains invalid channel_id="{value}"')
    return value


class PgCacheError(CacheError):
    label = "postgresql"


def connect(url: str, application_name: str = "conda-indexd") -> Any:
    """An autocommit connection, or PgCacheError with one line."""
    psycopg = _psycopg()
    try:
        return psycopg.connect(conninfo(url), autocommit=True, connect_timeout=CONNECT_TIMEOUT, application_name=application_name)
    except psycopg.Error as exc:
        raise PgCacheError(f"cannot connect to {safe_url(url)}: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = (primary or str(exc)).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def ensure_schema(conn: Any, url: str, extra: Iterable[str] = ()) -> None:
    """Create what is missing (as conda-index's create_all does) or refuse tables that are not conda-index's."""
    psycopg = _psycopg()
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            rows = conn.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ANY(%s)",
                (list(EXPECTED),),
            ).fetchall()
            found: dict[str, dict[str, str]] = {}
            for table, column, data_type in rows:
                found.setdefault(table, {})[column] = data_type
            for table, columns in found.items():
                wrong = {c: t for c, t in EXPECTED[table].items() if columns.get(c) != t}
                if wrong:
                    have = ", ".join(f"{c} {t}" for c, t in sorted(columns.items()))
                    raise PgCacheError(f"{safe_url(url)}: table {table} is not conda-index's schema (it has {have})")
            for statement in (*_DDL, *extra):
                conn.execute(statement)
    except psycopg.Error as exc:
        raise PgCacheError(f"{safe_url(url)}: {first_line(exc)}") from exc
