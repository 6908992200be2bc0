"""conda package caches ("pkgs dirs", conda's PackageCacheData layout): which packages
they hold, and which of them a channel made from them serves.

A pkgs dir holds tarballs (`.conda`, `.tar.bz2`, every platform mixed) at its top level,
the extracted folders (`info/index.json`, `info/repodata_record.json`), `urls.txt` (the
origin URL of each download; its writability marks the cache writable) and conda's own
`cache/`. Nothing here writes into a pkgs dir.

The rules are conda's (PackageCacheData):
- dirs are read writable first, then read-only, each group in the order given; the
  first dir that has a package serves it, later copies are duplicates;
- within a dir `.conda` wins over `.tar.bz2` of the same package, and both over a bare
  extracted folder; a broken tarball gives way to the other format;
- a tarball with no extracted folder is served; an extracted folder with no tarball
  (after `conda clean --tarballs`) cannot be: it is skipped with reason `no-tarball`
  (unless another dir serves that package);
- partial downloads, lock, temporary and trash files, dotfiles, symlinks (conda skips
  them too) and `cache/` are ignored.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conda_indexd.config import KNOWN_SUBDIRS
from conda_indexd.formats import origin
from conda_indexd.names import CONDA, TAR_BZ2, is_package_name, stem

CONDA_FILES = frozenset({"cache", "urls", "urls.txt", ".trash"})
# conda's partial downloads (.partial), its lock files (.lock, .conda_lock, .pid), its
# trash (.c~, .conda_trash), and what other copy tools leave behind
IGNORED_SUFFIXES = (".partial", ".part", ".lock", ".conda_lock", ".pid", ".tmp", "~", ".c~", ".conda_trash", ".crdownload", ".trash")
PREFERENCE = (CONDA, TAR_BZ2)  # within a dir, the first format present wins

Identity = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


def identity_of(st: os.stat_result) -> Identity:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def ignored(name: str) -> bool:
    return name.startswith(".") or name in CONDA_FILES or name.endswith(IGNORED_SUFFIXES)


@dataclass(frozen=True)
class Tarball:
    path: Path
    identity: Identity

    @property
    def fn(self) -> str:
        return self.path.name


@dataclass
class DirScan:
    """One pkgs dir as listed now."""

    path: Path
    writable: bool
    urls: list[str] = field(default_factory=list)  # urls.txt, in file order
    tarballs: dict[str, dict[str, Tarball]] = field(default_factory=dict)  # {stem: {ext: Tarball}}
    folders: dict[str, Path] = field(default_factory=dict)  # {stem: extracted folder with info/index.json}
    problem: str | None = None  # the dir cannot be listed
    _by_fn: dict[str, str] | None = field(default=None, repr=False)

    def url_of(self, fn: str) -> str | None:
        """The last urls.txt line naming `fn` (conda reads the newest first)."""
        if self._by_fn is None:
            self._by_fn = {u.rsplit("/", 1)[-1]: u for u in self.urls}  # later lines win
        return self._by_fn.get(fn)


def writable(path: Path) -> bool:
    """conda's test: the cache is writable when its urls.txt can be written. A dir with
    no urls.txt (not made by conda) is taken as read-only."""
    magic = path / "urls.txt"
    return magic.is_file() and os.access(magic, os.W_OK)


def scan_dir(path: Path) -> DirScan:
    scan = DirScan(path, writable(path))
    try:
        with open(path / "urls.txt", "rb") as f:
            scan.urls = [line.strip().decode("utf-8", "replace") for line in f if line.strip()]
    except OSError:
        pass
    try:
        entries = list(os.scandir(path))
    except OSError as exc:
        scan.problem = f"cannot list {path}: {exc.strerror or exc}"
        return scan
    for entry in entries:
        name = entry.name
        if ignored(name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and is_package_name(name):
            ext = CONDA if name.endswith(CONDA) else TAR_BZ2
            scan.tarballs.setdefault(stem(name), {})[ext] = Tarball(Path(entry.path), identity_of(st))
        elif stat.S_ISDIR(st.st_mode) and (Path(entry.path) / "info" / "index.json").is_file():
            scan.folders[name] = Path(entry.path)
    return scan


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


@dataclass(frozen=True)
class TarInfo:
    """What one tarball holds (kept between syncs, keyed by path and identity)."""

    identity: Identity
    subdir: str | None = None
    md5: str = ""
    sha256: str = ""
    record: dict[str, Any] = field(default_factory=dict)  # index.json as the channel serves it
    error: tuple[str, str] | None = None  # (reason, message) of an unreadable archive

    def to_json(self) -> dict[str, Any]:
        return {"identity": list(self.identity), "subdir": self.subdir, "md5": self.md5, "sha256": self.sha256,
                "record": self.record, "error": list(self.error) if self.error else None}  # fmt: skip

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TarInfo:
        error = doc.get("error")
        return cls(tuple(doc["identity"]), doc.get("subdir"), doc.get("md5", ""), doc.get("sha256", ""),  # type: ignore[arg-type]
                   doc.get("record") or {}, (error[0], error[1]) if error else None)  # fmt: skip


def read_tarball(tarball: Tarball) -> TarInfo:
    from conda_indexd.archive.reader import ArchiveError, read_file

    try:
        meta = read_file(tarball.path)
    except ArchiveError as exc:
        return TarInfo(tarball.identity, error=(exc.reason, exc.message))
    except OSError as exc:
        return TarInfo(tarball.identity, error=("unreadable", exc.strerror or str(exc)))
    record = meta.index_json
    expected = f"{record['name']}-{record['version']}-{record['build']}"
    if stem(tarball.fn) != expected:
        return TarInfo(tarball.identity, error=("filename-mismatch", f"filename does not match index.json ({expected!r})"))
    return TarInfo(tarball.identity, record.get("subdir"), record["md5"], record["sha256"], record)


@dataclass
class Chosen:
    """One package the channel serves."""

    subdir: str
    fn: str
    source: Tarball
    info: TarInfo
    dir: Path
    overlay: dict[str, Any] = field(default_factory=dict)  # origin metadata kept (origin.differences)
    origin_url: str | None = None
    stale_folder: Path | None = None  # an extracted folder whose record belongs to another file

    @property
    def key(self) -> str:
        return f"{self.subdir}/{self.fn}"


@dataclass
class DirReport:
    path: str
    writable: bool
    taken: int = 0
    duplicates: list[dict[str, str]] = field(default_factory=list)  # {path, served_from}
    skipped: list[dict[str, str]] = field(default_factory=list)  # {path, reason, message}
    origins: dict[str, int] = field(default_factory=dict)  # {channel URL: urls.txt lines}
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"dir": self.path, "writable": self.writable, "taken": self.taken, "duplicates_dropped": len(self.duplicates),
                "duplicates": self.duplicates, "skipped": self.skipped, "origins": self.origins, "problem": self.problem}  # fmt: skip


def order(scans: list[DirScan]) -> list[DirScan]:
    """conda's order: writable caches first, then read-only ones (stable within each)."""
    return [s for s in scans if s.writable] + [s for s in scans if not s.writable]


