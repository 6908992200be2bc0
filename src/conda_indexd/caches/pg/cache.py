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
PostgreSQL rounds the numeric conda-index's psycopg2 sends (half away from zero), and the
`fs` rows keep the exact one as text in `last_modified` (empty in conda-index's local
rows), so the cache hands back the mtime the store listed.

Ours, beside conda-index's tables: `conda_indexd_state` (the shard upkeep's state, per
subdir: in the database, so a standby that takes over has it) and, with a `Fence`, every
write transaction first takes the leadership row FOR KEY SHARE and checks the token
(ha/leader.py), so a deposed leader cannot write a row after a new leader took over.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterable, Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from conda_indexd.caches.base import Failure, FileState, MetadataRejected, PublishedKey, RecordRow, ShardKey, TimestampGap
from conda_indexd.caches.pg.schema import DEFAULT_DB_URL, JSON_TABLES, PgCacheError, channel_id, connect, ensure_schema, first_line, safe_url
from conda_indexd.stores.fenced import Fence, Fenced, NoFence

try:
    import psycopg
except ImportError:  # pragma: no cover - the postgresql extra
    psycopg = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from conda_indexd.archive.reader import PackageMetadata


def pg_mtime(mtime: float) -> int:
    """What conda-index's INTEGER column holds for a float mtime."""
    return int(Decimal(repr(float(mtime))).to_integral_value(ROUND_HALF_UP))


