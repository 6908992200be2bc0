"""conda-index 0.13's PostgreSQL cache (`--db postgresql --db-url URL`): the `Caches` seam.

conda-index's schema, as its SQLAlchemy model creates it: `about`, `recipe`,
`run_exports`, `post_install` (path, <table> JSONB), `icon` (path, icon_png BYTEA),
`index_json` (path, index_json JSONB, name and sha256 generated from it) and `stat`
(stage, path, mtime INTEGER, size INTEGER, sha256, md5, last_modified, etag; key
(stage, path)). One database holds many channels: every path is
`<channel_id>/<subdir>/<filename>`, the channel id being `{"channel_id": "<16 hex>"}` in
`<channel>/.cache/cache.json` (made by whichever indexer comes first).

As with cache.db: the store's change identity (inode+ctime locally) is kept in `etag` of
`fs` and `indexed` rows (conda-index leaves it empty; a row without one is trusted once,
then given one); `failed` rows (ours) keep the reason in `etag`, the message in
`last_modified` and the identity in `md5`; only files whose `indexed` row matches the
`fs` row are published. conda-index compares mtime and size only.
mtime is an INTEGER column in conda-index's model: a float mtime is rounded as
PostgreSQL rounds the numeric conda-index's psycopg2 sends (half away from zero).

Ours, beside conda-index's tables: `conda_indexd_state` (the shard upkeep's state, per
subdir: in the database, so a standby that takes over has it) and, with a `Fence`, every
write transaction first takes the leadership row FOR SHARE and checks the token
(leader.py), so a deposed leader cannot write a row after a new leader took over.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .cache import CacheError, Failure, FileState, MetadataRejected, PublishedKey, RecordRow, ShardKey
from .fence import Fence, Fenced, NoFence

try:
    import psycopg
except ImportError:  # pragma: no cover - the postgresql extra
    psycopg = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .archive import PackageMetadata

CHANNEL_ID_PATTERN = r"[a-z0-9_][a-z0-9_.-]*"  # conda-index's (CEP-26 path component)
DEFAULT_DB_URL = "postgresql:///conda_index"  # conda-index's default
CONNECT_TIMEOUT = 5

_JSON_TABLES = ("about", "recipe", "run_exports", "post_install")
# table -> {column: information_schema data_type} that must be there (conda-index's model)
EXPECTED: dict[str, dict[str, str]] = {
    **{t: {"path": "text", t: "jsonb"} for t in _JSON_TABLES},
    "icon": {"path": "text", "icon_png": "bytea"},
    "index_json": {"path": "text", "index_json": "jsonb", "name": "text", "sha256": "text"},
    "stat": {"stage": "text", "path": "text", "mtime": "integer", "size": "integer", "sha256": "text",
             "md5": "text", "last_modified": "text", "etag": "text"},
}  # fmt: skip
_DDL = (
    *(f"CREATE TABLE IF NOT EXISTS {t} (path TEXT NOT NULL PRIMARY KEY, {t} JSONB)" for t in _JSON_TABLES),
    "CREATE TABLE IF NOT EXISTS icon (path TEXT NOT NULL PRIMARY KEY, icon_png BYTEA)",
    """CREATE TABLE IF NOT EXISTS index_json (path TEXT NOT NULL PRIMARY KEY, index_json JSONB,
        name TEXT GENERATED ALWAYS AS (jsonb_extract_path_text(index_json, 'name')) STORED,
        sha256 TEXT GENERATED ALWAYS AS (jsonb_extract_path_text(index_json, 'sha256')) STORED)""",
    """CREATE TABLE IF NOT EXISTS stat (stage TEXT NOT NULL, path TEXT NOT NULL, mtime INTEGER, size INTEGER,
        sha256 TEXT, md5 TEXT, last_modified TEXT, etag TEXT, PRIMARY KEY (stage, path))""",
    "CREATE TABLE IF NOT EXISTS conda_indexd_state (path TEXT PRIMARY KEY, data BYTEA NOT NULL)",
)
_SCHEMA_LOCK = 0x636F6E64  # pg_advisory_xact_lock key while creating tables ("cond")


def pg_mtime(mtime: float) -> int:
    """What conda-index's INTEGER column holds for a float mtime."""
    return int(Decimal(repr(float(mtime))).to_integral_value(ROUND_HALF_UP))


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
    if psycopg is None:
        raise PgCacheError("--db postgresql needs psycopg: pip install 'conda-indexd[postgresql]'")
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
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            rows = conn.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = ANY(%s)",
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


