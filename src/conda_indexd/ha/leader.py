"""Leadership of a channel among daemons sharing one PostgreSQL database: a lease row
with a fencing token (no home-made consensus: PostgreSQL's row locks order everything).

`conda_indexd_lease(channel_id, token, holder, expires_at)`: one row per channel.
- Taking over (a standby, every POLL seconds): allowed when the lease expired (by the
  database's clock) or when no session of the holder is left (it died: kill -9 closes its
  sockets). The standby first ends the old holder's sessions (pg_terminate_backend: a
  frozen leader's open transactions), then `SELECT ... FOR UPDATE` and `token = token + 1`.
- Renewing (the leader's lease thread, every lease/4): `expires_at = now() + lease` where
  the token is still ours and not expired. An expired token is dead for good.
- Stepping down: the renewal fails, the session is lost, the database is unreachable, or
  the local deadline passes (taken when the last renewal was sent, lease * 0.8 later, so
  before the lease can expire in the database).
- Fencing (`Fence`): every publish step checks, in one transaction on the lease session,
  that the token is ours and unexpired (the row FOR KEY SHARE, which a takeover's FOR
  UPDATE waits for) and records the step in `conda_indexd_publish_log(token, leader,
  subdir, step, at)`; every cache write transaction makes the same check (caches/pg/cache.py).

A check proves the lease only as far as the last renewal does: until the time that
renewal was *sent* (the leader's monotonic clock) + lease * 0.8, never from when an answer
arrived. The database's lease runs until the renewal's own `now()` + lease, later than that,
so the leader stops 0.2 * lease before a standby may take over. A check (or a renewal)
whose answer arrives after that point is a lost lease, however good the answer: under a
partition, an answer the database sent before the takeover can arrive seconds after it.
The same bound is asked again right before every rename of an output (`assert_proven`,
which the local store calls) and before every cache COMMIT (caches/pg/cache.py).

What no lease can do with a plain folder: a leader frozen (or descheduled) between the last
`assert_proven` and the rename that follows it, for longer than 0.2 * lease, still does that
one rename when it resumes. The window is one system call long; every later step fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from conda_indexd.caches.pg.schema import PgCacheError, connect, ensure_schema, first_line, safe_url
from conda_indexd.stores.fenced import Fenced
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

DEFAULT_LEASE = 10.0
POLL = 0.5  # a standby's takeover attempts
LOG_DAYS = 7  # publish log rows kept (one per output file written or removed)
APP_PREFIX = "conda-indexd "

DDL = (
    """CREATE TABLE IF NOT EXISTS conda_indexd_lease (channel_id TEXT PRIMARY KEY, token BIGINT NOT NULL,
        holder TEXT, expires_at TIMESTAMPTZ NOT NULL, acquired_at TIMESTAMPTZ)""",
    """CREATE TABLE IF NOT EXISTS conda_indexd_publish_log (id BIGSERIAL PRIMARY KEY, channel_id TEXT NOT NULL,
        token BIGINT NOT NULL, leader TEXT NOT NULL, subdir TEXT, step TEXT NOT NULL,
        at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())""",
    # the status page's activity feed, shared by a pair (one row per publish or refusal, a JSON entry)
    """CREATE TABLE IF NOT EXISTS conda_indexd_activity (id BIGSERIAL PRIMARY KEY, channel_id TEXT NOT NULL,
        member TEXT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(), entry JSONB NOT NULL)""",
)
ACTIVITY_ROWS = 200  # rows of the activity feed read at once


def new_holder() -> str:
    """This process's name in the lease row and its sessions' application_name."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Leadership:
    """One daemon's side of the lease (the `Fence` of its publish steps and cache writes)."""

    def __init__(self, url: str, channel_id: Callable[[], str], *, lease: float = DEFAULT_LEASE, holder: str | None = None):
        self.url = url
        self._channel_id = channel_id
        self.lease = lease
        self.holder = holder or new_holder()
        self.application_name = APP_PREFIX + self.holder
        self.token: int | None = None
        self.deadline = 0.0  # monotonic: step down when passed without a renewal
        self._hold_off = 0.0  # monotonic: no takeover attempt before (after a step-down)
        self._next_prune = 0.0
        self.changes = 0  # times this daemon became leader
        self.connected = False
        self.outage_logged = False  # the current outage was logged
        self.last_error: str | None = None
        self.previous_publish: dict[str, Any] | None = None  # the publish log's last step at the last takeover
        # the lease row as last seen (every takeover attempt, every renewal): holder, token, acquired_at
        self.lease_row: dict[str, Any] | None = None
        self.took_over_at: float | None = None  # wall clock of this daemon's last takeover
        self.changed = threading.Event()  # set on every change of role
        self.on_change: list[Callable[[bool], None]] = []
        self._conn: Any = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- state ----------------------------------------------------------------------------

    @property
    def channel_id(self) -> str:
        return self._channel_id()

    def is_leader(self) -> bool:
        return self.token is not None and time.monotonic() < self.deadline

    @property
    def role(self) -> str:
        return "leader" if self.is_leader() else ("standby" if self.connected else "disconnected")

    def describe(self) -> dict[str, Any]:
        return {"role": self.role, "token": self.token, "holder": self.holder, "lease_seconds": self.lease,
                "database": safe_url(self.url), "error": self.last_error,
                "previous_publish": self.previous_publish, "lease": self.lease_row, "takeovers": self.changes,
                "took_over_at": self.took_over_at}  # fmt: skip

    # --- the session ---------------------------------------------------------------------------

    def _session(self) -> Any:
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self._drop_session()
        if self._conn is None:
            conn = connect(self.url, self.application_name)
            try:
                ensure_schema(conn, self.url, DDL)
                conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(self.lease * 250)}ms",))
                conn.execute(
                    "INSERT INTO conda_indexd_lease (channel_id, token, expires_at) VALUES (%s, 0, '-infinity') ON CONFLICT DO NOTHING",
                    (self.channel_id,),
                )
            except Exception:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop_session(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    # --- acquire, renew, step down -----------------------------------------------------------

    def try_acquire(self) -> bool:
        """One takeover attempt; True when this process is the leader now."""
        with self._lock:
            if self.is_leader():
                return True
            try:
                conn = self._session()
                if not self.connected and self.outage_logged:
                    log.info("database reachable again", database=safe_url(self.url))
                self.connected, self.last_error, self.outage_logged = True, None, False
                if time.monotonic() < self._hold_off:  # just stepped down: a standby goes first
                    return False
                cid = self.channel_id
                holder, expired, holder_alive, seen_token, acquired_at = conn.execute(
                    "SELECT holder, expires_at <= now(), EXISTS (SELECT 1 FROM pg_stat_activity "
                    "WHERE application_name = %s || holder AND pid <> pg_backend_pid()), token, acquired_at "
                    "FROM conda_indexd_lease WHERE channel_id = %s",
                    (APP_PREFIX, cid),
                ).fetchone()
                self._saw_lease(holder, seen_token, acquired_at)
                if not (expired or not holder_alive or holder == self.holder):
                    return False
                if holder and holder != self.holder:  # its frozen transactions must not hold the row
                    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                                 (APP_PREFIX + holder,))  # fmt: skip
                started = time.monotonic()
                with conn.transaction():
                    # FOR UPDATE waits for the old leader's checks in flight (FOR KEY SHARE);
                    # the condition is checked again under the lock
                    conn.execute("SELECT 1 FROM conda_indexd_lease WHERE channel_id = %s FOR UPDATE", (cid,))
                    row = conn.execute(
                        "UPDATE conda_indexd_lease SET token = token + 1, holder = %s, "
                        "expires_at = now() + make_interval(secs => %s), acquired_at = now() "
                        "WHERE channel_id = %s AND holder IS NOT DISTINCT FROM %s AND (holder = %s OR expires_at <= now() "
                        "OR NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = %s || holder "
                        "AND state IS NOT NULL AND pid <> pg_backend_pid())) RETURNING token, acquired_at",
                        (self.holder, self.lease, cid, holder, self.holder, APP_PREFIX),
                    ).fetchone()
                if row is None:
                    return False  # another standby was quicker, or the leader came back
                token, acquired_at = row
                self._saw_lease(self.holder, token, acquired_at)
            except (PgCacheError, Exception) as exc:  # noqa: BLE001 - unreachable, restarted, timed out
                self._lost_session(exc)
                return False
            self.token, self.deadline = int(token), started + self.lease * 0.8
            self.changes += 1
            self.took_over_at = time.time()
            why = "lease expired" if expired else ("previous leader's sessions gone" if holder else "no leader yet")
            self.previous_publish = self._last_publish(conn, cid)
            log.info("took over leadership", token=self.token, previous=holder, reason=why, channel_id=cid,
                     previous_publish=self.previous_publish)  # fmt: skip
            self._changed(True)
            return True

    def _saw_lease(self, holder: str | None, token: int | None, acquired_at: Any) -> None:
        self.lease_row = {"holder": holder, "token": None if token is None else int(token),
                          "acquired_at": acquired_at.isoformat() if acquired_at is not None else None}  # fmt: skip

    # --- the shared activity feed (the status page) -----------------------------------------------

    def share_activity(self, entry: dict[str, Any]) -> None:
        """Store one entry of this leader's activity feed (only informative: errors are ignored)."""
        with self._lock:
            if self.token is None or self._conn is None or self._conn.closed or self._conn.broken:
                return
            with contextlib.suppress(Exception):
                self._conn.execute(
                    "INSERT INTO conda_indexd_activity (channel_id, member, entry) VALUES (%s, %s, %s::jsonb)",
                    (self.channel_id, self.holder, json.dumps(entry)),
                )

    def read_activity(self, after: int) -> list[tuple[int, str, dict[str, Any]]]:
        """(id, member, entry) of the feed's rows after `after` by the other members, oldest
        first, at most ACTIVITY_ROWS (the newest); [] when the database cannot be read."""
        with self._lock:
            try:
                conn = self._session()
                rows = conn.execute(
                    "SELECT id, member, entry FROM conda_indexd_activity WHERE channel_id = %s AND id > %s AND member <> %s ORDER BY id DESC LIMIT %s",
                    (self.channel_id, after, self.holder, ACTIVITY_ROWS),
                ).fetchall()
            except Exception:  # noqa: BLE001 - only informative; the lease thread reports an outage
                return []
        return [(int(i), str(m), e if isinstance(e, dict) else {}) for i, m, e in reversed(rows)]

    def _last_publish(self, conn: Any, cid: str) -> dict[str, Any] | None:
        """The publish log's last step before this takeover: what the old leader can be
        proven to have done last (its later work, if any, is in the cache only; the new
        leader's first run rebuilds every shard from the cache, see daemon/pair.py)."""
        try:
            row = conn.execute(
                "SELECT token, leader, subdir, step, at FROM conda_indexd_publish_log WHERE channel_id = %s AND token < %s ORDER BY id DESC LIMIT 1",
                (cid, self.token),
            ).fetchone()
        except Exception:  # noqa: BLE001 - only informative
            return None
        if row is None:
            return None
        return {"token": row[0], "leader": row[1], "subdir": row[2], "step": row[3], "at": row[4].isoformat()}

    def renew(self) -> bool:
        with self._lock:
            if self.token is None:
                return False
            if time.monotonic() >= self.deadline:
                self.step_down("lease not renewed in time")
                return False
            started = time.monotonic()
            if self._conn is None or self._conn.closed or self._conn.broken:  # a leader never reconnects
                self._lost_session(ConnectionError("lease session closed"))
                return False
            try:
                row = self._conn.execute(
                    "UPDATE conda_indexd_lease SET expires_at = now() + make_interval(secs => %s) "
                    "WHERE channel_id = %s AND token = %s AND holder = %s AND expires_at > now() RETURNING token",
                    (self.lease, self.channel_id, self.token, self.holder),
                ).fetchone()
            except Exception as exc:  # noqa: BLE001
                self._lost_session(exc)
                return False
            if row is None:
                self.step_down("lease taken over or expired")
                return False
            self.deadline = started + self.lease * 0.8
            if self.lease_row is None or self.lease_row.get("holder") != self.holder:
                self._saw_lease(self.holder, self.token, None)
            if started >= self._next_prune:  # the publish log keeps LOG_DAYS of steps
                self._next_prune = started + 3600
                with contextlib.suppress(Exception):
                    self._conn.execute(
                        "DELETE FROM conda_indexd_publish_log WHERE channel_id = %s AND at < now() - make_interval(days => %s)",
                        (self.channel_id, LOG_DAYS),
                    )
                    self._conn.execute(
                        "DELETE FROM conda_indexd_activity WHERE channel_id = %s AND at < now() - make_interval(days => %s)",
                        (self.channel_id, LOG_DAYS),
                    )
            return True

    def _lost_session(self, exc: BaseException) -> None:
        self.last_error = str(exc) if isinstance(exc, PgCacheError) else f"{type(exc).__name__}: {first_line(exc)}"
        self._drop_session()
        if self.connected or self.token is not None:
            log.warning("database session lost", error=self.last_error)
        elif not self.outage_logged:
            log.warning("database not usable; retrying with backoff", database=safe_url(self.url), error=self.last_error)
        self.outage_logged = True
        self.connected = False
        if self.token is not None:
            self.step_down("database session lost")

    def step_down(self, reason: str) -> None:
        with self._lock:
            if self.token is None:
                return
            log.warning("stepped down", token=self.token, reason=reason)
            self.token = None
            self.deadline = 0.0
            self._hold_off = time.monotonic() + self.lease
            self._changed(False)

    def _changed(self, leader: bool) -> None:
        self.changed.set()
        for callback in self.on_change:
            with contextlib.suppress(Exception):
                callback(leader)

    # --- the fence ------------------------------------------------------------------------------

    def check(self, step: str, subdir: str | None = None) -> None:
        with self._lock:
            if self.token is None:
                raise Fenced(f"not the leader ({step})")
            if time.monotonic() >= self.deadline:
                self.step_down("lease not renewed in time")
                raise Fenced(f"lease not renewed in time ({step})")
            token = self.token
            if self._conn is None or self._conn.closed or self._conn.broken:  # a leader never reconnects
                self._lost_session(ConnectionError("lease session closed"))
                raise Fenced(f"database session lost ({step})")
            try:
                conn = self._conn
                with conn.transaction():
                    self._verify(conn, token, step)
                    if "/shards/" not in step:  # shards are content-addressed: checked, not logged
                        conn.execute(
                            "INSERT INTO conda_indexd_publish_log (channel_id, token, leader, subdir, step) VALUES (%s, %s, %s, %s, %s)",
                            (self.channel_id, token, self.holder, subdir, step),
                        )
                # an answer that arrived after the proven time proves nothing (a partition
                # can hold back an answer the database gave before a takeover)
                self._still_proven(step)
            except Fenced as exc:
                self.step_down(str(exc))
                raise
            except Exception as exc:  # noqa: BLE001
                self._lost_session(exc)
                raise Fenced(f"database unreachable ({step})") from exc

    def check_in_transaction(self, conn: Any, step: str) -> None:
        token = self.token
        if token is None or time.monotonic() >= self.deadline:
            raise Fenced(f"not the leader ({step})")
        self._verify(conn, token, step)
        self._still_proven(step)

    def assert_proven(self, step: str) -> None:
        """Raise Fenced unless the lease is proven now (no database round trip): asked
        right before a rename of an output and before a cache COMMIT."""
        if self.token is None:
            raise Fenced(f"not the leader ({step})")
        self._still_proven(step)

    def _still_proven(self, step: str) -> None:
        # no lock here: the lease thread may be stuck in a renewal on a cut connection;
        # it steps down itself once it sees the deadline passed
        if time.monotonic() >= self.deadline:
            raise Fenced(f"lease not proven any more ({step} not done)")

    def _verify(self, conn: Any, token: int, step: str) -> None:
        row = conn.execute(
            "SELECT token, holder, expires_at > now() FROM conda_indexd_lease WHERE channel_id = %s FOR KEY SHARE",
            (self.channel_id,),
        ).fetchone()
        if row is None or row[0] != token or row[1] != self.holder or not row[2]:
            raise Fenced(f"token {token} is stale (the lease has token {row and row[0]}): {step} not done")

    # --- the lease thread -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            if self.token is not None:
                self.renew()
                wait = self.lease / 4
            else:
                self.try_acquire()
                failures = 0 if self.connected else failures + 1
                wait = POLL if self.connected else min(30.0, POLL * 2**failures)  # back off while unreachable
            self._stop.wait(wait)

    def stop(self) -> None:
        """Give the lease up (a clean stop: the standby takes over at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            if self.token is not None and self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.execute(
                        "UPDATE conda_indexd_lease SET expires_at = '-infinity' WHERE channel_id = %s AND token = %s",
                        (self.channel_id, self.token),
                    )
                log.info("leadership released", token=self.token)
                self.token = None
            self._drop_session()
