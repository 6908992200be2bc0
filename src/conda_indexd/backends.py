"""Which channel store and which cache a configuration uses: the one place that knows
the implementations (rattler-index's index_fs/index_s3 only build a store, then call
the same index). Every stage below takes a `Backends`."""

from __future__ import annotations

from dataclasses import dataclass

from .cache import Caches
from .config import IndexConfig
from .localstore import LocalStore
from .sqlitecache import SqliteCaches
from .store import ChannelStore


@dataclass(frozen=True)
class Backends:
    packages: ChannelStore  # where the packages are read from
    outputs: ChannelStore  # where repodata is published (--output, else the channel)
    caches: Caches


def open_backends(config: IndexConfig) -> Backends:
    return Backends(LocalStore(config.channel), LocalStore(config.output_root), SqliteCaches(config.channel))