def _exact(mtime: int | None, text: str | None) -> float:
    """The listed mtime of an fs row: ours keep it exactly, conda-index's only rounded."""
    if text:
        try:
            return float(text)
        except ValueError:
            pass
    return float(mtime or 0)


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
        """Outermost: BEGIN, the fence check (row lock FOR KEY SHARE until COMMIT), COMMIT.
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
                if self._depth == 0:  # no COMMIT once the lease is not proven (raising rolls back)
                    self.caches.fence.assert_proven("cache commit")
        except psycopg.Error as exc:
            raise PgCacheError(f"{safe_url(self.url)}: {first_line(exc)}") from exc

    def _rows(self, query: str, params: Iterable[Any] = ()) -> list[Any]:
        try:
            return list(self.conn.execute(query, tuple(params)).fetchall())
        except psycopg.Error as exc:
            raise PgCacheError(f"{safe_url(self.url)}: {first_line(exc)}") from exc

    # --- fs stage -------------------------------------------------------------------

    def replace_fs_state(self, files: Iterable[FileState]) -> set[str]:
        new = {f.path: (f.mtime, f.size, f.identity) for f in files}
        old = {p: (f.mtime, f.size, f.identity) for p, f in self.fs_state().items()}
        gone = old.keys() - new.keys()
        changed = [(p, *v) for p, v in new.items() if old.get(p) != v]
        if gone or changed:
            self._write_fs(changed, gone)
        return {*gone, *(row[0] for row in changed)}

    def update_fs_state(self, present: Iterable[FileState], gone: Iterable[str]) -> None:
        self._write_fs([(f.path, f.mtime, f.size, f.identity) for f in present], list(gone))

    @_guarded
    def _write_fs(self, present: Iterable[tuple[str, float, int, str]], gone: Iterable[str]) -> None:
        rows = [(self._p(p), pg_mtime(m), s, ident or None, repr(float(m))) for p, m, s, ident in present]
        with self.transaction(), self.conn.cursor() as cur:
            cur.execute("DELETE FROM stat WHERE stage = 'fs' AND path = ANY(%s)", ([self._p(p) for p in gone],))
            cur.executemany(
                "INSERT INTO stat (stage, path, mtime, size, etag, last_modified) VALUES ('fs', %s, %s, %s, %s, %s) "
                "ON CONFLICT (stage, path) DO UPDATE SET mtime = excluded.mtime, size = excluded.size, "
                "etag = excluded.etag, last_modified = excluded.last_modified",
                rows,
            )
            # rows conda-index wrote have no identity: trusted once (same mtime and size), then given one
            cur.executemany(
                "UPDATE stat SET etag = %s WHERE stage = 'indexed' AND path = %s AND etag IS NULL AND mtime = %s AND size = %s",
                [(ident, p, m, s) for p, m, s, ident, _ in rows if ident],
            )

    def fs_state(self) -> dict[str, FileState]:
        rows = self._rows("SELECT path, mtime, size, etag, last_modified FROM stat WHERE stage = 'fs' AND path LIKE %s", (self._like,))
        return {self._fn(p): FileState(self._fn(p), _exact(m, lm), s, e or "") for p, m, s, e, lm in rows}

    def _limit(self, query: str, params: tuple[Any, ...], paths: Iterable[str] | None) -> tuple[str, tuple[Any, ...]]:
        if paths is None:
            return query, params
        return query + " AND fs.path = ANY(%s)", (*params, [self._p(p) for p in paths])

    def changed_packages(self, paths: Iterable[str] | None = None) -> list[FileState]:
        query, params = self._limit(
            """SELECT fs.path, fs.mtime, fs.size, coalesce(fs.etag, ''), fs.last_modified FROM stat AS fs
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
        rows = self._rows(query + ' ORDER BY fs.path COLLATE "C"', params)
        return [FileState(self._fn(p), _exact(m, lm), s, e) for p, m, s, e, lm in rows]

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
            for table in (*JSON_TABLES, "icon", "index_json"):
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
            "SELECT index_json.path, index_json.index_json::text, index_json.name, run_exports.run_exports::text, t.indexed_timestamp "
            "FROM index_json LEFT JOIN run_exports USING (path) "
            "LEFT JOIN conda_indexd_indexed_timestamp AS t ON t.path = index_json.path AND t.sha256 = index_json.sha256 "
            "WHERE index_json.path = ANY(%s)",
            ([self._p(p) for p in paths],),
        )
        return (RecordRow(self._fn(p), text, name, re_, ts) for p, text, name, re_, ts in rows)

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

    # --- CEP-47 indexed_timestamp, in our own tables (shared with a standby) -----------------

    def timestamps_seeded(self) -> bool:
        return bool(self._rows("SELECT 1 FROM conda_indexd_timestamps_seeded WHERE prefix = %s", (self.prefix,)))

    def missing_timestamps(self, paths: Iterable[str] | None = None) -> list[TimestampGap]:
        query, params = self._limit(
            "SELECT fs.path, index_json.sha256, index_json.index_json -> 'timestamp', fs.mtime, fs.last_modified"
            + self._PUBLISHED
            + "LEFT JOIN conda_indexd_indexed_timestamp AS t ON t.path = fs.path AND t.sha256 = index_json.sha256 "
            "WHERE fs.stage = 'fs' AND fs.path LIKE %s AND t.path IS NULL AND index_json.sha256 IS NOT NULL",
            (self._like,),
            paths,
        )
        return [TimestampGap(self._fn(p), sha, build, _exact(m, lm)) for p, sha, build, m, lm in self._rows(query, params)]

    @_guarded
    def add_timestamps(self, rows: Iterable[tuple[str, str, int, int | None]], *, seeded_at: int | None = None) -> None:
        values = [(self._p(p), sha, ts, build) for p, sha, ts, build in rows]
        with self.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO conda_indexd_indexed_timestamp (path, sha256, indexed_timestamp, build_timestamp) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                values,
            )
            if seeded_at is not None:
                cur.execute("INSERT INTO conda_indexd_timestamps_seeded (prefix, seeded_at) VALUES (%s, %s) ON CONFLICT DO NOTHING", (self.prefix, seeded_at))

    def flagged_timestamps(self, skew_ms: int) -> list[tuple[str, str, int, int]]:
        rows = self._rows(
            "SELECT fs.path, t.sha256, t.build_timestamp, t.indexed_timestamp"
            + self._PUBLISHED
            + "JOIN conda_indexd_indexed_timestamp AS t ON t.path = fs.path AND t.sha256 = index_json.sha256 "
            "WHERE fs.stage = 'fs' AND fs.path LIKE %s AND t.build_timestamp > t.indexed_timestamp + %s ORDER BY fs.path COLLATE \"C\"",
            (self._like, skew_ms),
        )
        return [(self._fn(p), sha, build, ts) for p, sha, build, ts in rows]

    @_guarded
    def forget_failures(self, reason: str) -> set[str]:
        with self.transaction(), self.conn.cursor() as cur:
            cur.execute("DELETE FROM stat WHERE stage = 'failed' AND etag = %s AND path LIKE %s RETURNING path", (reason, self._like))
            return {self._fn(row[0]) for row in cur.fetchall()}

    # --- the shard upkeep's state, in our own table (shared with a standby) -----------------

    def pieces(self) -> None:
        """Record pieces are kept only beside sqlite caches (caches/sqlite/pieces.py)."""
        return None

    def memo_folder(self) -> None:
        return None

    def fork_reader(self) -> None:
        """Records are read in this process (a psycopg connection does not survive a fork)."""
        return None

    def generation(self) -> None:
        return None

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

    @_guarded
    def append_state(self, name: str, data: bytes, size: int) -> bool:
        with self.transaction():
            cur = self.conn.execute(
                "UPDATE conda_indexd_state SET data = data || %s WHERE path = %s AND length(data) = %s",
                (data, self._p(name), size),
            )
            return cur.rowcount == 1


class PostgresCaches:
    """Every subdir of one channel in one PostgreSQL database (the `Caches` seam). Holds
    one connection, made on first use and again after it broke (a restarted server)."""

    def __init__(self, channel: Path, url: str, *, fence: Fence | None = None, application_name: str = "conda-indexd",
                 identify: Callable[[], str] | None = None):  # fmt: skip
        """`identify`: where the channel id comes from (ha/channelid.py: a bucket's), else
        `channel`'s .cache/cache.json."""
        self.channel = channel
        self._identify = identify or (lambda: channel_id(channel))
        self.url = url
        self.location = safe_url(url)
        self.fence: Fence = fence or NoFence()
        self.application_name = application_name
        self._conn: Any = None
        self._channel_id: str | None = None

    @property
    def channel_id(self) -> str:
        if self._channel_id is None:
            self._channel_id = self._identify()
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
