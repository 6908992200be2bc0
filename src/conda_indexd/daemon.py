"""`conda-indexd watch`: file events -> debounced queue -> the shared subdir indexing path.

Threads: watchdog's observer (events into the queue), one worker (takes ready subdirs,
runs `indexer.index_subdir`, updates metrics), the HTTP listener, and the main thread
(signals, periodic rescans, systemd watchdog pings).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import patches, sdnotify, statuspage
from .config import KNOWN_SUBDIRS, IndexConfig, detect_subdirs
from .debounce import COMPLETE_KINDS, DebounceQueue, Pending
from .httpserver import StatusServer, text
from .cache import FileState
from .indexer import RecordMemo, SubdirResult, index_subdir, list_packages, publish_channel
from .lock import ChannelBusy, ChannelLock
from .logs import get_logger
from .metrics import CONTENT_TYPE, Metrics
from .statuspage import SubdirStatus
from .watch import ChannelEventHandler, OverflowHook, make_observer

log = get_logger("conda_indexd.daemon")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8650
EMPTY_CONFIRM_DELAY = 1.5  # seconds before a second listing may confirm an emptied subdir
MAX_RETRY_DELAY = 60.0


@dataclass(frozen=True)
class WatchConfig:
    index: IndexConfig
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    debounce: float = 1.0
    max_delay: float = 10.0
    settle: float = 1.0
    rescan_interval: float = 600.0
    polling: bool = False
    poll_interval: float = 1.0


class Daemon:
    def __init__(self, config: WatchConfig):
        self.config = config
        self.metrics = Metrics()
        self.queue = DebounceQueue(config.debounce, config.max_delay)
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.watched = frozenset(config.index.subdirs) if config.index.subdirs else KNOWN_SUBDIRS
        self.published: dict[str, int] = {}  # records in each subdir's last publish
        self.failures_in_a_row: dict[str, int] = {}
        self.memos: dict[str, RecordMemo] = {}
        self.status: dict[str, SubdirStatus] = {}  # for the status page  # each subdir's serialised records, kept between runs
        self.worker = threading.Thread(target=self._work, name="worker", daemon=True)
        self.handler = ChannelEventHandler(config.index.channel, self.watched, self._on_file, self._on_subdir)
        self.observer = make_observer(config.index.channel, self.handler, config.polling, config.poll_interval)
        self.root_id: tuple[int, int] | None = None
        self.root_missing = False
        self.exit_code = 0
        self.patch_id: tuple[int, int] | None = None
        self.overflow = OverflowHook(lambda: self.rescan("overflow"))
        self.http = StatusServer(
            config.host,
            config.port,
            {"/metrics": self._metrics, "/healthz": self._healthz, "/readyz": self._readyz,
             "/": self._status_html, "/status.json": self._status_json},
        )

    # --- event intake (observer thread) ---------------------------------------------------

    def _on_file(self, subdir: str, name: str, kind: str) -> None:
        self.metrics.events.labels(kind).inc()
        self.queue.add(subdir, name, kind)
        self.metrics.queue_pending.set(self.queue.pending_count())

    def _on_subdir(self, subdir: str) -> None:
        self.metrics.events.labels("subdir").inc()
        self.queue.add_scan(subdir, "new-subdir")

    def rescan(self, reason: str) -> None:
        """Queue a full listing of every subdir (overflow, periodic, SIGHUP)."""
        self.metrics.rescans.labels(reason).inc()
        log.info("rescan", reason=reason)
        for subdir in self._subdirs():
            self.queue.add_scan(subdir, reason)

    def _subdirs(self) -> list[str]:
        return detect_subdirs(self.config.index)

    # --- HTTP routes ------------------------------------------------------------------------

    def healthy(self) -> bool:
        # while the channel folder is gone its observer may have ended; that is waited
        # out (and a new observer started when the folder returns), not a failure
        return self.worker.is_alive() and (self.observer.is_alive() or self.root_missing)

    def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE, self.metrics.exposition()

    def _healthz(self) -> tuple[int, str, bytes]:
        return text(200, "ok\n") if self.healthy() else text(503, "observer or worker is not running\n")

    def _status_doc(self) -> dict:
        now = time.monotonic()
        pending = [
            {"subdir": p.subdir, "files": len(p.names), "full_scan": p.full_scan, "reason": p.scan_reason,
             "waiting_seconds": round(now - p.first_event, 1)}
            for p in sorted(self.queue.pending(), key=lambda p: p.subdir)
        ]  # fmt: skip
        return statuspage.document(str(self.config.index.channel), self.ready.is_set(), dict(self.status), pending)

    def _status_html(self) -> tuple[int, str, bytes]:
        return 200, "text/html; charset=utf-8", statuspage.as_html(self._status_doc())

    def _status_json(self) -> tuple[int, str, bytes]:
        return 200, "application/json", statuspage.as_json(self._status_doc())

    def _readyz(self) -> tuple[int, str, bytes]:
        return text(200, "ready\n") if self.ready.is_set() else text(503, "start-up reconcile in progress\n")

    # --- the worker -------------------------------------------------------------------------

    def _work(self) -> None:
        for subdir in self._subdirs():
            if self.stopping.is_set():
                return
            self._process(Pending(subdir, time.monotonic(), time.monotonic(), full_scan=True, scan_reason="startup"))
        if self.stopping.is_set():
            return
        self.ready.set()
        self.metrics.ready.set(1)
        sdnotify.notify("READY=1\nSTATUS=watching " + str(self.config.index.channel))
        log.info("ready", subdirs=sorted(self.published))
        while not self.stopping.is_set():
            item = self.queue.take(timeout=0.5)
            self.metrics.queue_pending.set(self.queue.pending_count())
            if item is not None:
                self._process(item)

    def _hold(self, item: Pending, listing: list[FileState] | None) -> dict[str, str]:
        """Files still being written: changed within --settle seconds, no close/rename seen."""
        settle = self.config.settle
        if settle <= 0:
            return {}
        folder = self.config.index.subdir_path(item.subdir)
        now = time.time()
        candidates = dict(item.names)
        if listing is not None:
            for f in listing:
                if now - f.mtime < settle and candidates.get(f.path) not in COMPLETE_KINDS:
                    candidates.setdefault(f.path, "modified")
        hold = {}
        for name, kind in candidates.items():
            if kind in COMPLETE_KINDS:
                continue
            try:
                mtime = os.stat(folder / name).st_mtime
            except FileNotFoundError:
                continue
            if now - mtime < settle:
                hold[name] = kind
        return hold

    def _looks_unmounted(self, item: Pending, listing: list[FileState] | None) -> bool:
        """A subdir that had packages and now lists empty waits for a second listing."""
        if item.confirm_empty or not self.published.get(item.subdir):
            return False
        if listing is None and not any(k == "deleted" for k in item.names.values()):
            return False
        return not (listing if listing is not None else list_packages(self.config.index.subdir_path(item.subdir)))

    def _process(self, item: Pending) -> None:
        subdir = item.subdir
        listing = list_packages(self.config.index.subdir_path(subdir)) if item.full_scan else None
        if self._looks_unmounted(item, listing):
            log.warning("subdir lists empty; waiting for a second listing", subdir=subdir)
            self.queue.add_scan(subdir, "empty-check", delay=EMPTY_CONFIRM_DELAY, confirm_empty=True)
            return
        hold = self._hold(item, listing)
        if hold:
            self.queue.retry(subdir, hold, self.config.settle)
            log.debug("upload in progress", subdir=subdir, files=sorted(hold))
        touched = None if item.full_scan else item.names.keys()
        try:
            memo = self.memos.setdefault(subdir, RecordMemo())
            result = index_subdir(
                self.config.index, subdir, touched=touched, hold=hold.keys(), cancel=self.stopping, listing=listing, memo=memo
            )
        except Exception as exc:  # one subdir's trouble never stops the others
            self.memos.pop(subdir, None)  # start the next try from the cache alone
            count = self.failures_in_a_row[subdir] = self.failures_in_a_row.get(subdir, 0) + 1
            delay = min(MAX_RETRY_DELAY, 2.0**count)
            self.metrics.subdir_errors.labels(subdir, type(exc).__name__).inc()
            self.status.setdefault(subdir, SubdirStatus(subdir)).error = f"{type(exc).__name__}: {exc}"
            log.error("subdir failed; will retry", subdir=subdir, retry_in=delay, error=f"{type(exc).__name__}: {exc}")
            self.queue.add_scan(subdir, "retry", delay=delay)
            return
        self.failures_in_a_row.pop(subdir, None)
        self._record(item, result)
        if result.written and self.config.index.channeldata:
            try:  # channel-level files last (§8.2), from every subdir's published repodata
                publish_channel(self.config.index, self._subdirs())
            except Exception as exc:  # noqa: BLE001 - never stops the daemon
                self.metrics.subdir_errors.labels("channel", type(exc).__name__).inc()
                log.error("channel files failed", error=f"{type(exc).__name__}: {exc}")

    def _record(self, item: Pending, result: SubdirResult) -> None:
        m, subdir = self.metrics, result.subdir
        st = self.status.setdefault(subdir, SubdirStatus(subdir))
        st.packages, st.last_duration, st.last_run, st.error = result.packages, result.duration, time.time(), None
        st.skipped = [{"path": f.path, "reason": f.reason, "message": f.message} for f in result.skipped]
        if result.written:
            st.last_publish = st.last_run
        self.published[subdir] = result.packages
        m.packages.labels(subdir).set(result.packages)
        m.skipped.labels(subdir).set(len(result.skipped))
        m.repodata_bytes.labels(subdir).set(result.repodata_bytes)
        m.publish_duration.labels(subdir).observe(result.duration)
        m.packages_indexed.labels(subdir).inc(result.extracted)
        for failure in result.new_failures:
            m.package_errors.labels(subdir, failure.reason).inc()
        m.shards_written.labels(subdir).inc(result.shards_written)
        m.shards_deleted.labels(subdir).inc(len(result.shards.deleted))
        if result.written:
            m.last_publish.labels(subdir).set(time.time())
            if item.scan_reason != "startup":
                m.event_to_publish.observe(time.monotonic() - item.first_event)
            log.info("published", **result.log_fields())

    # --- lifecycle --------------------------------------------------------------------------

    def _install_signals(self) -> None:
        def stop(signum: int, _frame: object) -> None:
            log.info("stopping", signal=signal.Signals(signum).name)
            self.stopping.set()
            self.queue.wake()

        def hup(_signum: int, _frame: object) -> None:
            sdnotify.notify("RELOADING=1")
            self.rescan("signal")
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

    def _check_root(self, lock: ChannelLock) -> None:
        """The channel folder removed (or a share unmounted) and later recreated: inotify
        watches die with the old folder, so watch the new one, take its lock, rescan."""
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
        self.observer.start()
        self.rescan("replaced")

    def _patch_identity(self) -> tuple[int, int] | None:
        index = self.config.index
        return patches.identity(patches.generator_path(index.channel, index.patch_generator))

    def _check_patches(self) -> None:
        """A changed patch generator (or gen_patch.py appearing) republishes every subdir."""
        identity = self._patch_identity()
        if identity != self.patch_id:
            self.patch_id = identity
            log.info("patch generator changed; republishing every subdir")
            self.rescan("patches")

    def run(self) -> int:
        channel: Path = self.config.index.channel
        with ChannelLock(channel) as lock:
            self.root_id = self._root_identity()
            self.patch_id = self._patch_identity()
            self._install_signals()
            self.http.start()
            host, port = self.http.address
            log.info("listening", host=host, port=port, channel=str(channel))
            self.overflow.install()
            self.observer.start()
            self.metrics.rescans.labels("startup").inc()
            self.worker.start()
            ping = sdnotify.watchdog_interval()
            next_rescan = time.monotonic() + self.config.rescan_interval
            next_ping = time.monotonic()
            try:
                while not self.stopping.is_set():
                    now = time.monotonic()
                    self._check_root(lock)
                    self._check_patches()
                    if now >= next_rescan:
                        self.rescan("periodic")
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
                self.worker.join(timeout=30)
                self.observer.join(timeout=5)
                self.overflow.remove()
                self.http.stop()
                log.info("stopped")
        return self.exit_code
