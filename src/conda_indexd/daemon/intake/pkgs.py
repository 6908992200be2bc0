"""`conda-indexd watch --from-pkgs-dir DIR ...`: keep the placed packages in line with
the package caches while the daemon runs.

- One watchdog observer watches each pkgs dir's top level (not recursively: extracted
  folders hold whole package trees, and a recursive watch would put an inotify watch on
  every folder of every package and an event storm on every extraction). A new or
  removed tarball or folder wakes the sync; partial downloads, locks and temporary
  names do not.
- The extracted folders' `info/index.json` and `info/repodata_record.json` are checked
  by stat every poll interval (two stats per folder): conda writes repodata_record.json
  after extracting, and that changes the served record's origin metadata.
- A sync runs once the pkgs dirs are quiet for QUIET seconds (at most `debounce`; never
  later than `max_delay` after the first event): the channel's queue debounces the
  placed files again, so the two waits add up to about `debounce` + QUIET. It
  places and removes files through the channel (the channel's own observer and the
  queue then publish them), and queues a republish of every subdir whose overlay
  changed. A tarball modified within `settle` seconds is held and looked at again.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import Gauge
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from conda_indexd.config import IndexConfig
from conda_indexd.daemon.metrics import Metrics
from conda_indexd.daemon.queue import DebounceQueue, EventKind, ScanReason
from conda_indexd.pkgs.dirs import ignored
from conda_indexd.pkgs.place import PkgsSources, SyncResult
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

Signature = dict[str, tuple[int, int] | None]
QUIET = 0.25  # conda renames each finished download into place: one event, no burst to wait out


class _Wake(FileSystemEventHandler):
    """Wakes the sync; remembers the files known to be complete (renamed into place, as
    conda does with its .partial downloads, or closed after writing), which need not
    wait out --settle."""

    def __init__(self, wake: threading.Event, touched: list[float], complete: set[str]):
        self.wake = wake
        self.touched = touched
        self.complete = complete

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write", "attrib"):
            return
        paths = [os.fsdecode(p) for p in (event.src_path, getattr(event, "dest_path", "")) if p]
        if not any(not ignored(os.path.basename(p)) for p in paths):
            return
        if event.event_type in ("moved", "closed"):
            self.complete.add(paths[-1])
        elif event.event_type in ("created", "modified"):
            self.complete.discard(paths[-1])
        self.touched.append(time.monotonic())
        self.wake.set()


def _signature(folders: list[Path]) -> Signature:
    sig: Signature = {}
    for folder in folders:
        for name in ("index.json", "repodata_record.json"):
            path = folder / "info" / name
            try:
                st = os.stat(path)
            except OSError:
                sig[str(path)] = None
            else:
                sig[str(path)] = (st.st_mtime_ns, st.st_size)
    return sig


def sync_once(config: IndexConfig) -> SyncResult:
    """`conda-indexd index --from-pkgs-dir`: one sync (nothing held back: an archive
    still being written fails to read and is skipped with its reason)."""
    sources = PkgsSources(list(config.pkgs_dirs), config.channel, origin_metadata=config.origin_overlay, settle=0.0, threads=config.threads)
    result = sources.sync()
    _log_result(result, always=True)
    return result


def _log_result(result: SyncResult, always: bool = False) -> None:
    if not (always or result.placed or result.removed or result.overlays_changed):
        return
    log.info(
        "pkgs dirs synced",
        served=result.served,
        placed=len(result.placed),
        linked=result.linked,
        copied=result.copied,
        removed=len(result.removed),
        held=len(result.held),
        failed=result.failed,
        overlays_changed=sorted(result.overlays_changed),
        skipped_by_reason=result.skipped_by_reason(),
        dirs=[
            {"dir": r.path, "writable": r.writable, "taken": r.taken, "duplicates_dropped": len(r.duplicates), "skipped": len(r.skipped)}
            for r in result.reports
        ],  # fmt: skip
        **result.counts(),
    )


class PkgsWatch:
    def __init__(self, index: IndexConfig, queue: DebounceQueue, metrics: Metrics, *, debounce: float, max_delay: float,
                 settle: float, polling: bool = False, poll_interval: float = 1.0):  # fmt: skip
        self.sources = PkgsSources(list(index.pkgs_dirs), index.channel, origin_metadata=index.origin_overlay, settle=settle,
                                   threads=index.threads)  # fmt: skip
        self.queue = queue
        self.debounce = min(debounce, QUIET)
        self.max_delay = max_delay
        self.settle = settle
        self.poll_interval = min(poll_interval, 1.0)
        self.polling = polling
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.touched: list[float] = []
        self.complete: set[str] = set()
        self.observers: list[BaseObserver] = []
        self.thread = threading.Thread(target=self._loop, name="pkgs-dirs", daemon=True)
        self.signature: Signature = {}
        self.retry_at: float | None = None
        self.errors = 0
        r, p = metrics.registry, "conda_indexd_pkgs_dir_"
        self.g_packages = Gauge(p + "packages", "Packages of the pkgs dirs, by kind (taken, duplicates, held)", ["kind"], registry=r)
        self.g_skipped = Gauge(p + "skipped", "pkgs-dir entries that cannot be served, by reason (no-tarball, ...)", ["reason"], registry=r)
        self.g_errors = metrics.subdir_errors

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """The first sync (before the worker's start-up publish), then the observers."""
        self._sync()
        if self.stopping.is_set():
            return
        handler = _Wake(self.wake, self.touched, self.complete)
        for folder in self.sources.dirs:
            observer: BaseObserver = PollingObserver(timeout=self.poll_interval) if self.polling else Observer()
            try:
                observer.schedule(handler, str(folder), recursive=False)
                observer.start()
            except OSError as exc:
                log.error("cannot watch pkgs dir; it is rescanned every poll interval", dir=str(folder), error=exc.strerror or str(exc))
                continue
            self.observers.append(observer)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        for observer in self.observers:
            observer.stop()
        for observer in self.observers:
            observer.join(timeout=5)
        if self.thread.is_alive():
            self.thread.join(timeout=30)

    def request(self) -> None:
        """A rescan (SIGHUP, periodic, overflow) syncs the pkgs dirs too."""
        self.touched.append(time.monotonic())
        self.wake.set()

    def status(self) -> list[dict[str, Any]]:
        return self.sources.status()

    # --- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self.stopping.is_set():
            woke = self.wake.wait(self.poll_interval)
            if self.stopping.is_set():
                return
            if woke:
                self._quiet()
            elif not self._due():
                continue
            if not self.stopping.is_set():
                self._sync()

    def _quiet(self) -> None:
        """Wait until no event came for `debounce` seconds (at most `max_delay`)."""
        first = time.monotonic()
        while not self.stopping.is_set():
            self.wake.clear()
            last = self.touched[-1] if self.touched else first
            wait = min(last + self.debounce, first + self.max_delay) - time.monotonic()
            if wait <= 0 or not self.wake.wait(wait):
                break
        self.touched.clear()

    def _due(self) -> bool:
        if self.retry_at is not None and time.monotonic() >= self.retry_at:
            return True
        return _signature(self._folders()) != self.signature

    def _folders(self) -> list[Path]:
        return [f for scan in self.sources.last_scans for f in scan.folders.values()]

    def _sync(self) -> None:
        try:
            complete = set(self.complete)
            result = self.sources.sync(complete)
            self.complete.difference_update(complete)
        except Exception as exc:  # noqa: BLE001 - never stops the daemon; retried
            self.errors += 1
            self.g_errors.labels("pkgs-dirs", type(exc).__name__).inc()
            log.error("pkgs dirs sync failed; retrying", error=f"{type(exc).__name__}: {exc}")
            self.retry_at = time.monotonic() + min(60.0, 2.0**self.errors)
            return
        self.errors = 0
        if result.failed:
            self.g_errors.labels("pkgs-dirs", "place").inc(len(result.failed))
        self.retry_at = time.monotonic() + (max(self.settle, 0.2) if result.held else 5.0) if result.held or result.failed else None
        for key in result.placed:
            subdir, fn = key.split("/", 1)
            self.queue.add(subdir, fn, EventKind.MOVED)
        for key in result.removed:
            subdir, fn = key.split("/", 1)
            self.queue.add(subdir, fn, EventKind.DELETED)
        for subdir in sorted(result.overlays_changed):
            self.queue.add_scan(subdir, ScanReason.PATCHES)
        self.signature = _signature(self._folders())
        counts = result.counts()
        self.g_packages.labels("taken").set(counts["taken"])
        self.g_packages.labels("duplicates").set(counts["duplicates"])
        self.g_packages.labels("held").set(len(result.held))
        self.g_skipped.clear()
        for reason, n in result.skipped_by_reason().items():
            self.g_skipped.labels(reason).set(n)
        _log_result(result)
