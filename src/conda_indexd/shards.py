"""CEP-16 sharded repodata (channel-format.md §5, §8.2): encoding and incremental upkeep.

Encoding is pure, from cache rows to bytes. A shard is
`zstd(msgpack({"packages": {...}, "packages.conda": {...}}))` at zstd's default level 3,
named by the sha256 of those compressed bytes. Records keep the cached index_json key
order (filtered index.json, then md5, sha256, size), get `run_exports` appended (`{}`
when none), and carry md5/sha256 as raw bytes, as conda-index 0.13 does.

Upkeep (`ShardStore`), per subdir:
1. Each package name gets a fingerprint of its (filename, archive sha256) pairs. A name
   whose fingerprint equals the one remembered in `.cache/shards-state.json`, and whose
   shard file is still on disk with the remembered size, keeps its shard: the archive
   sha256 fixes every byte of the metadata the shard is built from, so the shard would
   encode to the same bytes. Only the other names are encoded.
2. New shard files are written under a temporary name, fsynced and renamed into
   `shards/`; a file already there with the same name is kept after its bytes are checked.
3. `repodata_shards.msgpack.zst` is replaced only when its name->hash map or info (other
   than created_at) changed, so a no-op run rewrites nothing.
4. After repodata.json is published, shard files no longer named by the index are
   deleted once they have been unreferenced for the retention period.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # conda-package-streaming depends on the backport
    from backports import zstd  # type: ignore[import-not-found,no-redef]

from . import patches, publish
from .cache import SubdirCache
from .logs import get_logger
from .repodata import section_of, subdir_base_url

log = get_logger(__name__)

SHARDS_BASE_URL = "./shards/"
SHARDS_DIR = "shards"
SHARD_INDEX = "repodata_shards.msgpack.zst"
STATE_FILE = "shards-state.json"
# Bump when the same rows would encode to different shard bytes: it is part of every
# fingerprint, so all shards are rebuilt once after an upgrade that changes encoding.
ENCODING = 1
_SHARD_FILE = re.compile(r"^([0-9a-f]{64})\.msgpack\.zst$")


def shard_record(index_json_text: str, run_exports_text: str | None) -> dict[str, Any]:
    record = json.loads(index_json_text)
    record["run_exports"] = (json.loads(run_exports_text) if run_exports_text else None) or {}
    for key in ("md5", "sha256"):
        if isinstance(record.get(key), str):
            record[key] = bytes.fromhex(record[key])
    return record


def shard_document(rows: Iterable[tuple[str, str, str | None]]) -> dict[str, dict[str, Any]]:
    """{packages, packages.conda} from (filename, index_json text, run_exports text) rows."""
    doc: dict[str, dict[str, Any]] = {"packages": {}, "packages.conda": {}}
    for fn, index_text, run_exports_text in sorted(rows, key=lambda r: r[0]):
        section = section_of(fn)
        if section is not None:
            doc[section][fn] = shard_record(index_text, run_exports_text)
    return doc


def encode_shard(
    rows: Iterable[tuple[str, str, str | None]], instructions: dict[str, Any] | None = None
) -> tuple[bytes, bytes]:
    """(compressed shard bytes, its 32-byte sha256); patched when `instructions` are
    given (a `removed` list only when something was removed, as conda-index)."""
    doc = shard_document(rows)
    if instructions:
        patches.apply(doc, instructions)
        if not doc["removed"]:
            del doc["removed"]
    data = zstd.compress(msgpack.packb(doc))
    return data, hashlib.sha256(data).digest()


def created_at(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def encode_index(
    subdir: str,
    shards: dict[str, bytes],
    *,
    base_url: str | None = None,
    created: str | None = None,
    shards_base_url: str = SHARDS_BASE_URL,
) -> bytes:
    """repodata_shards.msgpack.zst: version 1, info, and {name: digest} ordered by name."""
    info = index_info(subdir, base_url, shards_base_url)
    index = {
        "version": 1,
        "info": {  # conda-index's key order: created_at before subdir
            "base_url": info["base_url"],
            "shards_base_url": info["shards_base_url"],
            "created_at": created or created_at(),
            "subdir": subdir,
        },
        "shards": {name: shards[name] for name in sorted(shards)},
    }
    return zstd.compress(msgpack.packb(index))


def decode(data: bytes) -> Any:
    return msgpack.unpackb(zstd.decompress(data))


def fingerprint(rows: Iterable[tuple[str, str]], salt: str = "") -> str:
    """What a name's shard depends on: its (filename, archive sha256) pairs, and `salt`
    (the digest of the patch instructions applied to every shard).

    The archive's sha256 fixes every byte of its metadata, so equal fingerprints mean
    an equal shard (for the same ENCODING), and the shard need not be re-encoded.
    """
    h = hashlib.sha256(f"encoding {ENCODING}\n{salt}\n".encode())
    for fn, sha in sorted(rows):
        h.update(f"{fn}\0{sha}\n".encode())
    return h.hexdigest()[:32]


def fingerprints(keys: Iterable[tuple[str, str, str]], salt: str = "") -> dict[str, str]:
    """{name: fingerprint} from (name, filename, sha256) rows ordered by name."""
    return {
        name: fingerprint(((fn, sha) for _, fn, sha in rows), salt)
        for name, rows in itertools.groupby(keys, key=lambda r: r[0])
    }


# --- upkeep on disk -------------------------------------------------------------------


@dataclass
class Remembered:
    """What was published for one name: its fingerprint, shard hash (hex) and size."""

    fingerprint: str
    digest: str
    size: int


@dataclass
class ShardsReport:
    names: int = 0
    encoded: int = 0  # shards built this run
    written: list[str] = field(default_factory=list)  # files replaced, relative to the subdir
    deleted: list[str] = field(default_factory=list)  # unreferenced shards past retention


def plan(
    current: dict[str, str], remembered: dict[str, Remembered], on_disk: dict[str, int]
) -> tuple[dict[str, Remembered], dict[str, str]]:
    """Split names into (kept: {name: Remembered}, to encode: {name: fingerprint})."""
    kept, todo = {}, {}
    for name, fp in current.items():
        old = remembered.get(name)
        if old is not None and old.fingerprint == fp and on_disk.get(old.digest) == old.size:
            kept[name] = old
        else:
            todo[name] = fp
    return kept, todo


def shard_files(folder: Path) -> dict[str, int]:
    """{hex digest: size} of the shard files in `folder`."""
    found = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            match = _SHARD_FILE.match(entry.name)
            if match and entry.is_file(follow_symlinks=False):
                found[match.group(1)] = entry.stat().st_size
    return found


def index_info(subdir: str, base_url: str | None, shards_base_url: str = SHARDS_BASE_URL) -> dict[str, str]:
    """The shard index's `info`, created_at aside."""
    return {
        "base_url": subdir_base_url(base_url, subdir) if base_url else "",
        "shards_base_url": shards_base_url,
        "subdir": subdir,
    }


