"""CEP-16 sharded repodata (docs/spec §5, §8.2): encoding and planning, both pure.

Encoding is pure, from cache rows to bytes. A shard is
`zstd(msgpack({"packages": {...}, "packages.conda": {...}}))` at zstd's default level 3,
named by the sha256 of those compressed bytes. Records keep the cached index_json key
order (filtered index.json, then md5, sha256, size), get `run_exports` appended (`{}`
when none), and carry md5/sha256 as raw bytes, as conda-index 0.13 does.

Upkeep, per subdir (planned here, written by pipeline/shardstore.ShardStore):
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

import hashlib
import itertools
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # conda-package-streaming depends on the backport
    from backports import zstd  # type: ignore[import-not-found,no-redef]

from conda_indexd.formats import patches, revisions, timestamps
from conda_indexd.formats.repodata import subdir_base_url
from conda_indexd.model import RecordRow, ShardKey
from conda_indexd.names import SHARD_FILE, compact_json, section_of, utc_timestamp
from conda_indexd.names import SHARD_INDEX as SHARD_INDEX  # re-exported: tests and tools decode it
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

SHARDS_BASE_URL = "./shards/"
# Bump when the same rows would encode to different shard bytes: it is part of every
# fingerprint, so all shards are rebuilt once after an upgrade that changes encoding.
ENCODING = 2  # 2: CEP-47 indexed_timestamp and CEP-48 v3 placement


def shard_record(index_json_text: str, run_exports_text: str | None) -> dict[str, Any]:
    """`index_json_text` may be a record source (timestamps.source): the
    indexed_timestamp then follows the index.json keys, before run_exports."""
    record = timestamps.record(index_json_text) if "\0" in index_json_text else json.loads(index_json_text)
    record["run_exports"] = (json.loads(run_exports_text) if run_exports_text else None) or {}
    for key in ("md5", "sha256"):
        if isinstance(record.get(key), str):
            record[key] = bytes.fromhex(record[key])
    return record


def shard_document(rows: Iterable[tuple[str, str, str | None]], *, all_v3: bool = False) -> dict[str, dict[str, Any]]:
    """{packages, packages.conda} from (filename, index_json text, run_exports text) rows
    (before patches: see encode_shard for the v3 map)."""
    doc: dict[str, dict[str, Any]] = {"packages": {}, "packages.conda": {}}
    for fn, index_text, run_exports_text in sorted(rows, key=lambda r: r[0]):
        section = section_of(fn)
        if section is not None:
            doc[section][fn] = shard_record(index_text, run_exports_text)
    return doc


def encode_shard(
    rows: Iterable[tuple[str, str, str | None]],
    instructions: dict[str, Any] | None = None,
    *,
    ops: dict[str, list[patches.Op]] | None = None,
    all_v3: bool = False,
) -> tuple[bytes, bytes]:
    """(compressed shard bytes, its 32-byte sha256); patched when `instructions` are
    given (or their patches.per_record `ops`), record by record; a `removed` list only
    when something was removed, as conda-index. Records that need CEP-48's v3 map (all
    with `all_v3`) are only in `v3`, keyed by filename without extension, with
    conda-index's sections (conda, tar.bz2, whl)."""
    doc = shard_document(rows)
    ops = patches.per_record(instructions) if ops is None else ops
    removed = []
    v3: dict[str, dict[str, Any]] = {"conda": {}, "tar.bz2": {}, "whl": {}}
    for section in ("packages", "packages.conda"):
        records = doc[section]
        for fn in list(records):
            if fn in ops and patches.patch_record(records[fn], ops[fn]):
                del records[fn]
                removed.append(fn)
                continue
            if all_v3 or revisions.required(records[fn]) == revisions.V3:
                where = revisions.v3_key(fn)
                record = records.pop(fn)
                if where is not None:
                    v3[where[0]][where[1]] = record
    if removed:
        doc["removed"] = sorted(removed)  # type: ignore[assignment]
    if all_v3 or any(v3.values()):
        doc["v3"] = {section: dict(sorted(records.items())) for section, records in v3.items()}
    data = zstd.compress(msgpack.packb(doc))
    return data, hashlib.sha256(data).digest()


