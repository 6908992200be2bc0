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
import os
import stat
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

from conda_indexd.names import PACKAGE_EXTENSIONS, is_sidecar_name
from conda_indexd.stores.base import FileState, Listing
from conda_indexd.stores.localstream import LocalWriter, link_atomic, local_writer, same_files
from conda_indexd.util.fsio import clean_stale_temps, fsync_dir, open_regular, same_content, write_atomic
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)


class LocalStore:
    """A channel folder. Keys are paths relative to `root` with `/` separators."""

    def __init__(self, root: Path):
        self.root = root
        self.location = str(root)
        self.read_ahead = 1
        self._ours: dict[str, float] = {}  # key -> monotonic time this store wrote or removed it
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
        listing, sidecars, files = Listing(), list[FileState](), list[FileState]()
        lstat, is_dir, add = os.lstat, stat.S_ISDIR, listing.append_stat
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
                try:
                    st = lstat(name, dir_fd=fd)
                except FileNotFoundError:
                    continue
                # Anything but a folder is listed, without following symlinks: a symlink, FIFO
                # or socket under a package name is then refused with a reason by the reader.
                if not is_dir(st.st_mode):
                    add(name, st)
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
            clean_stale_temps(folder)
            clean_stale_temps(folder / "shards")


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
