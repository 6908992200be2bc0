"""Where `conda-indexd wait` looks for a published package: a channel folder, a channel
URL (the CEP-16 shard index and that name's shard, else repodata.json), or the daemon's
HTTP address (its /status.json, plus the channel folder it names).

Each source answers `look(subdir, filename)` with an `Observation`: the sha256 the
published record has, or why it is not there (left out with a reason, not indexed yet,
not reachable). Standard library plus msgpack and zstandard (already dependencies).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgpack
import zstandard

from conda_indexd.backends import skipped_in_folder
from conda_indexd.wait.httpcache import FetchError, HttpCache

STATUS_KEYS = frozenset({"channel", "ready", "subdirs", "pending"})


@dataclass(frozen=True)
class Observation:
    sha256: str | None = None  # the published record's sha256 (hex), None when not published
    skipped: str | None = None  # "reason: message" when the indexer left this file out
    detail: str = ""  # what is published instead / what is going on
    error: str | None = None  # the target could not be read
    # the skip is about the file as it is now (no newer copy waiting to be read), and the
    # sha256 of that file when it could be read: `wait` gives up at once on such a skip
    broken: bool = False
    broken_sha256: str | None = None


class Source(Protocol):
    def look(self, subdir: str, filename: str) -> Observation: ...


def package_name(filename: str) -> str:
    stem = filename.removesuffix(".conda").removesuffix(".tar.bz2")
    return stem.rsplit("-", 2)[0]


def _hex(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.hex()
    return value.lower() if isinstance(value, str) else None


def _records(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        return {}
    out: dict[str, Any] = {}
    for key in ("packages", "packages.conda"):
        group = doc.get(key)
        if isinstance(group, dict):
            out.update(group)
    return out


def _instead(records: dict[str, Any], filename: str, where: str) -> str:
    """What a not-yet-published package's name has in `records`, for the message."""
    name = package_name(filename)
    same = sorted(fn for fn in records if package_name(fn) == name)
    if not same:
        return f"not in {where} ({len(records)} packages, none named {name})"
    shown = ", ".join(same[:3]) + (f" and {len(same) - 3} more" if len(same) > 3 else "")
    return f"not in {where}; {name} is published as {shown}"


def _lookup(records: dict[str, Any], filename: str, where: str) -> Observation:
    record = records.get(filename)
    if isinstance(record, dict):
        sha = _hex(record.get("sha256"))
        return Observation(sha256=sha, detail=f"in {where} with sha256 {sha}")
    return Observation(detail=_instead(records, filename, where))


# --- a channel folder -----------------------------------------------------------------------


class FolderSource:
    """`CHANNEL/SUBDIR/repodata.json`, parsed again only when it was replaced; why a file is
    left out comes from the subdir's `.cache/cache.db` (its `failed` stat rows)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._parsed: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}
        self._hashed: dict[Path, tuple[tuple[int, int, int], str]] = {}

    def look(self, subdir: str, filename: str) -> Observation:
        path = self.folder / subdir / "repodata.json"
        try:
            st = path.stat()
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = self._parsed.get(subdir)
            if cached is None or cached[0] != key:
                with open(path, "rb") as f:
                    cached = (key, _records(json.load(f)))
                self._parsed[subdir] = cached
            found = _lookup(cached[1], filename, f"{subdir}/repodata.json")
        except FileNotFoundError:
            found = Observation(detail=f"no {subdir}/repodata.json yet")
        except (OSError, ValueError) as exc:
            found = Observation(error=f"{path}: {exc}")
        if found.sha256 is not None:
            return found
        skipped = self.skipped(subdir, filename)
        if skipped:
            return Observation(skipped=skipped, detail=found.detail, error=found.error, broken=True,
                               broken_sha256=self.sha256(subdir, filename))  # fmt: skip
        if (self.folder / subdir / filename).is_file() and found.error is None:
            return Observation(detail=f"{found.detail}; the file is in the folder and not indexed yet")
        return found

    def skipped(self, subdir: str, filename: str) -> str | None:
        """The indexer's reason for leaving the file out, when its failed row matches the
        file as it is now (a changed file gets read again)."""
        failure = skipped_in_folder(self.folder, subdir, filename)
        if failure is None:
            return None
        return f"{failure.reason}: {failure.message}" if failure.message else failure.reason

    def has_cache(self, subdir: str) -> bool:
        """Whether the subdir's skips can be read here (a sqlite cache; not a PostgreSQL one)."""
        return (self.folder / subdir / ".cache" / "cache.db").is_file()

    def sha256(self, subdir: str, filename: str) -> str | None:
        """The sha256 of the file in the folder (hashed again only when it was replaced);
        None when it cannot be read."""
        path = self.folder / subdir / filename
        try:  # never blocks on a FIFO, never follows a symlink (the indexer does neither)
            with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW), "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    return None
                key = (st.st_ino, st.st_mtime_ns, st.st_size)
                cached = self._hashed.get(path)
                if cached is None or cached[0] != key:
                    cached = (key, hashlib.file_digest(f, "sha256").hexdigest())
                    self._hashed[path] = cached
        except OSError:
            return None
        return cached[1]


# --- a channel URL --------------------------------------------------------------------------


def _unzstd(data: bytes) -> bytes:
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
        return reader.read()


