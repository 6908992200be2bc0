"""`conda-indexd watch`: file events -> debounced queue -> the worker (daemon/worker.py).

The `Daemon` is the supervisor around the worker: watchdog's observer (events into the
queue), the HTTP listener, and the main thread's duties (signals, periodic rescans, the
channel folder and patch generator checks, systemd watchdog pings). The worker runs in
its own thread.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from conda_indexd.backends import clean_uploads, open_backends, open_lock
from conda_indexd.config import KNOWN_SUBDIRS, WatchConfig
from conda_indexd.daemon import status
from conda_indexd.daemon.channels import channel_kind
from conda_indexd.daemon.http import statuspage
from conda_indexd.daemon.http.server import StatusServer, text
from conda_indexd.daemon.intake.folder import OverflowHook
from conda_indexd.daemon.metrics import CONTENT_TYPE, Metrics
from conda_indexd.daemon.pair import Pair
from conda_indexd.daemon.queue import DebounceQueue, EventKind, ScanReason
from conda_indexd.daemon.sdnotify import Notifier
from conda_indexd.daemon.worker import Worker
from conda_indexd.ha.lock import WriterLock
from conda_indexd.ha.pairlease import pair_leadership
from conda_indexd.pipeline import patchsource
from conda_indexd.stores.base import StoreError
from conda_indexd.util.logs import get_logger

if TYPE_CHECKING:
    from conda_indexd.daemon.intake.pkgs import PkgsWatch

log = get_logger(__name__)


class Daemon:
    def __init__(self, config: WatchConfig):
        self.config = config
        self.metrics = Metrics()
        self.queue = DebounceQueue(config.debounce, config.max_delay)
        self.stopping = threading.Event()
        self.leadership = pair_leadership(config.index)  # None unless --db postgresql
        fence, app = (self.leadership, self.leadership.application_name) if self.leadership else (None, "conda-indexd")
        self.backends = open_backends(config.index, fence, app, stats=self.metrics)
        self.systemd = Notifier(config.notify_socket, config.watchdog_usec, config.watchdog_pid)
        self.watched = frozenset(config.index.subdirs) if config.index.subdirs else KNOWN_SUBDIRS
        self.exit_code = 0
        self.channel = channel_kind(self)  # a folder or a bucket: what differs lives there
        self.worker = Worker(
            config.index,
            self.backends,
            self.queue,
            self.metrics,
            settle=self.channel.settle,
            upload_timeout=config.upload_timeout,
            close_events=not config.polling,
            stopping=self.stopping,
        )
        self.worker.notify = self.systemd.notify
        if self.leadership is not None:
            self.worker.pair = Pair(self.leadership, self.metrics)
        self.worker.on_failure = self._clean_uploads
        self.worker_thread = threading.Thread(target=self.worker.run, name="worker", daemon=True)
        self.patch_id: tuple[int, int] | None = None
        self.overflow = OverflowHook(self._on_overflow)
        self.pkgs: PkgsWatch | None = None  # --from-pkgs-dir: the package caches this channel is made from
        if config.index.pkgs_dirs:
            from conda_indexd.daemon.intake.pkgs import PkgsWatch

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
            post_routes=self.channel.post_routes,
            prefix_routes={"/status/": lambda rest, query: status.subdir_page(self, rest, query)},
        )  # fmt: skip

    def _clean_uploads(self, quiet: bool = True) -> None:
        """Abort our unfinished multipart uploads in a bucket (at start; after a failed run)."""
        if self.config.index.remote or self.config.index.output_url:
            clean_uploads(self.backends.outputs, self.config.index.stale_upload_age, count=self.metrics.s3_multipart_aborted.inc, quiet=quiet)

    # --- event intake (observer thread) ---------------------------------------------------

    def on_file(self, subdir: str, name: str, kind: EventKind) -> None:
        self.metrics.events.labels(kind).inc()
        self.queue.add(subdir, name, kind)
        self.metrics.queue_pending.set(self.queue.pending_count())

    def on_output(self, subdir: str, file: str) -> None:
        self.metrics.events.labels("output").inc()
        self.queue.add_output(subdir, file)

    def _on_overflow(self) -> None:
        """Inotify dropped events: closes may be among them, so no file is held as an
        open upload on the strength of events seen before, and everything is listed."""
        self.queue.distrust_events()
        self.worker.uploads.events_lost()
        self.rescan(ScanReason.OVERFLOW)

    def on_subdir(self, subdir: str) -> None:
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
        waiting = self.channel.waiting(self.worker_thread.ident is not None)
        return waiting or (self.worker_thread.is_alive() and (self.channel.observer.is_alive() or self.channel.root_missing))

    @property
    def ready(self) -> threading.Event:
        return self.worker.ready

    def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE, self.metrics.exposition()

    def _healthz(self) -> tuple[int, str, bytes]:
        return text(200, "ok\n") if self.healthy() else text(503, "observer or worker is not running\n")

    def _status_doc(self) -> dict[str, Any]:
        return status.document(self)

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
            self.systemd.notify("RELOADING=1")
            self.rescan(ScanReason.SIGNAL)
            self.systemd.notify("READY=1")

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    def _check_channel(self, lock: WriterLock) -> None:
        """A writer lease (a bucket's, the channel or --output s3://) taken over by another
        indexer stops this one; then the kind of channel's own checks."""
        if lock.lost.is_set() and not self.stopping.is_set():
            log.error("writer lease lost to another indexer; stopping", channel=self.config.index.location)
            self.stop(3)
            return
        self.channel.check(lock)

    def stop(self, exit_code: int) -> None:
        """Stop the daemon with this exit status (the channel taken over by another indexer)."""
        self.exit_code = exit_code
        self.stopping.set()
        self.queue.wake()

    def _patch_identity(self) -> tuple[int, int] | None:
        index = self.config.index
        return patchsource.identity(patchsource.generator_path(index.channel, index.patch_generator))

    def _check_patches(self) -> None:
        """A changed patch generator (or gen_patch.py appearing) republishes every subdir."""
        identity = self._patch_identity()
        if identity != self.patch_id:
            self.patch_id = identity
            log.info("patch generator changed; republishing every subdir")
            self.rescan(ScanReason.PATCHES)

    def run(self) -> int:
        self._install_signals()  # before the lock: a bucket's lease may wait for its endpoint
        if self.channel.http_before_lock:
            self.http.start()  # /readyz says 503 while the endpoint is waited for
        lock = open_lock(self.config.index, self.backends, self.stopping, paired=self.leadership is not None)
        with lock:
            if not self.leadership and not self.stopping.is_set():  # a bucket: what a killed run left half uploaded
                self._clean_uploads(quiet=False)
            self.channel.locked()
            self.patch_id = self._patch_identity()
            if not self.channel.http_before_lock:
                self.http.start()
            host, port = self.http.address
            log.info("listening", host=host, port=port, channel=self.config.index.location)
            self.overflow.install()
            self.channel.observer.start()
            self.channel.new_subdirs()
            self.metrics.rescans.labels(ScanReason.STARTUP).inc()
            self.worker_thread.start()
            ping = self.systemd.watchdog_interval()
            next_rescan = time.monotonic() + self.config.rescan_interval
            next_ping = time.monotonic()
            try:
                while not self.stopping.is_set():
                    now = time.monotonic()
                    self._check_channel(lock)
                    self._check_patches()
                    for subdir in self.channel.new_subdirs():
                        self.queue.add_scan(subdir, ScanReason.NEW_SUBDIR)  # events before the watch were missed
                    if now >= next_rescan:
                        self.rescan(ScanReason.PERIODIC)
                        next_rescan = now + self.config.rescan_interval
                    if ping and now >= next_ping and self.healthy():
                        self.systemd.notify("WATCHDOG=1")
                        next_ping = now + ping
                    if not self.healthy() and self.ready.is_set():
                        log.error("observer or worker died")
                    self.stopping.wait(min(1.0, ping or 1.0))
            finally:
                self.systemd.notify("STOPPING=1")
                self.stopping.set()
                self.queue.wake()
                self.channel.observer.stop()
                if self.pkgs is not None:
                    self.pkgs.stop()
                self.worker_thread.join(timeout=30)
                self.channel.observer.join(timeout=5)
                self.overflow.remove()
                self.http.stop()
                log.info("stopped")
        return self.exit_code
