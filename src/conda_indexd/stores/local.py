"""`LocalStore`: a channel in a folder on a POSIX file system (the `ChannelStore` seam).

Writes (docs/spec §2.3, §8.2): a file is only replaced when its
bytes differ. The new bytes go to `.<name>.<8 hex>.tmp` in the same folder, are fsynced,
get an mtime at least one whole second newer than the file they replace (nginx's ETag is
mtime-seconds + size), are renamed over the old name, and the folder is fsynced. A
reader never sees a partial file. `copy` (a second name for the same bytes, as
repodata.json of an unpatched subdir) hard-links the file to a temporary name and renames
that over the old one, so both names share one inode (a plain copy where the file system
has no hard links); conda-index and every writer here replace a file by rename, never in
place, so a later rewrite of one name leaves the other intact. `prepare(recover=True)` removes temporaries a killed
writer left (call it only while holding the channel lock, with no write running).

Reads of packages never follow a symlink or block on a FIFO under a package name, and
only regular files are listed as readable.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import stat
import struct
import time
from array import array
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any

from conda_indexd.names import PACKAGE_EXTENSIONS, is_sidecar_name
from conda_indexd.stores.base import FileState, Listing
from conda_indexd.stores.localstream import LocalWriter, link_atomic, local_writer, same_files
from conda_indexd.util.fsio import clean_stale_temps, fsync_dir, open_regular, same_content, write_atomic
from conda_indexd.util.logs import get_logger
from conda_indexd.util.procs import die_with_parent

log = get_logger(__name__)

FORK_FROM = 50_000  # package files from which a listing stats half of them in a forked process


class LocalStore:
    """A channel folder. Keys are paths relative to `root` with `/` separators."""

    def __init__(self, root: Path):
        self.root = root
        self.location = str(root)
        self.read_ahead = 1
        self._ours: dict[str, float] = {}  # key -> monotonic time this store wrote or removed it
        self._cleaned: dict[Path, tuple[int, int]] = {}  # folder -> (inode, mtime_ns) when its stale temps were removed
        # asked with the step right before every rename or removal (stores/fenced.py sets it to the
        # pair's lease proof; raising there leaves the old file in place)
        self.guard: Callable[[str], None] = _unguarded

    def changed_by_us(self, key: str, within: float, *, removals_only: bool = False) -> bool:
        """Whether this store wrote (or removed) `key` less than `within` seconds ago: the
        watcher's way to tell our own changes from someone else's."""
        entry = self._ours.get(key)
        return entry is not None and time.monotonic() - abs(entry) < within and (entry < 0 or not removals_only)

    def _note(self, key: str, removed: bool) -> None:
        now = time.monotonic()
        self._ours[key] = -now if removed else now
        if len(self._ours) > 4096:
            for k, t in list(self._ours.items()):
                if now - abs(t) > 60:
                    self._ours.pop(k, None)

    def path(self, key: str) -> Path:
        return self.root / key

    def check(self) -> None:
        pass  # a missing or unreadable folder is found by the listing, with its own line

    # --- listing -----------------------------------------------------------------------

    def subdirs(self) -> list[str]:
        return sorted(entry.name for entry in os.scandir(self.root) if entry.is_dir())

    def list_packages(self, subdir: str) -> Listing:
        """Sorted by name. One `lstat` per package, relative to the open folder: that
        syscall is the per-file cost, so little else is done per file (names only are
        listed, no DirEntry; the numbers go straight into the listing's columns)."""
        return self._list(subdir, everything=False)

    def list_subdir(self, subdir: str) -> Listing:
        """`list_packages`, the other plain files beside them (one `lstat` each) and the
        shard folder's files (one scandir)."""
        listing = self._list(subdir, everything=True)
        listing.shards = self.list_files(f"{subdir}/shards")
        return listing

    def _list(self, subdir: str, *, everything: bool) -> Listing:
        try:
            fd = os.open(self.root / subdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return Listing(files=[] if everything else None, shards={} if everything else None)
        sidecars, files, packages = list[FileState](), list[FileState](), list[str]()
        lstat = os.lstat
        try:
            names = os.listdir(fd)
            names.sort()
            for name in names:
                if not (name.endswith(PACKAGE_EXTENSIONS) and name[0] != "."):  # names.is_package_name
                    sidecar = is_sidecar_name(name)
                    if (sidecar or everything) and not _undecodable(name):
                        with contextlib.suppress(FileNotFoundError):
                            st = lstat(name, dir_fd=fd)
                            if stat.S_ISREG(st.st_mode):  # never a symlink or FIFO
                                (sidecars if sidecar else files).append(_state(name, st))
                    continue
                if not name.isprintable() or (not name.isascii() and _undecodable(name)):
                    log.warning("skipped file with an unusable name", subdir=subdir, path=repr(name))
                    continue
                packages.append(name)
            del names
            listing = _stat_packages(fd, packages)
        finally:
            os.close(fd)
        listing.sidecars = sorted(sidecars)
        if everything:
            listing.files = files  # sorted: the names were
        return listing

    def stat_packages(self, subdir: str, names: Iterable[str]) -> tuple[list[FileState], list[str]]:
        present, gone = [], []
        folder = self.root / subdir
        for name in names:
            if _undecodable(name):
                continue
            try:
                st = os.lstat(folder / name)
            except FileNotFoundError:
                gone.append(name)
                continue
            if stat.S_ISDIR(st.st_mode):
                gone.append(name)
            else:
                present.append(_state(name, st))
        return present, gone

    def stat_files(self, folder: str, names: Iterable[str] | None = None) -> tuple[list[FileState], list[str]]:
        """One `lstat` per named file (without names: every plain file of one scandir).
        A folder or a missing name is missing; a name that is not valid UTF-8 too."""
        path = self.root / folder
        if names is None:
            present = []
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for entry in os.scandir(path):
                    if entry.is_file(follow_symlinks=False) and not _undecodable(entry.name):
                        with contextlib.suppress(FileNotFoundError):
                            present.append(_state(entry.name, entry.stat(follow_symlinks=False)))
            return sorted(present), []
        present, missing = [], []
        for name in sorted(set(names)):
            try:
                st = None if "/" in name or _undecodable(name) else os.lstat(path / name)
            except (FileNotFoundError, NotADirectoryError):
                st = None
            if st is None or not stat.S_ISREG(st.st_mode):
                missing.append(name)
            else:
                present.append(_state(name, st))
        return present, missing

    def list_files(self, folder: str) -> dict[str, int]:
        found = {}
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(self.root / folder):
                if entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        found[entry.name] = entry.stat(follow_symlinks=False).st_size
        return found

    # --- reading ----------------------------------------------------------------------------

    def open_package(self, subdir: str, name: str) -> IO[bytes]:
        return open_regular(self.root / subdir / name)

    def read(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    # --- writing ----------------------------------------------------------------------------

    def write(self, key: str, data: bytes, *, sync: bool = True) -> bool:
        path = self.root / key
        if same_content(path, data):
            return False
        before_rename = functools.partial(self.guard, f"rename {key}")
        try:
            write_atomic(path, data, before_rename)
        except FileNotFoundError:
            # the file's own folder (shards/, .cache/) is made on first use; never the
            # folders above it: a vanished channel must not be recreated
            if path.parent == self.root or not path.parent.parent.is_dir():
                raise
            path.parent.mkdir(exist_ok=True)
            write_atomic(path, data, before_rename)
        if sync:
            fsync_dir(path.parent)
        self._note(key, removed=False)
        return True

    def writer(self, key: str, *, size: int | None = None) -> AbstractContextManager[LocalWriter]:
        return local_writer(self.root, key, size, functools.partial(self.guard, f"rename {key}"))

    def copy(self, src: str, dst: str, *, sync: bool = True) -> bool:
        source, path = self.root / src, self.root / dst
        st = os.stat(source)  # FileNotFoundError when absent
        try:
            old: os.stat_result | None = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            old = None
        if old is not None and (os.path.samestat(st, old) or (old.st_size == st.st_size and same_files(source, path))):
            return False
        if not path.parent.is_dir():  # as write(): the file's own folder, never the ones above
            if path.parent == self.root or not path.parent.parent.is_dir():
                raise FileNotFoundError(f"{path.parent}: no such folder")
            path.parent.mkdir(exist_ok=True)
        if link_atomic(source, path, None if old is None else old.st_mtime, functools.partial(self.guard, f"rename {dst}")):
            self._note(src, removed=False)  # its mtime moved with the shared inode's
        if sync:
            fsync_dir(path.parent)
        self._note(dst, removed=False)
        return True

    def remove(self, key: str) -> bool:
        self.guard(f"remove {key}")
        try:
            os.unlink(self.root / key)
        except FileNotFoundError:
            return False
        self._note(key, removed=True)
        return True

    def sync(self, folder: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(self.root / folder)

    def prepare(self, subdir: str, *, recover: bool) -> None:
        folder = self.root / subdir
        folder.mkdir(exist_ok=True)  # never parents: see write()
        if recover:
            self._clean(folder)
            self._clean(folder / "shards")

    def _clean(self, folder: Path) -> None:
        """Remove the stale temporary files in `folder`, unless no entry was added to it
        since this store last did (its mtime is the same: creating, removing or renaming
        an entry moves a folder's mtime), so a rescan that finds nothing changed does not
        list a million names a second time."""
        try:
            st = os.stat(folder)
        except (FileNotFoundError, NotADirectoryError):
            return
        if self._cleaned.get(folder) == (st.st_ino, st.st_mtime_ns):
            return
        if clean_stale_temps(folder):
            with contextlib.suppress(OSError):
                st = os.stat(folder)
        self._cleaned[folder] = (st.st_ino, st.st_mtime_ns)


def _stat_packages(fd: int, names: list[str]) -> Listing:
    """The listing of `names` (sorted) in the folder open as `fd`: one lstat each. Anything
    but a folder is listed, without following symlinks: a symlink, FIFO or socket under a
    package name is then refused with a reason by the reader. From FORK_FROM names on,
    a forked process stats the second half while this one stats the first (the lstat
    calls are most of a big listing's time, and a thread would wait for the GIL)."""
    half = len(names) // 2 if len(names) >= FORK_FROM and (os.cpu_count() or 1) > 1 else len(names)
    second: _Stats | None = None
    pid, reader = 0, -1
    if half < len(names):
        try:
            reader, writer = os.pipe()
            parent = os.getpid()
            pid = os.fork()
        except OSError:
            half = len(names)  # no process to spare: all of it here
        else:
            if pid == 0:  # the child: stat its half, send the columns, leave without cleanup
                status = 1
                try:
                    os.close(reader)
                    die_with_parent(parent)
                    with os.fdopen(writer, "wb") as out:
                        out.write(_stat_range(fd, names, half, len(names)).to_bytes())
                    status = 0
                finally:
                    os._exit(status)
            os.close(writer)
    try:
        first = _stat_range(fd, names, 0, half)
        if pid:
            with os.fdopen(reader, "rb") as f:
                second = _Stats.from_bytes(f.read(), len(names) - half)
    finally:
        if pid:
            os.waitpid(pid, 0)
    if half < len(names) and second is None:  # the child failed or died: its half here
        second = _stat_range(fd, names, half, len(names))
    listing = Listing()
    for stats, start in ((first, 0), (second, half)):
        if stats is not None:
            stats.into(listing, names, start)
    return listing


class _Stats:
    """The lstat columns of a range of names: `found` is 1 where the name is listed
    (present, not a folder), and the columns hold the listed ones only."""

    TYPES = "dqdQq"  # mtime, size, ctime, inode, ctime_ns

    def __init__(self, count: int) -> None:
        self.found = bytearray(count)
        self.columns: list[array[Any]] = [array(t) for t in self.TYPES]

    def into(self, listing: Listing, names: list[str], start: int) -> None:
        found, (mtimes, sizes, ctimes, inodes, ctimes_ns) = self.found, self.columns
        listed = list(itertools.compress(names[start : start + len(found)], found))
        listing.extend_stats(listed, mtimes, sizes, ctimes, inodes, ctimes_ns)

    def to_bytes(self) -> bytes:
        parts = [bytes(self.found), *(c.tobytes() for c in self.columns)]
        return struct.pack("<6Q", *map(len, parts)) + b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, count: int) -> _Stats | None:
        """None unless `data` is a whole message for `count` names."""
        head = struct.calcsize("<6Q")
        if len(data) < head:
            return None
        lengths = struct.unpack_from("<6Q", data)
        if lengths[0] != count or len(data) != head + sum(lengths):
            return None
        stats, at = cls(0), head
        stats.found = bytearray(data[at : at + count])
        at += count
        for column, length in zip(stats.columns, lengths[1:], strict=True):
            column.frombytes(data[at : at + length])
            at += length
        listed = stats.found.count(1)
        return stats if all(len(c) == listed for c in stats.columns) else None


def _stat_range(fd: int, names: list[str], start: int, stop: int) -> _Stats:
    stats = _Stats(stop - start)
    found = stats.found
    mtime, size, ctime, inode, ctime_ns = (c.append for c in stats.columns)
    lstat, is_dir = os.lstat, stat.S_ISDIR
    for i in range(start, stop):
        try:
            st = lstat(names[i], dir_fd=fd)
        except FileNotFoundError:
            continue
        if not is_dir(st.st_mode):
            found[i - start] = 1
            mtime(st.st_mtime)
            size(st.st_size)
            ctime(st.st_ctime)
            inode(st.st_ino)
            ctime_ns(st.st_ctime_ns)
    return stats


def _state(name: str, st: os.stat_result) -> FileState:
    return FileState(name, st.st_mtime, st.st_size, f"{st.st_ino}:{st.st_ctime_ns}", st.st_ctime)


def _undecodable(name: str) -> bool:
    """A name that is not valid UTF-8 on disk (surrogate escapes): it cannot go in JSON."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _unguarded(step: str) -> None:
    pass