def encode_index(
    subdir: str,
    shards: dict[str, bytes],
    *,
    base_url: str | None = None,
    created: str | None = None,
    shards_base_url: str = SHARDS_BASE_URL,
    revisions: dict[str, Any] | None = None,
    relations: dict[str, str] | None = None,
) -> bytes:
    """repodata_shards.msgpack.zst: version 1, info, and {name: digest} ordered by name;
    `revisions`: CEP-48 info.repodata_revisions, `relations`: CEP-42
    info.channel_relations, as in repodata.json."""
    info = index_info(subdir, base_url, shards_base_url, revisions, relations)
    index = {
        "version": 1,
        "info": {  # conda-index's key order: created_at before subdir, then repodata_revisions
            "base_url": info["base_url"],
            "shards_base_url": info["shards_base_url"],
            "created_at": created or utc_timestamp(),
            "subdir": subdir,
            **({"repodata_revisions": revisions} if revisions is not None else {}),
            **({"channel_relations": relations} if relations else {}),
        },
        "shards": {name: shards[name] for name in sorted(shards)},
    }
    return zstd.compress(msgpack.packb(index))


def decode(data: bytes) -> Any:
    return msgpack.unpackb(zstd.decompress(data))


def fingerprint(rows: Iterable[tuple[str, str]], salt: str = "") -> str:
    """What a name's shard depends on: its (filename, archive sha256) pairs, each sha256
    followed by the digest of the patch operations on that file when there are any
    (fingerprints(ops=...)), and `salt`.

    The archive's sha256 fixes every byte of its metadata, so equal fingerprints mean
    an equal shard (for the same ENCODING), and the shard need not be re-encoded.
    """
    h = hashlib.sha256(f"encoding {ENCODING}\n{salt}\n".encode())
    for fn, sha in sorted(rows):
        h.update(f"{fn}\0{sha}\n".encode())
    return h.hexdigest()[:32]


def fingerprints(keys: Iterable[tuple[str, str, str]], salt: str = "", ops: dict[str, list[patches.Op]] | None = None) -> dict[str, str]:
    """{name: fingerprint} from (name, filename, sha256) rows ordered by name; `ops`
    (patches.per_record) salts only the names whose files they touch."""
    ops = ops or {}
    return {
        name: fingerprint(((fn, f"{sha}+{patches.ops_digest(ops[fn])}" if fn in ops else sha) for _, fn, sha in rows), salt)
        for name, rows in itertools.groupby(keys, key=lambda r: r[0])
    }


# --- planning (pure): which names to encode, and their new shards ----------------------


@dataclass
class Remembered:
    """What was published for one name: its fingerprint, shard hash (hex) and size."""

    fingerprint: str
    digest: str
    size: int


@dataclass
class Saved:
    """The state as it was last saved or loaded (what a journal line is the change from)."""

    size: int  # bytes of the saved state: a line is appended only while it is this long
    snapshot: int  # bytes of its snapshot line
    remembered: dict[str, Remembered]
    unreferenced: dict[str, float]
    salt: str
    patched: set[str] | None


JOURNAL_SHARE = 4  # a new snapshot once the journal lines are over 1/JOURNAL_SHARE of it ...
JOURNAL_MIN = 64 << 10  # ... and over this many bytes


