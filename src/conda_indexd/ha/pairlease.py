"""Who gets a lease: a daemon with `--db postgresql` is always one of a pair (a pair of
one when alone), and `conda-indexd index --db postgresql` takes the same lease for its
run, so it never publishes beside a running leader."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from conda_indexd.caches.pg.schema import PgCacheError
from conda_indexd.config import DEFAULT_DB_URL, Db, IndexConfig
from conda_indexd.ha.channelid import channel_identity
from conda_indexd.ha.leader import DEFAULT_LEASE, Leadership
from conda_indexd.ha.lock import ChannelBusy


def pair_leadership(config: IndexConfig) -> Leadership | None:
    if config.db != Db.POSTGRESQL:
        return None
    return Leadership(config.db_url or DEFAULT_DB_URL, channel_identity(config), lease=config.lease or DEFAULT_LEASE)


@contextlib.contextmanager
def index_lease(config: IndexConfig) -> Iterator[Leadership | None]:
    """The lease for one `index` run (None with sqlite3): ChannelBusy while a leader runs."""
    leadership = pair_leadership(config)
    if leadership is None:
        yield None
        return
    leadership.outage_logged = True  # a failure is the command's one error line, not a retry log line
    if not leadership.try_acquire():
        if not leadership.connected:
            raise PgCacheError(leadership.last_error or "database unreachable")
        raise ChannelBusy(f"{config.location} is being indexed by a conda-indexd leader (see its /status.json)")
    leadership.start()
    try:
        yield leadership
    finally:
        leadership.stop()
