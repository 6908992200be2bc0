"""`conda-indexd watch`: file events -> debounced queue -> the worker (worker.py).

The `Daemon` is the supervisor around the worker: watchdog's observer (events into the
queue), the HTTP listener, and the main thread's duties (signals, periodic rescans, the
channel folder and patch generator checks, systemd watchdog pings). The worker runs in
its own thread.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from watchdog.observers.api import BaseObserver

from . import patches, sdnotify, statuspage
from .backends import open_backends, open_lock
from .config import KNOWN_SUBDIRS, IndexConfig
from .debounce import DebounceQueue, EventKind, ScanReason
from .httpserver import PostRoute, StatusServer, text
from .ignored import ignored_folders
from .localstore import LocalStore
from .lock import ChannelBusy, NoLock, WriterLock
from .logs import get_logger
from .metrics import CONTENT_TYPE, Metrics
from .pair import Pair
from .pairlease import pair_leadership
from .s3store import parse_s3_url
from .s3watch import S3EventsEndpoint, S3Poller
from .store import StoreError
from .watch import ChannelEventHandler, OverflowHook, SymlinkedSubdirs, make_observer
from .worker import Worker

if TYPE_CHECKING:
    from .pkgswatch import PkgsWatch

log = get_logger("conda_indexd.daemon")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8650


@dataclass(frozen=True)
class WatchConfig:
    index: IndexConfig
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    debounce: float = 1.0
    max_delay: float = 10.0
    settle: float = 1.0
    upload_timeout: float = 600.0  # an upload never closed is read after this long unchanged
    rescan_interval: float = 600.0
    polling: bool = False
    poll_interval: float = 1.0
    events_token: str | None = None  # POST /s3-events needs it (s3:// channels)


class Daemon:
    def __init__(self, config: WatchConfig):
        self.config = config
        self.metrics = Metrics()
        self.queue = DebounceQueue(config.debounce, config.max_delay)
        self.stopping = threading.Event()
        self.remote = config.index.remote  # a bucket: no file system events, no uploads in progress
        self.leadership = pair_leadership(config.index)  # None unless --db postgresql
        fence, app = (self.leadership, self.leadership.application_name) if self.leadership else (None, "conda-indexd")
        self.backends = open_backends(config.index, fence, app, stats=self.metrics)
        self.worker = Worker(
            config.index,
            self.backends,
            self.queue,
            self.metrics,
            settle=0.0 if self.remote else config.settle,
            upload_timeout=config.upload_timeout,
            close_events=not config.polling,
            stopping=self.stopping,
        )
        if self.leadership is not None:
            self.worker.pair = Pair(self.leadership, self.metrics)
        self.worker.on_failure = self._clean_uploads
        self.worker_thread = threading.Thread(target=self.worker.run, name="worker", daemon=True)
        self.watched = frozenset(config.index.subdirs) if config.index.subdirs else KNOWN_SUBDIRS
        outputs = getattr(self.worker.backends.outputs, "inner", self.worker.backends.outputs)  # under a FencedStore
        heal = isinstance(outputs, LocalStore) and config.index.output_root == config.index.channel and not self.remote
        window = 2 * config.poll_interval + 2 if config.polling else 2.0  # inotify: our writes are renames we recognise
        self.handler = ChannelEventHandler(
            config.index.channel,
            self.watched,
            self._on_file,
            self._on_subdir,
            on_output=self._on_output if heal else None,
            own_change=lambda key: isinstance(outputs, LocalStore)
            and outputs.changed_by_us(key, window, removals_only=not config.polling),
        )
        self.observer: BaseObserver | S3Poller
        post_routes: dict[str, PostRoute] = {}
        if self.remote:
            interval = config.poll_interval if config.polling else None
            self.observer = S3Poller(self.backends.packages, self.worker.subdirs, self._on_file, self._on_subdir, interval, self.stopping)
            bucket, prefix = parse_s3_url(config.index.location)
            events = S3EventsEndpoint(config.events_token, bucket, prefix, self.watched, self._on_file, self.metrics.s3_event)
            post_routes["/s3-events"] = events.handle
        else:
            self.observer = make_observer(config.index.channel, self.handler, config.polling, config.poll_interval)
        self.symlinks = SymlinkedSubdirs(self.handler)
        self.root_id: tuple[int, int] | None = None
        self.root_missing = False
        self.exit_code = 0
        self.patch_id: tuple[int, int] | None = None
        self.overflow = OverflowHook(self._on_overflow)
        self.pkgs: PkgsWatch | None = None  # --from-pkgs-dir: the package caches this channel is made from
        if config.index.pkgs_dirs:
            from .pkgswatch import PkgsWatch

            self.pkgs = PkgsWatch(config.index, self.queue, self.metrics, debounce=config.debounce, max_delay=config.max_delay,
                                  settle=config.settle, polling=config.polling, poll_interval=config.poll_interval)  # fmt: skip
            # in the worker's thread, before its start-up publish: the main loop keeps
            # pinging systemd's watchdog while a big cache is read
            self.worker.on_start = self.pkgs.start
        # bound here, so a port in use is one line before anything else starts
        self.http = StatusServer(
            config.host,
            config.port,
            {"/metrics": self._metrics, "/healthz": self._healthz, "/readyz": self._readyz,
             "/": self._status_html, "/status.json": self._status_json},
            post_routes=post_routes,
        )  # fmt: skip

    def _clean_uploads(self, quiet: bool = True) -> None:
        """Abort our unfinished multipart uploads in a bucket (at start; after a failed run)."""
        if self.config.index.remote or self.config.index.output_url:
            from .s3upload import clean_uploads

            clean_uploads(self.backends.outputs, self.config.index.stale_upload_age, count=self.metrics.s3_multipart_aborted.inc, quiet=quiet)

    # --- event intake (observer thread) ---------------------------------------------------

    def _on_file(self, subdir: str, name: str, kind: EventKind) -> None:
        self.metrics.events.labels(kind).inc()
        self.queue.add(subdir, name, kind)
        self.metrics.queue_pending.set(self.queue.pending_count())

    def _on_output(self, subdir: str, file: str) -> None:
        self.metrics.events.labels("output").inc()
        self.queue.add_output(subdir, file)

    def _on_overflow(self) -> None:
        """Inotify dropped events: closes may be among them, so no file is held as an
        open upload on the strength of events seen before, and everything is listed."""
        self.queue.distrust_events()
        self.worker.uploads.events_lost()
        self.rescan(ScanReason.OVERFLOW)

    def _on_subdir(self, subdir: str) -> None:
        self.metrics.events.labels("subdir").inc()
        self.queue.add_scan(subdir, ScanReason.NEW_SUBDIR)

    def rescan(self, reason: ScanReason) -> None:
        """Queue a full listing of every subdir (overflow, periodic, SIGHUP)."""
        self.metrics.rescans.labels(reason).inc()
        log.info("rescan", reason=reason)
        if self.pkgs is not None:
            self.pkgs.request()
        try:
            subdirs = self.worker.subdirs()
        except StoreError as exc:  # the next rescan (or the worker's retries) will do
            log.warning("rescan skipped: the channel store cannot be listed", error=str(exc))
            return
        for subdir in subdirs:
            self.queue.add_scan(subdir, reason)

    # --- HTTP routes ------------------------------------------------------------------------

    def healthy(self) -> bool:
        # while the channel folder is gone its observer may have ended; that is waited
        # out (and a new observer started when the folder returns), not a failure
        # a bucket's daemon waiting for its endpoint before the worker starts is alive too
        waiting = self.remote and self.worker_thread.ident is None and not self.stopping.is_set()
        return waiting or (self.worker_thread.is_alive() and (self.observer.is_alive() or self.root_missing))

    @property
    def ready(self) -> threading.Event:
        return self.worker.ready

    def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE, self.metrics.exposition()

    def _healthz(self) -> tuple[int, str, bytes]:
        return text(200, "ok\n") if self.healthy() else text(503, "observer or worker is not running\n")

    def _status_doc(self) -> dict[str, Any]:
        now = time.monotonic()
        pending = [
            {"subdir": p.subdir, "files": len(p.names), "full_scan": p.full_scan, "reason": p.scan_reason,
             "waiting_seconds": round(now - p.first_event, 1)}
            for p in sorted(self.queue.pending(), key=lambda p: p.subdir)
        ]  # fmt: skip
        seen = {s: st.status for s, st in list(self.worker.states.items()) if st.status.last_run or st.status.error}
        ignored = [] if self.remote else ignored_folders(self.config.index.channel)  # a folder made later shows too
        role = self.leadership.describe() if self.leadership else None
        sources = self.pkgs.status() if self.pkgs is not None else None
        return statuspage.document(self.config.index.location, self.ready.is_set(), seen, pending, ignored=ignored, role=role,
                                   sources=sources)  # fmt: skip

    def _status_html(self) -> tuple[int, str, bytes]:
        return 200, "text/html; charset=utf-8", statuspage.as_html(self._status_doc())

    def _status_json(self) -> tuple[int, str, bytes]:
        return 200, "application/json", statuspage.as_json(self._status_doc())

    def _readyz(self) -> tuple[int, str, bytes]:
        if self.leadership is not None:
            role = self.leadership.role
            return text(200, f"ready ({role})\n") if self.ready.is_set() else text(503, f"not ready ({role})\n")
        return text(200, "ready\n") if self.ready.is_set() else text(503, "start-up reconcile in progress\n")

    # --- lifecycle --------------------------------------------------------------------------

    def _install_signals(self) -> None:
        def stop(signum: int, _frame: object) -> None:
            log.info("stopping", signal=signal.Signals(signum).name)
            self.stopping.set()
            self.queue.wake()

        def hup(_signum: int, _frame: object) -> None:
            sdnotify.notify("RELOADING=1")
            self.rescan(ScanReason.SIGNAL)
            sdnotify.notify("READY=1")

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    def _root_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.config.index.channel)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _check_root(self, lock: WriterLock) -> None:
        """The channel folder removed (or a share unmounted) and later recreated: inotify
        watches die with the old folder, so watch the new one, take its lock, rescan.
        A bucket (the channel, or --output s3://): the writer lease taken over by another
        indexer stops this one."""
        if lock.lost.is_set() and not self.stopping.is_set():
            log.error("writer lease lost to another indexer; stopping", channel=self.config.index.location)
            self.exit_code = 3
            self.stopping.set()
            self.queue.wake()
            return
        if self.remote:
            return
        identity = self._root_identity()
        if identity is None:
            if not self.root_missing:
                log.warning("channel folder is gone; waiting for it to come back", channel=str(self.config.index.channel))
                self.root_missing = True
            return
        if identity == self.root_id:
            self.root_missing = False
            return
        log.warning("channel folder was replaced; watching the new one", channel=str(self.config.index.channel))
        self.root_missing = False
        self.root_id = identity
        lock.release()
        try:
            lock.acquire()
        except ChannelBusy as exc:
            log.error("channel taken over by another indexer; stopping", error=str(exc))
            self.exit_code = 3
            self.stopping.set()
            self.queue.wake()
            return
        old = self.observer
        old.stop()
        old.join(timeout=5)
        self.observer = make_observer(self.config.index.channel, self.handler, self.config.polling, self.config.poll_interval)
        self.symlinks = SymlinkedSubdirs(self.handler)
        self.observer.start()
        self.rescan(ScanReason.REPLACED)

    def _patch_identity(self) -> tuple[int, int] | None:
        index = self.config.index
        return patches.identity(patches.generator_path(index.channel, index.patch_generator))

    def _check_patches(self) -> None:
        """A changed patch generator (or gen_patch.py appearing) republishes every subdir."""
        identity = self._patch_identity()
        if identity != self.patch_id:
            self.patch_id = identity
            log.info("patch generator changed; republishing every subdir")
            self.rescan(ScanReason.PATCHES)

    def run(self) -> int:
        self._install_signals()  # before the lock: a bucket's lease may wait for its endpoint
        if self.remote:
            self.http.start()  # /readyz says 503 while the endpoint is waited for
        lock = NoLock(self.config.index.channel) if self.leadership else open_lock(self.config.index, self.backends, self.stopping)
        with lock:
            if not self.leadership and not self.stopping.is_set():  # a bucket: what a killed run left half uploaded
                self._clean_uploads(quiet=False)
            self.root_id = self._root_identity()
            self.patch_id = self._patch_identity()
            if not self.remote:
                self.http.start()
            host, port = self.http.address
            log.info("listening", host=host, port=port, channel=self.config.index.location)
            self.overflow.install()
            self.observer.start()
            if isinstance(self.observer, BaseObserver):
                self.symlinks.refresh(self.observer)
            self.metrics.rescans.labels(ScanReason.STARTUP).inc()
            self.worker_thread.start()
            ping = sdnotify.watchdog_interval()
            next_rescan = time.monotonic() + self.config.rescan_interval
            next_ping = time.monotonic()
            try:
                while not self.stopping.is_set():
                    now = time.monotonic()
                    self._check_root(lock)
                    self._check_patches()
                    if isinstance(self.observer, BaseObserver) and not self.root_missing:
                        for subdir in self.symlinks.refresh(self.observer):
                            self.queue.add_scan(subdir, ScanReason.NEW_SUBDIR)  # events before the watch were missed
                    if now >= next_rescan:
                        self.rescan(ScanReason.PERIODIC)
                        next_rescan = now + self.config.rescan_interval
                    if ping and now >= next_ping and self.healthy():
                        sdnotify.notify("WATCHDOG=1")
                        next_ping = now + ping
                    if not self.healthy() and self.ready.is_set():
                        log.error("observer or worker died")
                    self.stopping.wait(min(1.0, ping or 1.0))
            finally:
                sdnotify.notify("STOPPING=1")
                self.stopping.set()
                self.queue.wake()
                self.observer.stop()
                if self.pkgs is not None:
                    self.pkgs.stop()
                self.worker_thread.join(timeout=30)
                self.observer.join(timeout=5)
                self.overflow.remove()
                self.http.stop()
                log.info("stopped")
        return self.exit_code
