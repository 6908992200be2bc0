"""Which channel store and which cache a configuration uses: the one place that knows
the implementations (rattler-index's index_fs/index_s3 only build a store, then call
the same index). Every stage below takes a `Backends`."""

from __future__ import annotations

from dataclasses import dataclass

from .cache import Caches
from .config import IndexConfig
from .fence import Fence, FencedStore
from .localstore import LocalStore
from .sqlitecache import SqliteCaches
from .store import ChannelStore


@dataclass(frozen=True)
class Backends:
    packages: ChannelStore  # where the packages are read from
    outputs: ChannelStore  # where repodata is published (--output, else the channel)
    caches: Caches


def open_backends(config: IndexConfig, fence: Fence | None = None, application_name: str = "conda-indexd") -> Backends:
    """With a `fence` (a daemon in a pair), every output write and cache write is checked first."""
    outputs: ChannelStore = LocalStore(config.output_root)
    if fence is not None:
        outputs = FencedStore(outputs, fence)
    caches: Caches
    if config.db == "postgresql":
        from .pgcache import DEFAULT_DB_URL, PostgresCaches  # psycopg: the postgresql extra

        caches = PostgresCaches(config.channel, config.db_url or DEFAULT_DB_URL, fence=fence, application_name=application_name)
    else:
        caches = SqliteCaches(config.channel)
    return Backends(LocalStore(config.channel), outputs, caches)
