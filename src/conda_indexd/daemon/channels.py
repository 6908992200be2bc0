"""One object per kind of channel the daemon watches, owning what differs between them:
how changes come in, the upload-settle and heal rules, which folders it reports as
ignored, when the HTTP listener starts, and what it checks while it runs.

- `FolderChannel`: watchdog's observer on the channel folder (or polling, for NFS);
  uploads settle (`--settle`); published files changed from outside are healed when the
  outputs are the channel folder itself; the folder's identity is watched (removed,
  unmounted, replaced: watch the new one, take its lock again, rescan).
- `BucketChannel`: no file system, so S3 event notifications (`POST /s3-events`) and a
  poller; an object is whole once it is listed (no settle); the lease may wait for the
  endpoint, so the listener starts first. (A lease taken over by another indexer stops
  the daemon whatever the kind: --output s3:// has a lease too.)

`channel_kind` is the one place that chooses (the store, the lock or lease and the
caches were chosen by backends.py). The Daemon asks the object; it never tests a store's
type or whether the channel is remote.
"""

from __future__ import annotations

import os
import threading
from typing import Protocol

from watchdog.observers.api import BaseObserver

from conda_indexd.backends import recent_writes
from conda_indexd.config import WatchConfig
from conda_indexd.daemon.http.server import PostRoute
from conda_indexd.daemon.intake.folder import ChannelEventHandler, SymlinkedSubdirs, make_observer
from conda_indexd.daemon.intake.s3 import S3EventsEndpoint, S3Poller
from conda_indexd.daemon.metrics import Metrics
from conda_indexd.daemon.queue import EventKind, ScanReason
from conda_indexd.daemon.worker import Worker
from conda_indexd.ha.lock import ChannelBusy, WriterLock
from conda_indexd.pipeline.ignored import ignored_folders
from conda_indexd.pipeline.seams import Backends
from conda_indexd.stores.s3.objects import parse_s3_url
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)


class Daemon(Protocol):
    """What a kind of channel uses of the daemon (supervisor.Daemon)."""

    config: WatchConfig
    backends: Backends
    metrics: Metrics
    stopping: threading.Event
    watched: frozenset[str]
    worker: Worker

    def on_file(self, subdir: str, name: str, kind: EventKind) -> None: ...
    def on_subdir(self, subdir: str) -> None: ...
    def on_output(self, subdir: str, file: str) -> None: ...
    def rescan(self, reason: ScanReason) -> None: ...
    def stop(self, exit_code: int) -> None: ...


class ChannelKind(Protocol):
    @property
    def observer(self) -> BaseObserver | S3Poller:
        """The change intake: started, stopped and joined by the daemon."""

    @property
    def post_routes(self) -> dict[str, PostRoute]:
        """HTTP POST routes the intake needs."""

    @property
    def settle(self) -> float:
        """Seconds a changed package must be left alone before it is read."""

    @property
    def http_before_lock(self) -> bool:
        """Start the listener before the lock (a lease may wait for its endpoint)."""

    @property
    def root_missing(self) -> bool:
        """The channel's root is gone for now (waited out, not a failure)."""

    def locked(self) -> None:
        """The lock is held: remember what the checks compare with."""

    def check(self, lock: WriterLock) -> None:
        """Run from the main loop about once a second."""

    def new_subdirs(self) -> list[str]:
        """Subdirs that became watchable since the last call (their events were missed)."""

    def ignored(self) -> list[dict[str, str]]:
        """Folders named like a platform conda does not know (the status page)."""

    def waiting(self, worker_started: bool) -> bool:
        """Alive though the worker has not started: waiting for the store."""

    def bucket_address(self) -> str | None:
        """The bucket's s3:// address (the status page's bucket section); None for a folder."""


def channel_kind(daemon: Daemon) -> ChannelKind:
    return BucketChannel(daemon) if daemon.config.index.remote else FolderChannel(daemon)


