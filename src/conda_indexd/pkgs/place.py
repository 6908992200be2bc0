"""Serve conda package caches as a channel: place the chosen tarballs into the channel's
subdirs and write their origin overlays (`conda-indexd index|watch --from-pkgs-dir`).

- A package goes to `CHANNEL/<index.json subdir>/<fn>`: a hard link when the pkgs dir
  and the channel share a filesystem, else a copy; either way through a temporary name
  and a rename, so the channel never shows a partial file. A pkgs dir is only read.
- What was placed is remembered in `CHANNEL/.pkgs-dirs/state.json` (with each target's
  identity), so a package gone from the caches leaves the channel, and only files we
  placed (and nobody changed since) are ever removed. A channel file of the same name
  that we did not place is left alone (reason `name-taken`).
- Each tarball is read once (checksums, index.json) and remembered by path and identity.
- The origin overlays (formats/origin.py) go to `CHANNEL/.pkgs-dirs/origin-<subdir>.json`,
  before the packages they describe are placed; the build stage layers them under the
  channel's patches.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conda_indexd.formats import origin
from conda_indexd.pkgs.dirs import Chosen, DirReport, DirScan, Tarball, TarInfo, identity_of, read_tarball, resolve, scan_dir, settled
from conda_indexd.util.fsio import fsync_dir, temp_name, write_atomic
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

STATE = "state.json"
LINK_FALLBACK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.EACCES})


@dataclass
class SyncResult:
    placed: list[str] = field(default_factory=list)  # subdir/fn linked or copied this sync
    removed: list[str] = field(default_factory=list)
    overlays_changed: set[str] = field(default_factory=set)  # subdirs whose overlay file changed
    held: list[str] = field(default_factory=list)  # tarballs still being written
    failed: list[str] = field(default_factory=list)  # subdir/fn that could not be placed (disk full, ...)
    reports: list[DirReport] = field(default_factory=list)
    served: int = 0
    linked: int = 0
    copied: int = 0

    @property
    def subdirs(self) -> set[str]:
        return {k.split("/", 1)[0] for k in self.placed + self.removed} | self.overlays_changed

    def counts(self) -> dict[str, int]:
        return {"taken": sum(r.taken for r in self.reports), "duplicates": sum(len(r.duplicates) for r in self.reports)}

    def skipped_by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.reports:
            for s in r.skipped:
                out[s["reason"]] = out.get(s["reason"], 0) + 1
        return dict(sorted(out.items()))


class PkgsSources:
    """The pkgs dirs a channel is made from, and what was placed from them."""

    def __init__(self, dirs: list[Path], channel: Path, *, origin_metadata: bool = True, settle: float = 1.0, threads: int = 2):
        self.dirs = dirs
        self.threads = max(1, threads)
        self.channel = channel
        self.origin_metadata = origin_metadata
        self.settle = settle
        self.state_dir = channel / origin.OVERLAY_DIR
        self.infos: dict[str, TarInfo] = {}
        self.placed: dict[str, dict[str, Any]] = {}
        self.logged: set[tuple[str, str, str]] = set()  # (path, sha256, what) said once
        self.last: SyncResult = SyncResult()
        self.last_scans: list[DirScan] = []
        self._load()

    # --- memory -------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            doc = json.loads((self.state_dir / STATE).read_bytes())
            self.infos = {p: TarInfo.from_json(i) for p, i in doc.get("tarballs", {}).items()}
            self.placed = dict(doc.get("placed", {}))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            log.warning("pkgs-dir state unreadable; starting afresh (placed files are adopted again)", error=str(exc))

    def _save(self) -> None:
        doc = {"version": 1, "tarballs": {p: i.to_json() for p, i in sorted(self.infos.items())}, "placed": dict(sorted(self.placed.items()))}
        self.state_dir.mkdir(exist_ok=True)
        data = (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()
        path = self.state_dir / STATE
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes() == data:
                return
        write_atomic(path, data)

    def _once(self, path: str, sha256: str, what: str) -> bool:
        key = (path, sha256, what)
        if key in self.logged:
            return False
        self.logged.add(key)
        return True

    # --- one sync -------------------------------------------------------------------------

    def scan(self) -> list[DirScan]:
        return [scan_dir(d) for d in self.dirs]

    def sync(self, complete: Collection[str] = ()) -> SyncResult:
        """Bring the channel's placed packages and overlays in line with the pkgs dirs.
        `complete`: tarball paths known to be fully written (need not wait out settle)."""
        result = SyncResult()
        scans = self.last_scans = self.scan()
        infos: dict[Path, TarInfo] = {}
        # sources that must not be taken as gone: tarballs still being written, and
        # everything under a dir that cannot be listed now (an unmounted share)
        held_paths: set[str] = set()
        unlisted = [str(s.path) + os.sep for s in scans if s.problem]
        seen: set[str] = set()
        to_read: list[Tarball] = []
        for scan in scans:
            if scan.problem and self._once(str(scan.path), "", scan.problem):
                log.error("pkgs dir unreadable", dir=str(scan.path), error=scan.problem)
            for formats in scan.tarballs.values():
                for tarball in formats.values():
                    key = str(tarball.path)
                    seen.add(key)
                    known = self.infos.get(key)
                    if known is not None and tuple(known.identity) == tarball.identity:
                        infos[tarball.path] = known
                    elif key not in complete and not settled(tarball, self.settle):
                        held_paths.add(key)
                        result.held.append(key)
                    else:
                        to_read.append(tarball)
        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="pkgs-read") as pool:
            for tarball, info in zip(to_read, pool.map(read_tarball, to_read), strict=True):
                infos[tarball.path] = self.infos[str(tarball.path)] = info
        for key in list(self.infos):
            if key not in seen:
                del self.infos[key]
        chosen, result.reports = resolve(scans, infos, self.origin_metadata)
        self._log_choices(chosen, result.reports)
        # overlays only ever describe files we placed: written before placing (a new
        # package is never published without its origin record), corrected after
        # (a name taken by another file, a failed copy)
        planned = {k for k, c in chosen.items() if k in self.placed or self._target_identity(self.channel / k) is None}
        self._write_overlays(_overlays(chosen, planned), result)
        for _, c in sorted(chosen.items()):
            self._place(c, result)
        if (ours := {k for k in chosen if k in self.placed}) != planned:
            self._write_overlays(_overlays(chosen, ours), result)
        for subdir in sorted({k.split("/", 1)[0] for k in result.placed}):
            fsync_dir(self.channel / subdir)  # the placed names are durable before state.json records them
        for key in sorted(set(self.placed) - set(chosen)):
            source = str(self.placed[key].get("source"))
            if source in held_paths or source.startswith(tuple(unlisted)):
                continue  # being replaced, or its dir is unreadable for now: keep it
            self._remove(key, result)
        result.served = len([k for k in chosen if k in self.placed])
        self._save()
        self.last = result
        return result

    def _log_choices(self, chosen: dict[str, Chosen], reports: list[DirReport]) -> None:
        for c in chosen.values():
            if c.overlay and self._once(str(c.source.path), c.info.sha256, "overlay:" + json.dumps(c.overlay, sort_keys=True)):
                log.info("origin metadata kept", path=c.key, source=str(c.source.path), keys=sorted(c.overlay),
                         origin={k: c.overlay[k] for k in sorted(c.overlay)},
                         packaged={k: c.info.record.get(k) for k in sorted(c.overlay)})  # fmt: skip
            if c.stale_folder is not None and not c.overlay and self._once(str(c.stale_folder), c.info.sha256, "stale"):
                log.warning("extracted folder does not match its tarball; using index.json", path=c.key,
                            folder=str(c.stale_folder), tarball=str(c.source.path))  # fmt: skip
        for r in reports:
            for s in r.skipped:
                if self._once(f"{r.path}/{s['path']}", s["reason"], "skipped"):
                    log.warning("pkgs-dir entry skipped", dir=r.path, path=s["path"], reason=s["reason"], detail=s["message"])

    # --- overlays -----------------------------------------------------------------------------

    def _write_overlays(self, overlays: dict[str, dict[str, dict[str, Any]]], result: SyncResult) -> None:
        self.state_dir.mkdir(parents=False, exist_ok=True)
        present = {p.name for p in self.state_dir.glob("origin-*.json")}
        for subdir, fixes in sorted(overlays.items()):
            path = self.channel / origin.overlay_key(subdir)
            data = (json.dumps(origin.instructions(fixes), indent=1, sort_keys=True) + "\n").encode()
            present.discard(path.name)
            with contextlib.suppress(FileNotFoundError):
                if path.read_bytes() == data:
                    continue
            write_atomic(path, data)
            result.overlays_changed.add(subdir)
        for name in sorted(present):
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / name).unlink()
                result.overlays_changed.add(name.removeprefix("origin-").removesuffix(".json"))

    # --- placing --------------------------------------------------------------------------------

    def _target_identity(self, path: Path) -> list[int] | None:
        try:
            return list(identity_of(os.lstat(path)))
        except FileNotFoundError:
            return None

    def _ours(self, key: str, target: Path) -> bool:
        entry = self.placed.get(key)
        return entry is not None and self._target_identity(target) == entry.get("target")

    def _place(self, c: Chosen, result: SyncResult) -> None:
        target = self.channel / c.subdir / c.fn
        entry = self.placed.get(c.key)
        current = self._target_identity(target)
        if entry is not None and current == entry.get("target") and entry.get("sha256") == c.info.sha256:
            if entry.get("source") != str(c.source.path):  # same bytes, now from another dir
                entry["source"] = str(c.source.path)
            return
        if current is not None and not self._ours(c.key, target):
            self.placed.pop(c.key, None)
            relation = self._relation(target, c)
            if relation == "link":  # our own hard link, its record lost: ours again
                self.placed[c.key] = {"source": str(c.source.path), "target": current, "sha256": c.info.sha256, "how": "link"}
            elif relation == "other":  # not ours: never replaced, never removed
                self._report(result, c, "name-taken", f"the channel has another {c.key}; left alone")
                if self._once(str(target), c.info.sha256, "name-taken"):
                    log.warning("channel already has another file of that name; left alone", path=c.key, source=str(c.source.path))
            return  # "same": the channel already has these bytes, put there by someone else
        target.parent.mkdir(exist_ok=True)
        try:
            how = self._link_or_copy(c.source, target)
        except OSError as exc:
            log.error("cannot place package", path=c.key, source=str(c.source.path), error=exc.strerror or str(exc))
            result.failed.append(c.key)
            return
        self.placed[c.key] = {"source": str(c.source.path), "target": self._target_identity(target), "sha256": c.info.sha256, "how": how}
        result.placed.append(c.key)
        if how == "link":
            result.linked += 1
        else:
            result.copied += 1

    def _relation(self, target: Path, c: Chosen) -> str:
        """How an existing channel file we do not remember relates to the package:
        "link" (the very inode), "same" (equal bytes), or "other"."""
        try:
            st, src = os.lstat(target), c.source.identity
        except FileNotFoundError:
            return "other"
        if (st.st_dev, st.st_ino) == src[:2]:
            return "link"
        if st.st_size != src[2]:
            return "other"
        digest = hashlib.sha256()
        with open(target, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return "same" if digest.hexdigest() == c.info.sha256 else "other"

    def _report(self, result: SyncResult, c: Chosen, reason: str, message: str) -> None:
        for report in result.reports:
            if report.path == str(c.dir):
                report.taken -= 1
                report.skipped.append({"path": c.fn, "reason": reason, "message": message})

    def _link_or_copy(self, source: Tarball, target: Path) -> str:
        tmp = temp_name(target)
        how = "link"
        try:
            try:
                os.link(source.path, tmp, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in LINK_FALLBACK:
                    raise
                how = "copy"
                _copy(source.path, tmp)
            if how == "link" and identity_of(os.lstat(tmp))[:2] != source.identity[:2]:
                raise OSError(errno.ESTALE, "the tarball was replaced while it was linked")
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return how

    def _remove(self, key: str, result: SyncResult) -> None:
        target = self.channel / key
        if self._ours(key, target):
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            result.removed.append(key)
        elif self._target_identity(target) is not None:
            log.warning("placed package changed in the channel since; left in place", path=key)
        self.placed.pop(key, None)

    # --- the status page's view -------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.last.reports]


def _overlays(chosen: dict[str, Chosen], keys: set[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """{subdir: {fn: origin differences}} of the chosen packages named in `keys`."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for k in sorted(keys):
        c = chosen[k]
        if c.overlay:
            out.setdefault(c.subdir, {})[c.fn] = c.overlay
    return out


def _copy(source: Path, tmp: Path) -> None:
    """Copy to a new temporary file, durable, with the source's mtime."""
    with open(source, "rb") as src, open(tmp, "xb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
        st = os.fstat(src.fileno())
    os.chmod(tmp, 0o644)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