def resolve(scans: list[DirScan], infos: dict[Path, TarInfo], origin_metadata: bool = True) -> tuple[dict[str, Chosen], list[DirReport]]:
    """({subdir/fn: Chosen}, one DirReport per scan in the order given). `infos` holds
    every settled tarball; a tarball missing from it (still being written) is left out."""
    reports = {s.path: DirReport(str(s.path), s.writable, problem=s.problem) for s in scans}
    for s in scans:
        reports[s.path].origins = dict(sorted(Counter(origin.channel_of(u) for u in s.urls).items()))
    chosen: dict[tuple[str, str], Chosen] = {}  # (subdir, stem)
    folder_only: list[tuple[DirScan, str]] = []
    for scan in order(scans):
        report = reports[scan.path]
        for name in sorted(scan.tarballs):
            formats = scan.tarballs[name]
            pick: Chosen | None = None
            for ext in PREFERENCE:
                tarball = formats.get(ext)
                if tarball is None or tarball.path not in infos:
                    continue
                info = infos[tarball.path]
                if pick is not None:
                    report.duplicates.append({"path": tarball.fn, "served_from": str(pick.dir / pick.fn)})
                    continue
                reason = _unservable(info)
                if reason:
                    report.skipped.append({"path": tarball.fn, "reason": reason[0], "message": reason[1]})
                    continue
                assert info.subdir is not None
                served = chosen.get((info.subdir, name))
                if served is not None:
                    report.duplicates.append({"path": tarball.fn, "served_from": str(served.dir / served.fn)})
                    pick = served
                    continue
                pick = chosen[info.subdir, name] = Chosen(info.subdir, tarball.fn, tarball, info, scan.path)
                report.taken += 1
        folder_only += [(scan, name) for name in sorted(scan.folders) if name not in scan.tarballs]
    for scan, name in folder_only:
        index = read_json(scan.folders[name] / "info" / "index.json") or {}
        served = chosen.get((str(index.get("subdir")), name))
        if served is not None:
            reports[scan.path].duplicates.append({"path": name + "/", "served_from": str(served.dir / served.fn)})
        else:
            reports[scan.path].skipped.append({"path": name + "/", "reason": "no-tarball",
                                               "message": "extracted folder without its tarball (conda clean --tarballs?): cannot be served"})  # fmt: skip
    by_dir = {s.path: s for s in scans}
    for c in chosen.values():
        c.origin_url = by_dir[c.dir].url_of(c.fn)
        if origin_metadata:
            _origin(c, order(scans), infos)
    return {c.key: c for c in chosen.values()}, [reports[s.path] for s in scans]


