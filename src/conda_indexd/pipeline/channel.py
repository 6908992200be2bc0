"""The one channel driver, shared by `conda-indexd index` and the daemon's worker:
which subdirs the channel has, one subdir's run (pipeline/indexer.py), and the
channel-level files, written last (docs/spec §8.2).

`reconcile` walks every subdir once, in order, through the caller's own step for one
subdir: the command line adds its progress line and reports a failed patch source per
subdir; the worker adds its upload holds, retries and metrics. Both then publish the
channel files through `publish_channel`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from conda_indexd.config import IndexConfig, detect_subdirs
from conda_indexd.pipeline.channelfiles import publish_channel
from conda_indexd.pipeline.indexer import SubdirResult, index_subdir
from conda_indexd.pipeline.seams import Backends

T = TypeVar("T")


class ChannelDriver:
    def __init__(self, config: IndexConfig, backends: Backends):
        self.config = config
        self.backends = backends

    def subdirs(self) -> list[str]:
        """The subdirs to index: noarch and the known platforms the store lists (or --subdir)."""
        return detect_subdirs(self.config, self.backends.packages.subdirs())

    def run_subdir(self, subdir: str, **options: Any) -> SubdirResult:
        """One subdir's run, with this channel's backends (options: see index_subdir)."""
        return index_subdir(self.config, subdir, backends=self.backends, **options)

    def reconcile(self, step: Callable[[str], T | None], subdirs: Iterable[str], stopping: threading.Event | None = None) -> list[T] | None:
        """`step` for each subdir in turn (a full listing each); what the steps returned
        (None left out), or None when `stopping` was set on the way."""
        done: list[T] = []
        for subdir in subdirs:
            if stopping is not None and stopping.is_set():
                return None
            out = step(subdir)
            if out is not None:
                done.append(out)
        return None if stopping is not None and stopping.is_set() else done

    def publish_channel(self, subdirs: Iterable[str]) -> list[str]:
        """channeldata.json, rss.xml and the index.html pages (with --channeldata), after
        every subdir; the files written."""
        return publish_channel(self.config, self.backends, subdirs)
