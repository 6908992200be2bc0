"""watchdog observer on the channel root -> (subdir, filename, kind) events.

Only `*.conda` and `*.tar.bz2` directly inside a platform subdir count as packages.
Dotfiles, temporary names and `.cache/` are ignored. Our published files (repodata, its
copies, the shard index, shards) changed or removed by someone else are reported
through `on_output`, so the daemon restores them; our own writes (a temp name renamed
over the file) and removals are not, so a publish never triggers another. A new subdir
folder (or a symlink to one) asks for a full scan of it. Platform folders that are
symlinks to folders are watched where they point (`SymlinkedSubdirs`): inotify does not
follow symlinks. Inotify queue overflow is only visible as a log record from watchdog:
`OverflowHook` turns it into a callback so the daemon can rescan everything.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import NamedTuple

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserverVFS

from conda_indexd.daemon.queue import EventKind
from conda_indexd.names import PUBLISHED_NAMES, SHARD_FILE, SHARDS_DIR, TEMP_FILE, is_package_name, is_sidecar_name
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

_KINDS = frozenset(EventKind)
TEMP_SUFFIXES = (".part", ".tmp", "~", ".partial", ".crdownload")

OnFile = Callable[[str, str, EventKind], None]  # subdir, filename, kind
OnSubdir = Callable[[str], None]
OnOutput = Callable[[str, str], None]  # subdir, published file (relative to the subdir)
OwnChange = Callable[[str], bool]  # "subdir/file" -> whether we changed it ourselves just now


def relevant(channel: str, path: str, subdirs: Collection[str]) -> tuple[str, str] | None:
    """(subdir, filename) when `path` is a package file, or a package's attestation
    sidecar (docs/attestations.md), directly in a watched subdir."""
    rel = os.path.relpath(path, channel)
    parts = rel.split(os.sep)
    if len(parts) != 2:
        return None
    subdir, name = parts
    if subdir not in subdirs or not (is_package_name(name) or is_sidecar_name(name)) or name.endswith(TEMP_SUFFIXES):
        return None
    return subdir, name


def subdir_folder(channel: str, path: str, subdirs: Collection[str]) -> str | None:
    rel = os.path.relpath(path, channel)
    return rel if rel in subdirs else None


def published_file(channel: str, path: str, subdirs: Collection[str]) -> tuple[str, str] | None:
    """(subdir, file) when `path` is one of our published files in a watched subdir."""
    parts = os.path.relpath(path, channel).split(os.sep)
    if len(parts) == 2 and parts[0] in subdirs and parts[1] in PUBLISHED_NAMES:
        return parts[0], parts[1]
    if len(parts) == 3 and parts[0] in subdirs and parts[1] == SHARDS_DIR and SHARD_FILE.match(parts[2]):
        return parts[0], f"{SHARDS_DIR}/{parts[2]}"
    return None


class ChannelEventHandler(FileSystemEventHandler):
    def __init__(
        self,
        channel: Path,
        subdirs: Collection[str],
        on_file: OnFile,
        on_subdir: OnSubdir,
        on_output: OnOutput | None = None,
        own_change: OwnChange = lambda key: False,
    ):
        self.channel = str(channel)
        self.subdirs = subdirs
        self.on_file = on_file
        self.on_subdir = on_subdir
        self.on_output = on_output
        self.own_change = own_change

    def _file(self, path: str | bytes, kind: EventKind, src: str | bytes | None = None) -> None:
        text = os.fsdecode(path)
        hit = relevant(self.channel, text, self.subdirs)
        if hit:
            self.on_file(hit[0], hit[1], kind)
            return
        if self.on_output is None or kind == EventKind.CREATED:
            return
        out = published_file(self.channel, text, self.subdirs)
        if out is None or self.own_change(f"{out[0]}/{out[1]}"):
            return
        if src is not None and TEMP_FILE.match(os.path.basename(os.fsdecode(src))):
            return  # our own publish: a temp name renamed over the file
        self.on_output(*out)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _KINDS:
            return  # opened, closed_no_write, attrib
        kind = EventKind(event.event_type)
        path = getattr(event, "dest_path", "") if kind == EventKind.MOVED else event.src_path
        if kind in (EventKind.CREATED, EventKind.MOVED) and (sub := subdir_folder(self.channel, os.fsdecode(path), self.subdirs)):
            # a subdir folder appearing (mkdir, moved in, or a symlink to a folder, which
            # inotify reports as a file)
            self.on_subdir(sub)
            return
        if event.is_directory:
            return  # "modified" on a folder only means its entries changed: the file events say it
        if kind == EventKind.MOVED:
            self._file(event.src_path, EventKind.DELETED)
            self._file(event.dest_path, EventKind.MOVED, src=event.src_path)
        else:
            self._file(event.src_path, kind)


class _SubdirTarget(FileSystemEventHandler):
    """Events inside the folder a symlinked subdir points to, as if they were in the subdir."""

    def __init__(self, subdir: str, target: str, channel: ChannelEventHandler):
        self.subdir, self.target, self.channel = subdir, target, channel

    def _as_channel(self, path: str | bytes) -> str:
        rel = os.path.relpath(os.fsdecode(path), self.target)
        return os.path.join(self.channel.channel, self.subdir, rel)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _KINDS or event.is_directory:
            return
        kind = EventKind(event.event_type)
        if kind == EventKind.MOVED:
            self.channel._file(self._as_channel(event.src_path), EventKind.DELETED)
            self.channel._file(self._as_channel(event.dest_path), EventKind.MOVED, src=event.src_path)
        else:
            self.channel._file(self._as_channel(event.src_path), kind)


class SymlinkedSubdirs:
    """Watches, where they point, the platform folders that are symlinks to folders.
    A symlink that points nowhere readable, or loops, is reported once (until fixed)."""

    def __init__(self, handler: ChannelEventHandler):
        self.handler = handler
        self.watched: dict[str, tuple[str, ObservedWatch]] = {}  # subdir -> (target, watch)
        self.broken: dict[str, str] = {}  # subdir -> why, reported once

    def refresh(self, observer: BaseObserver) -> list[str]:
        """Watch new or moved symlink targets; returns the subdirs newly watched."""
        channel, found, added = self.handler.channel, {}, []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(channel):
                if entry.name in self.handler.subdirs and entry.is_symlink():
                    found[entry.name] = entry.path
        for subdir in list(self.watched):
            if subdir not in found:
                self._unwatch(observer, subdir)
        for subdir, link in sorted(found.items()):
            try:
                target = os.path.realpath(link, strict=True)
                if not os.path.isdir(target):
                    raise NotADirectoryError("not a folder")
                os.listdir(target)
            except (OSError, RuntimeError) as exc:
                why = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"
                if self.broken.get(subdir) != why:
                    log.warning(
                        "symlinked subdir points nowhere readable; ignored", subdir=subdir, link=os.readlink(link) if os.path.islink(link) else link, error=why
                    )
                    self.broken[subdir] = why
                self._unwatch(observer, subdir)
                continue
            self.broken.pop(subdir, None)
            if self.watched.get(subdir, ("",))[0] == target:
                continue
            self._unwatch(observer, subdir)
            watch = observer.schedule(_SubdirTarget(subdir, target, self.handler), target, recursive=False)
            self.watched[subdir] = (target, watch)
            log.info("watching symlinked subdir where it points", subdir=subdir, target=target)
            added.append(subdir)
        return added

    def _unwatch(self, observer: BaseObserver, subdir: str) -> None:
        old = self.watched.pop(subdir, None)
        if old is not None:
            with contextlib.suppress(KeyError, OSError):
                observer.unschedule(old[1])


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
