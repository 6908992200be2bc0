"""What every stage of a run is handed: where packages are read from, where outputs are
published, and the caches. Built by the composition root (backends.open_backends); the
pipeline never chooses an implementation itself."""

from __future__ import annotations

from dataclasses import dataclass

from conda_indexd.caches.base import Caches
from conda_indexd.stores.base import ChannelStore


@dataclass(frozen=True)
class Backends:
    packages: ChannelStore  # where the packages are read from
    outputs: ChannelStore  # where repodata is published (--output, else the channel)
    caches: Caches