def _unservable(info: TarInfo) -> tuple[str, str] | None:
    if info.error:
        return info.error
    if not info.subdir:
        return "no-subdir", "index.json names no subdir: cannot place it"
    if info.subdir not in KNOWN_SUBDIRS:
        return "unknown-subdir", f"index.json subdir {info.subdir!r} is not a platform conda knows"
    return None


def _origin(c: Chosen, scans: list[DirScan], infos: dict[Path, TarInfo]) -> None:
    """The served package's origin record: from its own dir's extracted folder first,
    then any other dir's folder of the same package. A record counts when it was made
    from the served tarball, or (in the served tarball's own dir) from the other format
    of the same package (conda re-extracts one folder from whichever format it fetched
    last). A same-named package from another channel in another dir never lends its
    record: its md5 differs."""
    name = stem(c.fn)
    ranked = sorted(scans, key=lambda s: s.path != c.dir)
    for scan in ranked:
        folder = scan.folders.get(name)
        if folder is None:
            continue
        record = read_json(folder / "info" / "repodata_record.json")
        if record is None:
            continue
        if record.get("subdir", c.subdir) != c.subdir:
            continue
        candidates = [c.info]  # another dir's folder counts only for the very bytes served
        if scan.path == c.dir:
            candidates += [infos[t.path] for t in scan.tarballs.get(name, {}).values() if t.path in infos]
        if any(not i.error and origin.matches(record, i.md5, i.sha256) for i in candidates):
            c.overlay = origin.differences(record, c.info.record)
            c.origin_url = c.origin_url or record.get("url")
            c.stale_folder = None
            return
        if c.stale_folder is None:
            c.stale_folder = folder


def settled(tarball: Tarball, settle: float, now: float | None = None) -> bool:
    """A tarball changed within `settle` seconds may still be being written."""
    now = time.time() if now is None else now
    return now - tarball.identity[3] / 1e9 >= settle
