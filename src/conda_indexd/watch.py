"""watchdog observer on the channel root -> (subdir, filename, kind) events.

Only `*.conda` and `*.tar.bz2` directly inside a platform subdir count. Dotfiles,
temporary names, `.cache/` and our own outputs are ignored, so a publish never
triggers another. A new subdir folder asks for a full scan of it. Inotify queue
overflow is only visible as a log record from watchdog: `OverflowHook` turns it into a
callback so the daemon can rescan everything.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import NamedTuple

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from .debounce import EventKind
from .names import is_package_name

_KINDS = frozenset(EventKind)
TEMP_SUFFIXES = (".part", ".tmp", "~", ".partial", ".crdownload")

OnFile = Callable[[str, str, EventKind], None]  # subdir, filename, kind
OnSubdir = Callable[[str], None]


def relevant(channel: str, path: str, subdirs: Collection[str]) -> tuple[str, str] | None:
    """(subdir, filename) when `path` is a package file directly in a watched subdir."""
    rel = os.path.relpath(path, channel)
    parts = rel.split(os.sep)
    if len(parts) != 2:
        return None
    subdir, name = parts
    if subdir not in subdirs or not is_package_name(name) or name.endswith(TEMP_SUFFIXES):
        return None
    return subdir, name


def subdir_folder(channel: str, path: str, subdirs: Collection[str]) -> str | None:
    rel = os.path.relpath(path, channel)
    return rel if rel in subdirs else None


class ChannelEventHandler(FileSystemEventHandler):
    def __init__(self, channel: Path, subdirs: Collection[str], on_file: OnFile, on_subdir: OnSubdir):
        self.channel = str(channel)
        self.subdirs = subdirs
        self.on_file = on_file
        self.on_subdir = on_subdir

    def _file(self, path: str | bytes, kind: EventKind) -> None:
        hit = relevant(self.channel, os.fsdecode(path), self.subdirs)
        if hit:
            self.on_file(hit[0], hit[1], kind)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _KINDS:
            return  # opened, closed_no_write, attrib
        kind = EventKind(event.event_type)
        if event.is_directory:
            # a subdir folder appearing (mkdir or moved in); "modified" on a folder only
            # means its entries changed, which the file events already say
            path = getattr(event, "dest_path", "") if kind == "moved" else event.src_path
            if kind in (EventKind.CREATED, EventKind.MOVED) and (sub := subdir_folder(self.channel, os.fsdecode(path), self.subdirs)):
                self.on_subdir(sub)
            return
        if kind == EventKind.MOVED:
            self._file(event.src_path, EventKind.DELETED)
            self._file(event.dest_path, EventKind.MOVED)
        else:
            self._file(event.src_path, kind)


def make_observer(channel: Path, handler: ChannelEventHandler, polling: bool, poll_interval: float) -> BaseObserver:
    observer: BaseObserver = (
        PollingObserverVFS(_poll_stat, os.scandir, polling_interval=poll_interval) if polling else Observer()  # type: ignore[arg-type]
    )
    observer.schedule(handler, str(channel), recursive=True)
    return observer


class _PollStat(NamedTuple):
    """What watchdog's polling snapshot compares, with ctime folded into "mtime": a file
    rewritten with the same size and a restored mtime (rsync --times, cp -p) still
    changes its ctime, so polling reports it as modified, as inotify would."""

    st_mode: int
    st_ino: int
    st_dev: int
    st_size: int
    st_mtime: tuple[int, int]


def _poll_stat(path: str) -> _PollStat:
    st = os.stat(path)
    return _PollStat(st.st_mode, st.st_ino, st.st_dev, st.st_size, (st.st_mtime_ns, st.st_ctime_ns))


class OverflowHook(logging.Handler):
    """Calls `on_overflow` when watchdog logs that the inotify queue overflowed."""

    LOGGER = "watchdog.observers"  # inotify_c and inotify both log the overflow

    def __init__(self, on_overflow: Callable[[], None]):
        super().__init__(level=logging.DEBUG)
        self.on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.on_overflow()

    def install(self) -> None:
        logger = logging.getLogger(self.LOGGER)
        logger.addHandler(self)
        if logger.getEffectiveLevel() > logging.WARNING:
            logger.setLevel(logging.WARNING)

    def remove(self) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)