def index_is_current(path: Path, subdir: str, shards: dict[str, bytes], base_url: str | None) -> bool:
    """Whether the published index already says exactly this (created_at aside)."""
    try:
        index = decode(path.read_bytes())
        info = dict(index["info"])
        info.pop("created_at")
        return index["version"] == 1 and info == index_info(subdir, base_url) and index["shards"] == shards
    except FileNotFoundError:
        return False
    except Exception:  # unreadable or foreign: replace it
        return False


class ShardStore:
    """The shards of one subdir's output folder and what was remembered about them."""

    def __init__(self, outdir: Path, state_path: Path):
        self.outdir = outdir
        self.folder = outdir / SHARDS_DIR
        self.state_path = state_path
        self.remembered: dict[str, Remembered] = {}
        self.unreferenced: dict[str, float] = {}
        self.salt = ""  # digest of the patch instructions the remembered shards carry
        self.on_disk: dict[str, int] | None = None  # shard files seen by publish()
        self._load()

    def _load(self) -> None:
        try:
            state = json.loads(self.state_path.read_text())
            if state.get("version") != 1:
                return
            self.remembered = {name: Remembered(*entry) for name, entry in state["names"].items()}
            self.unreferenced = {h: float(t) for h, t in state["unreferenced"].items()}
            self.salt = str(state.get("salt", ""))
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable shard state; shards are checked again", path=str(self.state_path), error=str(exc))
            self.remembered, self.unreferenced = {}, {}

    def _state_bytes(self) -> bytes:
        state = {
            "version": 1,
            "names": {
                name: [r.fingerprint, r.digest, r.size] for name, r in sorted(self.remembered.items())
            },
            "unreferenced": dict(sorted(self.unreferenced.items())),
            "salt": self.salt,
        }
        return json.dumps(state, separators=(",", ":")).encode()

    def save(self) -> None:
        self.state_path.parent.mkdir(exist_ok=True)
        publish.publish(self.state_path, self._state_bytes(), sync_dir=False)

    def publish(
        self,
        cache: SubdirCache,
        subdir: str,
        base_url: str | None,
        report: ShardsReport,
        keys: Iterable[tuple[str, str, str]] | None = None,
        dirty: set[str] | None = None,
        instructions: dict[str, Any] | None = None,
    ) -> None:
        """Steps 1-3: new shard files, then the index (see the module doc). `keys` are
        the (name, filename, sha256) of the published packages ordered by name, when the
        caller already has them (the indexer's RecordMemo); else they are queried.
        `dirty`, when given, names the only packages whose files changed since the state
        was saved: the others keep their remembered fingerprint without recomputing it."""
        self.folder.mkdir(exist_ok=True)
        publish.clean_stale_temps(self.folder)  # left by a killed run (we hold the channel lock)
        publish.clean_stale_temps(self.state_path.parent)
        keys = list(cache.shard_keys() if keys is None else keys)
        salt = hashlib.sha256(patches.serialize(instructions)).hexdigest()[:16] if instructions else ""
        if salt != self.salt:
            dirty = None  # other patches: every shard's content may differ
        self.salt = salt
        if dirty is None:
            current = fingerprints(keys, salt)
        else:
            current = fingerprints((k for k in keys if k[0] in dirty or k[0] not in self.remembered), salt)
            current.update({name: self.remembered[name].fingerprint for name, _, _ in keys if name not in current})
        self.on_disk = shard_files(self.folder)
        kept, todo = plan(current, self.remembered, self.on_disk)
        wrote_shard = False
        if todo:
            paths = [fn for name, fn, _ in keys if name in todo]
            rows = sorted((name, fn, text, rx) for fn, text, name, rx in cache.records_for(paths))
            for name, group in itertools.groupby(rows, key=lambda r: r[0]):
                data, digest = encode_shard(((fn, text, rx) for _, fn, text, rx in group), instructions)
                filename = f"{digest.hex()}.msgpack.zst"
                # same_content() inside publish() checks an existing file's bytes
                if publish.publish(self.folder / filename, data, sync_dir=False):
                    report.written.append(f"{SHARDS_DIR}/{filename}")
                    wrote_shard = True
                kept[name] = Remembered(todo[name], digest.hex(), len(data))
                self.on_disk[digest.hex()] = len(data)
                report.encoded += 1
        if wrote_shard:
            publish.fsync_dir(self.folder)  # every shard is durable before the index names it
        self.remembered = kept
        report.names = len(kept)
        shards = {name: bytes.fromhex(r.digest) for name, r in kept.items()}
        index_path = self.outdir / SHARD_INDEX
        if not index_is_current(index_path, subdir, shards, base_url):
            publish.publish(index_path, encode_index(subdir, shards, base_url=base_url))
            report.written.append(SHARD_INDEX)

    def collect(self, retention: float, report: ShardsReport, now: float | None = None) -> None:
        """Step 4: delete shard files unreferenced for longer than `retention` seconds."""
        now = time.time() if now is None else now
        referenced = {r.digest for r in self.remembered.values()}
        unreferenced = {}
        on_disk = self.on_disk if self.on_disk is not None else shard_files(self.folder)
        for digest in list(on_disk):
            if digest in referenced:
                continue
            since = self.unreferenced.get(digest, now)
            if now - since >= retention:
                if publish.remove(self.folder / f"{digest}.msgpack.zst"):
                    report.deleted.append(f"{SHARDS_DIR}/{digest}.msgpack.zst")
            else:
                unreferenced[digest] = since
        self.unreferenced = unreferenced


def withdraw(outdir: Path) -> bool:
    """--no-write-shards: remove the index so clients stop preferring stale shards.
    The shard files stay (clients that cached the index may still ask for them)."""
    return publish.remove(outdir / SHARD_INDEX)
