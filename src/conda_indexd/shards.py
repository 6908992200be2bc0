"""CEP-16 sharded repodata: pure functions from cache rows to shard and index bytes (§5).

Groundwork for the shards issue: encoding only; writing, incremental reuse and
retention come with the indexer wiring.

A shard is `zstd(msgpack({"packages": {...}, "packages.conda": {...}}))` at zstd's
default level 3, named by the sha256 of those compressed bytes. Records keep the cached
index_json key order (filtered index.json, then md5, sha256, size), get `run_exports`
appended (`{}` when none), and carry md5/sha256 as raw bytes, as conda-index 0.13 does.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from typing import Any

import msgpack

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # conda-package-streaming depends on the backport
    from backports import zstd  # type: ignore[import-not-found,no-redef]

from .repodata import section_of

SHARDS_BASE_URL = "./shards/"


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


def encode_shard(rows: Iterable[tuple[str, str, str | None]]) -> tuple[bytes, bytes]:
    """(compressed shard bytes, its 32-byte sha256)."""
    data = zstd.compress(msgpack.packb(shard_document(rows)))
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
    index = {
        "version": 1,
        "info": {
            "base_url": f"{base_url.rstrip('/')}/{subdir}/" if base_url else "",
            "shards_base_url": shards_base_url,
            "created_at": created or created_at(),
            "subdir": subdir,
        },
        "shards": {name: shards[name] for name in sorted(shards)},
    }
    return zstd.compress(msgpack.packb(index))


def decode(data: bytes) -> Any:
    return msgpack.unpackb(zstd.decompress(data))


def fingerprint(rows: Iterable[tuple[str, str]]) -> str:
    """What a name's shard depends on: its (filename, archive sha256) pairs.

    The archive's sha256 fixes every byte of its metadata, so equal fingerprints mean
    an equal shard (for the same code), and the shard need not be re-encoded.
    """
    h = hashlib.sha256()
    for fn, sha in sorted(rows):
        h.update(f"{fn}\0{sha}\n".encode())
    return h.hexdigest()