@dataclass
class ShardState:
    """What the upkeep remembers between runs (kept with the cache, see shardstore).

    Saved as JSON lines: the first line is the whole state (version 1, as before the
    journal), each later one `<crc32 hex> <json>` is what one save changed (names set or
    dropped, unreferenced digests set or dropped, the salt and patched names when they
    changed). A line that is not whole or fails its crc ends the state there: the state
    is then older than the shards, which only means more names are encoded again (a
    remembered fingerprint is checked against the keys before a shard is kept)."""

    remembered: dict[str, Remembered] = field(default_factory=dict)
    unreferenced: dict[str, float] = field(default_factory=dict)  # digest -> since
    salt: str = ""  # digest of the patch instructions the remembered fingerprints saw
    patched: set[str] | None = None  # the names those instructions touch (None: not known)
    saved: Saved | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_bytes(cls, data: bytes | None) -> ShardState:
        """The saved state; an empty one when there is none or it is unreadable
        (then every shard is checked again, and nothing is rewritten needlessly)."""
        if data is None:
            return cls()
        try:
            first = data.find(b"\n")
            end = len(data) if first < 0 else first + 1
            state = json.loads(data[:end])
            if state.get("version") != 1:
                return cls()
            self = cls(
                {name: Remembered(*entry) for name, entry in state["names"].items()},
                {h: float(t) for h, t in state["unreferenced"].items()},
                str(state.get("salt", "")),
                set(state["patched"]) if isinstance(state.get("patched"), list) else None,
            )
            snapshot = end
            for change, at in journal_lines(data, end):
                self._apply(change)
                end = at
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable shard state; shards are checked again", error=str(exc))
            return cls()
        if first >= 0:  # a state saved before the journal has no newline: the next save is a snapshot
            self.mark_saved(end, snapshot)
        return self

    def _apply(self, change: dict[str, Any]) -> None:
        for name in change["drop"]:
            self.remembered.pop(name, None)
        self.remembered.update({name: Remembered(*entry) for name, entry in change["set"].items()})
        for digest in change["unreferenced_drop"]:
            self.unreferenced.pop(digest, None)
        self.unreferenced.update({h: float(t) for h, t in change["unreferenced_set"].items()})
        if "salt" in change:
            self.salt = str(change["salt"])
        if "patched" in change:
            self.patched = set(change["patched"]) if isinstance(change["patched"], list) else None

    def to_bytes(self) -> bytes:
        """The snapshot line (the whole state)."""
        state = {
            "names": {name: [r.fingerprint, r.digest, r.size] for name, r in self.remembered.items()},
            "salt": self.salt,
            **({"patched": sorted(self.patched)} if self.patched is not None else {}),
            "unreferenced": self.unreferenced,
            "version": 1,
        }
        return compact_json(state).encode() + b"\n"

    def change_bytes(self) -> bytes | None:
        """The journal line that brings the saved state to this one (b"": nothing
        changed); None when a snapshot is due (nothing saved yet, or the journal is big)."""
        saved = self.saved
        if saved is None:
            return None
        old, new = saved.remembered, self.remembered
        change: dict[str, Any] = {
            "set": {name: [r.fingerprint, r.digest, r.size] for name, r in new.items() if (o := old.get(name)) is not r and o != r},
            "drop": sorted(old.keys() - new.keys()),
            "unreferenced_set": {h: t for h, t in self.unreferenced.items() if saved.unreferenced.get(h) != t},
            "unreferenced_drop": sorted(saved.unreferenced.keys() - self.unreferenced.keys()),
        }
        if self.salt != saved.salt:
            change["salt"] = self.salt
        if self.patched != saved.patched:
            change["patched"] = sorted(self.patched) if self.patched is not None else None
        if not any(change.values()) and "salt" not in change and "patched" not in change:
            return b""
        line = journal_line(change)
        if saved.size + len(line) - saved.snapshot > max(saved.snapshot // JOURNAL_SHARE, JOURNAL_MIN):
            return None
        return line

    def mark_saved(self, size: int, snapshot: int) -> None:
        """The saved state is now this one, `size` bytes long, the first `snapshot` its snapshot line."""
        patched = set(self.patched) if self.patched is not None else None
        self.saved = Saved(size, snapshot, dict(self.remembered), dict(self.unreferenced), self.salt, patched)


def journal_line(change: dict[str, Any]) -> bytes:
    text = compact_json(change).encode()
    return b"%08x " % zlib.crc32(text) + text + b"\n"


def journal_lines(data: bytes, start: int) -> Iterator[tuple[dict[str, Any], int]]:
    """(change, offset after its line) of each whole journal line from `start`; stops at
    the first one without its newline or whose crc32 does not match (a torn tail)."""
    at = start
    while True:
        end = data.find(b"\n", at)
        if end < 0 or end - at < 9 or data[at + 8 : at + 9] != b" ":
            return
        text = data[at + 9 : end]
        try:
            if int(data[at : at + 8], 16) != zlib.crc32(text):
                return
        except ValueError:
            return
        yield json.loads(text), end + 1
        at = end + 1


@dataclass
class ShardPlan:
    salt: str
    patched: set[str]  # the names the instructions touch
    kept: dict[str, Remembered]  # names whose shard stays as it is
    todo: dict[str, str]  # names to encode -> their new fingerprint


def ops_salt(ops: dict[str, list[patches.Op]]) -> str:
    """Which per-record patches the fingerprints were computed with ("" for none: the
    same fingerprints as an unpatched channel)."""
    return hashlib.sha256(compact_json(sorted(ops.items())).encode()).hexdigest()[:16] if ops else ""


class Keys(Protocol):
    """The published (name, filename, sha256) keys, by name (RecordMemo, KeyList)."""

    def shard_names(self) -> list[str]: ...
    def shard_keys(self, names: Iterable[str] | None = None) -> Iterator[ShardKey]: ...
    def name_of(self, fn: str) -> str | None: ...


class KeyList:
    """Keys held as a list ordered by name."""

    def __init__(self, keys: Iterable[ShardKey]):
        self.keys = sorted(keys)

    def shard_names(self) -> list[str]:
        return sorted({k.name for k in self.keys})

    def name_of(self, fn: str) -> str | None:
        return next((k.name for k in self.keys if k.path == fn), None)

    def shard_keys(self, names: Iterable[str] | None = None) -> Iterator[ShardKey]:
        wanted = None if names is None else set(names)
        return (k for k in self.keys if wanted is None or k.name in wanted)


STAMPED = "+indexed_timestamp"  # salt of every fingerprint when records carry an indexed_timestamp
ALL_V3 = "+v3"  # ... and when every record goes into the v3 map (--repodata-next)


def plan_shards(
    state: ShardState,
    keys: Keys | list[ShardKey],
    changed: set[str] | None,
    instructions: dict[str, Any] | None,
    on_disk: dict[str, int],
    *,
    stamped: bool = False,
    all_v3: bool = False,
) -> ShardPlan:
    """Which names keep their shard. `keys`: (name, filename, sha256) of every published
    package; `changed`: the only names whose files changed since the
    state was saved (None: any), the others keep their remembered fingerprint.
    Patches salt only the fingerprints of the names whose files they touch, so a patch
    change re-encodes only those names' shards."""
    if isinstance(keys, list):
        keys = KeyList(keys)
    ops = patches.per_record(instructions)
    every = (STAMPED if stamped else "") + (ALL_V3 if all_v3 else "")  # salts every name's fingerprint (the records' shape)
    salt = ops_salt(ops) + every
    patched = {name for fn in ops if (name := keys.name_of(fn)) is not None}
    if salt != state.salt:
        # other patches: the names the old or the new ones touch get other fingerprints
        # (an untouched name's fingerprint has no patch in it); indexed_timestamp
        # turned on or off: every name's
        shape_changed = (state.salt[state.salt.find("+") :] if "+" in state.salt else "") != every  # ops_salt is hex: no "+"
        changed = None if changed is None or state.patched is None or shape_changed else changed | state.patched | patched
    if changed is None:
        current = fingerprints(keys.shard_keys(), every, ops=ops)
    else:
        remembered = state.remembered
        names = keys.shard_names()
        current = fingerprints(keys.shard_keys([n for n in names if n in changed or n not in remembered]), every, ops=ops)
        current.update({n: remembered[n].fingerprint for n in names if n not in current})
    kept, todo = plan(current, state.remembered, on_disk)
    return ShardPlan(salt, patched, kept, todo)


def plan(current: dict[str, str], remembered: dict[str, Remembered], on_disk: dict[str, int]) -> tuple[dict[str, Remembered], dict[str, str]]:
    """Split names into (kept: {name: Remembered}, to encode: {name: fingerprint})."""
    kept, todo = {}, {}
    for name, fp in current.items():
        old = remembered.get(name)
        if old is not None and old.fingerprint == fp and on_disk.get(old.digest) == old.size:
            kept[name] = old
        else:
            todo[name] = fp
    return kept, todo


def encode_shards(
    todo: dict[str, str], rows: Iterable[RecordRow], instructions: dict[str, Any] | None, *, stamped: bool = False, all_v3: bool = False
) -> dict[str, tuple[bytes, Remembered]]:
    """{name: (shard bytes, what to remember)} for the names to encode, from their rows
    (`stamped`: with their indexed_timestamp)."""
    encoded = {}
    ops = patches.per_record(instructions)
    ordered = sorted((row for row in rows if row.name in todo), key=lambda r: (r.name, r.path))
    for name, group in itertools.groupby(ordered, key=lambda r: r.name):
        data, digest = encode_shard(
            ((r.path, timestamps.source(r.index_json, r.indexed_timestamp, stamped), r.run_exports) for r in group), ops=ops, all_v3=all_v3
        )
        encoded[name] = (data, Remembered(todo[name], digest.hex(), len(data)))
    return encoded


def shard_file(digest_hex: str) -> str:
    return f"{digest_hex}.msgpack.zst"


def shard_digests(files: dict[str, int]) -> dict[str, int]:
    """{hex digest: size} of the shard files among a folder's {name: size}."""
    return {m.group(1): size for name, size in files.items() if (m := SHARD_FILE.match(name))}


def index_info(
    subdir: str,
    base_url: str | None,
    shards_base_url: str = SHARDS_BASE_URL,
    revisions: dict[str, Any] | None = None,
    relations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The shard index's `info`, created_at aside."""
    info: dict[str, Any] = {
        "base_url": subdir_base_url(base_url, subdir) if base_url else "",
        "shards_base_url": shards_base_url,
        "subdir": subdir,
    }
    if revisions is not None:
        info["repodata_revisions"] = revisions
    if relations:
        info["channel_relations"] = relations
    return info


def index_is_current(
    data: bytes | None,
    subdir: str,
    shards: dict[str, bytes],
    base_url: str | None,
    revisions: dict[str, Any] | None = None,
    relations: dict[str, str] | None = None,
) -> bool:
    """Whether the published index already says exactly this (created_at aside)."""
    if data is None:
        return False
    try:
        index = decode(data)
        info = dict(index["info"])
        info.pop("created_at")
        return bool(index["version"] == 1 and info == index_info(subdir, base_url, revisions=revisions, relations=relations) and index["shards"] == shards)
    except Exception:  # unreadable or foreign: replace it
        return False
