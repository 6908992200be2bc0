"""Which channel store and which cache a configuration uses: the one place that knows
the implementations (rattler-index's index_fs/index_s3 only build a store, then call
the same index). Every stage below takes a `Backends`."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from .cache import Caches
from .config import IndexConfig
from .fence import Fence, Fenced, FencedStore
from .localstore import LocalStore
from .lock import ChannelLock, WriterLock
from .sqlitecache import SqliteCaches
from .store import ChannelStore

if TYPE_CHECKING:
    from .s3store import S3Stats


@dataclass(frozen=True)
class Backends:
    packages: ChannelStore  # where the packages are read from
    outputs: ChannelStore  # where repodata is published (--output, else the channel)
    caches: Caches


def open_backends(
    config: IndexConfig, fence: Fence | None = None, application_name: str = "conda-indexd", stats: S3Stats | None = None
) -> Backends:
    """With a `fence` (a daemon in a pair), every output write and cache write is checked
    first. `stats` counts an S3 store's requests (the daemon's metrics)."""
    packages: ChannelStore
    if config.remote or config.output_url is not None:
        from .s3store import S3Store  # boto3: only loaded for s3:// addresses

        packages = S3Store(config.channel_url, stats=stats) if config.channel_url else LocalStore(config.channel)
        if config.output_url:
            outputs: ChannelStore = S3Store(config.output_url, stats=stats)
        elif config.output is not None:
            outputs = LocalStore(config.output)
        else:
            outputs = packages
    else:
        packages, outputs = LocalStore(config.channel), LocalStore(config.output_root)
    if fence is not None:
        if config.remote or config.output_url is not None:
            from .s3store import S3Store

            if isinstance(outputs, S3Store):  # a refused conditional write (412) while still the leader:
                outputs.lease_held = partial(_leading, fence)  # written by a previous leader, not a new one
        outputs = FencedStore(outputs, fence)
    caches: Caches
    if config.db == "postgresql":
        from .channelid import channel_identity
        from .pgcache import DEFAULT_DB_URL, PostgresCaches  # psycopg: the postgresql extra

        caches = PostgresCaches(config.channel, config.db_url or DEFAULT_DB_URL, fence=fence, application_name=application_name,
                                identify=channel_identity(config))  # fmt: skip
    elif config.remote:  # a bucket's caches live in the local state folder (`channel`)
        caches = SqliteCaches(config.channel, folder="")
    else:
        caches = SqliteCaches(config.channel)
    return Backends(packages, outputs, caches)


def _leading(fence: Fence) -> bool:
    try:
        fence.check("a published file changed since this leader last saw it")
    except Fenced:
        return False
    return True


def open_lock(config: IndexConfig, backends: Backends, retry_until: threading.Event | None = None) -> WriterLock:
    """The one-writer lock of the outputs: a flock in a local channel, a lease object
    beside the outputs in a bucket (taken again and again while the store is unreachable,
    until `retry_until` is set: the daemon). With --db postgresql the pair's lease
    (pairlease.py) fences the writers on top of this."""
    if config.output_url or config.remote:
        from .s3store import S3Store

        out = backends.outputs
        if isinstance(out, S3Store):
            from .s3lease import S3Lease

            return S3Lease(out, retry_until=retry_until)
    return ChannelLock(config.channel)