class FolderChannel:
    http_before_lock = False

    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        config = daemon.config
        self.settle = config.settle
        own_writes = recent_writes(daemon.backends.outputs)  # None: the outputs are not a folder
        heal = own_writes is not None and config.index.output_root == config.index.channel
        window = 2 * config.poll_interval + 2 if config.polling else 2.0  # inotify: our writes are renames we recognise
        self.handler = ChannelEventHandler(
            config.index.channel,
            daemon.watched,
            daemon.on_file,
            daemon.on_subdir,
            on_output=daemon.on_output if heal else None,
            own_change=lambda key: own_writes is not None and own_writes(key, window, removals_only=not config.polling),
        )
        self.observer: BaseObserver = make_observer(config.index.channel, self.handler, config.polling, config.poll_interval)
        self.post_routes: dict[str, PostRoute] = {}
        self.symlinks = SymlinkedSubdirs(self.handler)
        self.root_id: tuple[int, int] | None = None
        self.root_missing = False

    def _root_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.daemon.config.index.channel)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def locked(self) -> None:
        self.root_id = self._root_identity()

    def check(self, lock: WriterLock) -> None:
        """The channel folder removed (or a share unmounted) and later recreated: inotify
        watches die with the old folder, so watch the new one, take its lock, rescan."""
        daemon, channel = self.daemon, self.daemon.config.index.channel
        identity = self._root_identity()
        if identity is None:
            if not self.root_missing:
                log.warning("channel folder is gone; waiting for it to come back", channel=str(channel))
                self.root_missing = True
            return
        if identity == self.root_id:
            self.root_missing = False
            return
        log.warning("channel folder was replaced; watching the new one", channel=str(channel))
        self.root_missing = False
        self.root_id = identity
        lock.release()
        try:
            lock.acquire()
        except ChannelBusy as exc:
            log.error("channel taken over by another indexer; stopping", error=str(exc))
            daemon.stop(3)
            return
        old = self.observer
        old.stop()
        old.join(timeout=5)
        config = daemon.config
        self.observer = make_observer(channel, self.handler, config.polling, config.poll_interval)
        self.symlinks = SymlinkedSubdirs(self.handler)
        self.observer.start()
        daemon.rescan(ScanReason.REPLACED)

    def new_subdirs(self) -> list[str]:
        if self.root_missing:
            return []
        return self.symlinks.refresh(self.observer)

    def ignored(self) -> list[dict[str, str]]:
        return ignored_folders(self.daemon.config.index.channel)  # a folder made later shows too

    def waiting(self, worker_started: bool) -> bool:
        return False

    def bucket_address(self) -> str | None:
        return None


class BucketChannel:
    settle = 0.0  # an object is whole once it is listed: no uploads in progress
    http_before_lock = True  # /readyz says 503 while the endpoint is waited for
    root_missing = False

    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        config = daemon.config
        interval = config.poll_interval if config.polling else None
        self.observer: S3Poller = S3Poller(
            daemon.backends.packages, lambda: daemon.worker.subdirs(), daemon.on_file, daemon.on_subdir, interval, daemon.stopping
        )
        bucket, prefix = parse_s3_url(config.index.location)
        events = S3EventsEndpoint(config.events_token, bucket, prefix, daemon.watched, daemon.on_file, daemon.metrics.s3_event)
        self.post_routes: dict[str, PostRoute] = {"/s3-events": events.handle}

    def locked(self) -> None:
        pass

    def check(self, lock: WriterLock) -> None:
        """Nothing of its own: its lease is checked by the daemon for every kind."""

    def new_subdirs(self) -> list[str]:
        return []

    def ignored(self) -> list[dict[str, str]]:
        return []

    def waiting(self, worker_started: bool) -> bool:
        # a bucket's daemon waiting for its endpoint before the worker starts is alive too
        return not worker_started and not self.daemon.stopping.is_set()

    def bucket_address(self) -> str | None:
        return self.daemon.config.index.location