class UrlSource:
    """A channel served over HTTP: `SUBDIR/repodata_shards.msgpack.zst` and the shard of
    the package's name when the channel has shards, else `SUBDIR/repodata.json`. Every
    request is conditional after the first; shards are content-addressed and fetched once."""

    def __init__(self, base: str, http: HttpCache) -> None:
        self.base = base.rstrip("/") + "/"
        self.http = http
        self._json_body: bytes | None = None
        self._json_records: dict[str, Any] = {}

    def look(self, subdir: str, filename: str) -> Observation:
        index_url = urllib.parse.urljoin(self.base, f"{subdir}/repodata_shards.msgpack.zst")
        try:
            # an optional file: S3-style servers answer 403 for a key that is not there
            index = self.http.get(index_url, missing=(403, 404, 410))
            if index is not None:
                return self._from_shards(index_url, index, subdir, filename)
            return self._from_repodata(subdir, filename)
        except FetchError as exc:
            return Observation(error=str(exc))
        except (
            ValueError,
            TypeError,
            KeyError,
            zstandard.ZstdError,
            msgpack.UnpackException,
        ) as exc:
            return Observation(error=f"unreadable answer from {self.base}: {type(exc).__name__}: {exc}")

    def _from_shards(self, index_url: str, raw: bytes, subdir: str, filename: str) -> Observation:
        index = msgpack.unpackb(_unzstd(raw))
        name = package_name(filename)
        where = f"{subdir}/repodata_shards.msgpack.zst"
        digest = index["shards"].get(name)
        if digest is None:
            return Observation(detail=f"not in {where} (no shard for {name}; {len(index['shards'])} names)")
        shards_base = urllib.parse.urljoin(index_url, index.get("info", {}).get("shards_base_url") or "./")
        shard_url = urllib.parse.urljoin(shards_base, f"{_hex(digest)}.msgpack.zst")
        shard = self.http.get(shard_url, immutable=True)
        if shard is None:
            return Observation(error=f"{shard_url}: 404 (the shard index names it)")
        return _lookup(
            _records(msgpack.unpackb(_unzstd(shard))),
            filename,
            f"{name}'s shard in {subdir}",
        )

    def _from_repodata(self, subdir: str, filename: str) -> Observation:
        body = self.http.get(urllib.parse.urljoin(self.base, f"{subdir}/repodata.json"))
        if body is None:
            return Observation(detail=f"no {subdir}/repodata.json at {self.base} (HTTP 404)")
        if body is not self._json_body:  # a 304 hands back the same bytes: parse once
            self._json_records = _records(json.loads(body))
            self._json_body = body
        return _lookup(self._json_records, filename, f"{subdir}/repodata.json")


# --- the daemon's HTTP address --------------------------------------------------------------


def is_status_document(doc: Any) -> bool:
    return isinstance(doc, dict) and STATUS_KEYS <= doc.keys() and isinstance(doc["subdirs"], list)


class DaemonSource:
    """The daemon at `base` (it answers /status.json): what is published is read from the
    channel folder it names (so it must be visible here: same host or same mount), and why
    a file is left out, or that work is pending, from its /status.json."""

    def __init__(self, base: str, channel: Path, http: HttpCache) -> None:
        self.status_url = base.rstrip("/") + "/status.json"
        self.folder = FolderSource(channel)
        self.http = http

    def look(self, subdir: str, filename: str) -> Observation:
        found = self.folder.look(subdir, filename)
        if found.sha256 is not None:
            return found
        try:
            body = self.http.get(self.status_url)
            doc = json.loads(body) if body is not None else None
        except (FetchError, ValueError) as exc:
            return Observation(
                skipped=found.skipped,
                detail=found.detail,
                error=f"daemon status: {exc}",
                broken=found.broken,
                broken_sha256=found.broken_sha256,
            )
        if not is_status_document(doc):
            return Observation(
                skipped=found.skipped,
                detail=found.detail,
                error=f"{self.status_url}: no status document",
                broken=found.broken,
                broken_sha256=found.broken_sha256,
            )
        assert isinstance(doc, dict)
        notes = [found.detail] if found.detail else []
        skipped, pending_here = None, False
        for entry in doc["subdirs"]:
            if isinstance(entry, dict) and entry.get("subdir") == subdir:
                for item in entry.get("skipped") or ():
                    if isinstance(item, dict) and item.get("path") in (
                        filename,
                        f"{subdir}/{filename}",
                    ):
                        reason, message = (
                            item.get("reason") or "unreadable",
                            item.get("message") or "",
                        )
                        skipped = f"{reason}: {message}" if message else reason
                if entry.get("error"):
                    notes.append(f"the daemon's last run of {subdir} failed: {entry['error']}")
        for pending in doc["pending"]:
            if isinstance(pending, dict) and pending.get("subdir") == subdir:
                notes.append(f"the daemon has {pending.get('files', '?')} file(s) pending for {subdir}")
                pending_here = True
        if not doc["ready"]:
            notes.append("the daemon's start-up index is in progress")
        # the folder's sqlite cache, when there is one, says so about the file there now (a
        # file replaced since is not broken yet); else the daemon's last run, when nothing is
        # pending for the subdir (a re-upload it has not read yet would be)
        if self.folder.has_cache(subdir):
            broken = found.broken
        else:
            broken = skipped is not None and not pending_here and bool(doc["ready"])
        return Observation(skipped=skipped or found.skipped, detail="; ".join(notes), error=found.error, broken=broken,
                           broken_sha256=found.broken_sha256 if found.broken else self.folder.sha256(subdir, filename) if broken else None)  # fmt: skip


def channel_of(doc: dict[str, Any]) -> Path:
    return Path(os.fsdecode(str(doc["channel"])))