_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(method: _F) -> _F:
    """A lost connection or a server error: CacheError with one line (the run fails, is retried)."""

    @functools.wraps(method)
    def wrapper(self: PgCache, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except psycopg.Error as exc:
            raise PgCacheError(f"{safe_url(self.url)}: {first_line(exc)}") from exc

    return wrapper  # type: ignore[return-value]


class PgCache:
    """One subdir of one channel in the shared database (the `SubdirCache` protocol)."""

    def __init__(self, caches: PostgresCaches, subdir: str):
        self.caches = caches
        self.url = caches.url
        self.conn = caches.connection()
        self.prefix = f"{caches.channel_id}/{subdir}/"
        self._like = self.prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        self._depth = 0

    def close(self) -> None:
        pass  # the connection is the Caches' (one per daemon), kept between runs

    def __enter__(self) -> PgCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _p(self, fn: str) -> str:
        return self.prefix + fn

    def _fn(self, path: str) -> str:
        return path[len(self.prefix) :]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Outermost: BEGIN, the fence check (row lock FOR SHARE until COMMIT), COMMIT.
        Nested: a savepoint, so one rejected package does not abort the batch."""
        try:
            with self.conn.transaction():
                if self._depth == 0:
                    self.caches.fence.check_in_transaction(self.conn, "cache write")
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
        except psycopg.Error as exc:
            raise PgCacheError(f"{safe_url(self.url)}: {first_line(exc)}") from exc

    def _rows(self, query: str, params: Iterable[Any] = ()) -> list[Any]:
        try:
            return list(self.conn.execute(query, tuple(params)).fetchall())
        except psycopg.Error as exc:
            raise PgCacheError(f"{safe_url(self.url)}: {first_line(exc)}") from exc

    # --- fs stage -------------------------------------------------------------------

    def replace_fs_state(self, files: Iterable[FileState]) -> None:
        new = {f.path: (pg_mtime(f.mtime), f.size, f.identity) for f in files}
        old = {p: (f.mtime, f.size, f.identity) for p, f in self.fs_state().items()}
        gone = old.keys() - new.keys()
        changed = [(p, *v) for p, v in new.items() if old.get(p) != v]
        if gone or changed:
            self._write_fs(changed, gone)

    def update_fs_state(self, present: Iterable[FileState], gone: Iterable[str]) -> None:
        self._write_fs([(f.path, pg_mtime(f.mtime), f.size, f.identity) for f in present], list(gone))

    @_guarded
    def _write_fs(self, present: Iterable[tuple[str, int, int, str]], gone: Iterable[str]) -> None:
        rows = [(self._p(p), m, s, ident or None) for p, m, s, ident in present]
        with self.transaction(), self.conn.cursor() as cur:
            cur.execute("DELETE FROM stat WHERE stage = 'fs' AND path = ANY(%s)", ([self._p(p) for p in gone],))
            cur.executemany(
                "INSERT INTO stat (stage, path, mtime, size, etag) VALUES ('fs', %s, %s, %s, %s) ON CONFLICT (stage, path) "
                "DO UPDATE SET mtime = excluded.mtime, size = excluded.size, etag = excluded.etag",
                rows,
            )
            # rows conda-index wrote have no identity: trusted once (same mtime and size), then given one
            cur.executemany(
                "UPDATE stat SET etag = %s WHERE stage = 'indexed' AND path = %s AND etag IS NULL AND mtime = %s AND size = %s",
                [(ident, p, m, s) for p, m, s, ident in rows if ident],
            )

    def fs_state(self) -> dict[str, FileState]:
        rows = self._rows("SELECT path, mtime, size, etag FROM stat WHERE stage = 'fs' AND path LIKE %s", (self._like,))
        return {self._fn(p): FileState(self._fn(p), m, s, e or "") for p, m, s, e in rows}

    def _limit(self, query: str, params: tuple[Any, ...], paths: Iterable[str] | None) -> tuple[str, tuple[Any, ...]]:
        if paths is None:
            return query, params
        return query + " AND fs.path = ANY(%s)", (*params, [self._p(p) for p in paths])

    def changed_packages(self, paths: Iterable[str] | None = None) -> list[FileState]:
        query, params = self._limit(
            """SELECT fs.path, fs.mtime, fs.size, coalesce(fs.etag, '') FROM stat AS fs
            LEFT JOIN stat AS ix ON ix.stage = 'indexed' AND ix.path = fs.path
            LEFT JOIN stat AS bad ON bad.stage = 'failed' AND bad.path = fs.path
            WHERE fs.stage = 'fs' AND fs.path LIKE %s
              AND (ix.path IS NULL OR ix.mtime IS DISTINCT FROM fs.mtime OR ix.size IS DISTINCT FROM fs.size
                   OR ix.etag IS DISTINCT FROM fs.etag)
              AND (bad.path IS NULL OR bad.mtime IS DISTINCT FROM fs.mtime OR bad.size IS DISTINCT FROM fs.size
                   OR bad.md5 IS DISTINCT FROM fs.etag)""",
            (self._like,),
            paths,
        )
        return [FileState(self._fn(p), m, s, e) for p, m, s, e in self._rows(query + ' ORDER BY fs.path COLLATE "C"', params)]

    # --- writes after extraction ---------------------------------------------------------

    def store(self, meta: PackageMetadata, state: FileState) -> None:
        path, index = self._p(state.path), meta.index_json
        try:
            with self.transaction(), self.conn.cursor() as cur:
                for table, value in (("about", meta.about), ("recipe", meta.recipe), ("run_exports", meta.run_exports),
                                     ("post_install", meta.post_install)):  # fmt: skip
                    if value is None:
                        cur.execute(f"DELETE FROM {table} WHERE path = %s", (path,))
                    else:
                        cur.execute(f"INSERT INTO {table} (path, {table}) VALUES (%s, %s::jsonb) "
                                    f"ON CONFLICT (path) DO UPDATE SET {table} = excluded.{table}", (path, value))  # fmt: skip
                if meta.icon is None:
                    cur.execute("DELETE FROM icon WHERE path = %s", (path,))
                else:
                    cur.execute("INSERT INTO icon (path, icon_png) VALUES (%s, %s) "
                                "ON CONFLICT (path) DO UPDATE SET icon_png = excluded.icon_png", (path, meta.icon))  # fmt: skip
                cur.execute("INSERT INTO index_json (path, index_json) VALUES (%s, %s::jsonb) "
                            "ON CONFLICT (path) DO UPDATE SET index_json = excluded.index_json", (path, json.dumps(index)))  # fmt: skip
                cur.execute(
                    "INSERT INTO stat (stage, path, mtime, size, sha256, md5, etag) VALUES ('indexed', %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (stage, path) DO UPDATE SET mtime = excluded.mtime, size = excluded.size, "
                    "sha256 = excluded.sha256, md5 = excluded.md5, etag = excluded.etag",
                    (path, pg_mtime(state.mtime), state.size, index["sha256"], index["md5"], state.identity or None),
                )
                cur.execute("DELETE FROM stat WHERE stage = 'failed' AND path = %s", (path,))
        except PgCacheError as exc:
            if isinstance(exc.__cause__, psycopg.DataError):  # bad JSON, \u0000, out of range
                raise MetadataRejected(f"metadata rejected by PostgreSQL ({exc})") from exc
            raise

    @_guarded
    def store_failure(self, state: FileState, reason: str, message: str) -> None:
        path = self._p(state.path)
        with self.transaction(), self.conn.cursor() as cur:
            for table in (*_JSON_TABLES, "icon", "index_json"):
                cur.execute(f"DELETE FROM {table} WHERE path = %s", (path,))
            cur.execute("DELETE FROM stat WHERE stage = 'indexed' AND path = %s", (path,))
            cur.execute(
                "INSERT INTO stat (stage, path, mtime, size, etag, last_modified, md5) VALUES ('failed', %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (stage, path) DO UPDATE SET mtime = excluded.mtime, size = excluded.size, "
                "etag = excluded.etag, last_modified = excluded.last_modified, md5 = excluded.md5",
                (path, pg_mtime(state.mtime), state.size, reason, message, state.identity or None),
            )

    # --- reads for the outputs -------------------------------------------------------------

    _PUBLISHED = """ FROM stat AS fs
        JOIN stat AS ix ON ix.stage = 'indexed' AND ix.path = fs.path AND ix.mtime = fs.mtime AND ix.size = fs.size
             AND ix.etag IS NOT DISTINCT FROM fs.etag
        JOIN index_json ON index_json.path = fs.path """

    def shard_keys(self) -> Iterator[ShardKey]:
        rows = self._rows(
            "SELECT index_json.name, fs.path, index_json.sha256" + self._PUBLISHED
            + "WHERE fs.stage = 'fs' AND fs.path LIKE %s ORDER BY index_json.name COLLATE \"C\", fs.path COLLATE \"C\"",
            (self._like,),
        )  # fmt: skip
        return (ShardKey(name, self._fn(p), sha) for name, p, sha in rows)

    def shard_rows(self) -> Iterator[tuple[str, str, str, str | None]]:
        rows = self._rows(
            "SELECT index_json.name, fs.path, index_json.index_json::text, run_exports.run_exports::text"
            + self._PUBLISHED + "LEFT JOIN run_exports ON run_exports.path = fs.path "
            "WHERE fs.stage = 'fs' AND fs.path LIKE %s ORDER BY index_json.name COLLATE \"C\", fs.path COLLATE \"C\"",
            (self._like,),
        )  # fmt: skip
        return ((name, self._fn(p), text, re_) for name, p, text, re_ in rows)

    def published_keys(self, paths: Iterable[str] | None = None) -> Iterator[PublishedKey]:
        query, params = self._limit(
            """SELECT fs.path, ix.sha256 FROM stat AS fs
            JOIN stat AS ix ON ix.stage = 'indexed' AND ix.path = fs.path AND ix.mtime = fs.mtime AND ix.size = fs.size
                 AND ix.etag IS NOT DISTINCT FROM fs.etag
            WHERE fs.stage = 'fs' AND fs.path LIKE %s""",
            (self._like,),
            paths,
        )
        return (PublishedKey(self._fn(p), sha) for p, sha in self._rows(query, params))

    def records_for(self, paths: Iterable[str]) -> Iterator[RecordRow]:
        rows = self._rows(
            "SELECT index_json.path, index_json.index_json::text, index_json.name, run_exports.run_exports::text "
            "FROM index_json LEFT JOIN run_exports USING (path) WHERE index_json.path = ANY(%s)",
            ([self._p(p) for p in paths],),
        )
        return (RecordRow(self._fn(p), text, name, re_) for p, text, name, re_ in rows)

    def metadata_texts(self, path: str) -> tuple[str | None, ...]:
        rows = self._rows(
            """SELECT index_json::text, about::text, post_install::text, recipe::text, run_exports::text FROM index_json
            LEFT JOIN about USING (path) LEFT JOIN post_install USING (path)
            LEFT JOIN recipe USING (path) LEFT JOIN run_exports USING (path) WHERE index_json.path = %s""",
            (self._p(path),),
        )
        return tuple(rows[0]) if rows else (None, None, None, None, None)

    def published_digests(self) -> dict[str, str | None]:
        return dict(self.published_keys())

    def run_exports(self) -> Iterator[tuple[str, str | None]]:
        rows = self._rows(
            "SELECT stat.path, run_exports.run_exports::text FROM stat LEFT JOIN run_exports USING (path) "
            "WHERE stat.stage = 'fs' AND stat.path LIKE %s ORDER BY stat.path COLLATE \"C\"",
            (self._like,),
        )
        return ((self._fn(p), text) for p, text in rows)

    def failures(self) -> list[Failure]:
        rows = self._rows(
            """SELECT fs.path, bad.etag, bad.last_modified FROM stat AS fs
            JOIN stat AS bad ON bad.stage = 'failed' AND bad.path = fs.path AND bad.mtime = fs.mtime AND bad.size = fs.size
                 AND bad.md5 IS NOT DISTINCT FROM fs.etag
            WHERE fs.stage = 'fs' AND fs.path LIKE %s ORDER BY fs.path COLLATE "C" """,
            (self._like,),
        )
        return [Failure(self._fn(p), reason or "unreadable", message or "") for p, reason, message in rows]

    # --- the shard upkeep's state, in our own table (shared with a standby) -----------------

    def load_state(self, name: str) -> bytes | None:
        rows = self._rows("SELECT data FROM conda_indexd_state WHERE path = %s", (self._p(name),))
        return bytes(rows[0][0]) if rows else None

    @_guarded
    def save_state(self, name: str, data: bytes) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT INTO conda_indexd_state (path, data) VALUES (%s, %s) "
                "ON CONFLICT (path) DO UPDATE SET data = excluded.data WHERE conda_indexd_state.data <> excluded.data",
                (self._p(name), data),
            )


class PostgresCaches:
    """Every subdir of one channel in one PostgreSQL database (the `Caches` seam). Holds
    one connection, made on first use and again after it broke (a restarted server)."""

    def __init__(self, channel: Path, url: str, *, fence: Fence | None = None, application_name: str = "conda-indexd"):
        self.channel = channel
        self.url = url
        self.location = safe_url(url)
        self.fence: Fence = fence or NoFence()
        self.application_name = application_name
        self._conn: Any = None
        self._channel_id: str | None = None

    @property
    def channel_id(self) -> str:
        if self._channel_id is None:
            self._channel_id = channel_id(self.channel)
        return self._channel_id

    def connection(self) -> Any:
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if self._conn is None:
            conn = connect(self.url, self.application_name)
            try:
                ensure_schema(conn, self.url)
            except PgCacheError:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def open(self, subdir: str) -> PgCache:
        self.channel_id  # noqa: B018 - cache.json checked before connecting
        return PgCache(self, subdir)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


__all__ = ["PostgresCaches", "PgCache", "PgCacheError", "Fenced", "channel_id", "pg_mtime", "DEFAULT_DB_URL"]
