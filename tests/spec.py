"""The expected outputs, derived from channel-format.md independently of the product.

Nothing here imports conda_indexd or conda-package-streaming: archives are read with
tarfile/zipfile/zstandard, checksums are computed with hashlib over the whole file.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import os
import sqlite3
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import zstandard

# channel-format.md §2.2: keys deleted from info/index.json.
FILTERED_KEYS = frozenset({"arch", "has_prefix", "mtime", "platform", "ucs", "requires_features", "binstar", "target-triplet", "machine", "operatingsystem"})

# §1: conda's known subdirs.
KNOWN_SUBDIRS = (
    "noarch",
    "linux-32",
    "linux-64",
    "linux-aarch64",
    "linux-armv6l",
    "linux-armv7l",
    "linux-ppc64",
    "linux-ppc64le",
    "linux-riscv64",
    "linux-s390x",
    "osx-64",
    "osx-arm64",
    "win-32",
    "win-64",
    "win-arm64",
    "zos-z",
    "emscripten-wasm32",
    "wasi-wasm32",
    "freebsd-64",
)


def dumps(obj: Any) -> str:
    """§2.3: sorted keys, compact separators, ensure_ascii, no trailing newline."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _member(names_and_reader: Iterable[tuple[str, Any]], wanted: str) -> bytes | None:
    for name, read in names_and_reader:
        if name.removeprefix("./") == wanted:
            return read()
    return None


def read_info_member(path: Path, member: str = "info/index.json") -> bytes | None:
    """One info/ member of a valid archive, read without the product's code."""
    path = Path(path)
    if path.name.endswith(".tar.bz2"):
        with tarfile.open(fileobj=io.BytesIO(bz2.decompress(path.read_bytes())), mode="r:") as tar:
            for ti in tar.getmembers():
                if ti.name.removeprefix("./") == member and ti.isfile():
                    return tar.extractfile(ti).read()
        return None
    stem = path.name[: -len(".conda")]
    with zipfile.ZipFile(path) as zf:
        raw = zf.read(f"info-{stem}.tar.zst")
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for ti in tar.getmembers():
            if ti.name.removeprefix("./") == member and ti.isfile():
                return tar.extractfile(ti).read()
    return None


def read_index_json(path: Path) -> dict[str, Any]:
    raw = read_info_member(path, "info/index.json")
    assert raw is not None, f"{path} has no info/index.json"
    return json.loads(raw)


def checksums(path: Path) -> dict[str, Any]:
    data = Path(path).read_bytes()
    return {
        "md5": hashlib.md5(data).hexdigest(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": os.stat(path).st_size,
    }


TIMESTAMPS_DB = ".cache/conda-indexd-timestamps.db"  # docs/indexed-timestamp.md: beside cache.db


def stored_indexed_timestamp(path: Path, sha256: str) -> int | None:
    """CEP-47: the value conda-indexd keeps for this file and sha256, read with sqlite3
    from the subdir's timestamps table (None: no table, as with --no-indexed-timestamp
    on a channel never indexed with it, or no row)."""
    db_path = Path(path).parent / TIMESTAMPS_DB
    if not db_path.exists():
        return None
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT indexed_timestamp FROM indexed_timestamp WHERE path = ? AND sha256 = ?", (Path(path).name, sha256)).fetchone()
    finally:
        db.close()
    return row[0] if row else None


def expected_record(path: Path, index: dict[str, Any] | None = None, *, stamped: bool | None = None) -> dict[str, Any]:
    """§2.2: index.json minus the filtered keys, plus md5, sha256, size; and (CEP-47)
    the indexed_timestamp stored for the file's sha256 when there is one (`stamped`
    None), always (True: missing is an error) or never (False)."""
    index = read_index_json(path) if index is None else index
    record = {k: v for k, v in index.items() if k not in FILTERED_KEYS}
    record.update(checksums(path))
    if stamped is not False:
        record.pop("indexed_timestamp", None)  # a builder's value is never published
        value = stored_indexed_timestamp(path, record["sha256"])
        if value is None and stamped:
            raise AssertionError(f"no indexed_timestamp stored for {path}")
        if value is not None:
            record["indexed_timestamp"] = value
    return record


def expected_repodata_doc(subdir: str, packages: Iterable[Path], *, base_url: str | None = None, stamped: bool | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"info": {"subdir": subdir}, "packages": {}, "packages.conda": {}, "removed": [], "repodata_version": 1}
    if base_url is not None:
        doc["info"]["base_url"] = f"{base_url.rstrip('/')}/{subdir}/"
        doc["repodata_version"] = 2
    for path in packages:
        path = Path(path)
        section = "packages.conda" if path.name.endswith(".conda") else "packages"
        doc[section][path.name] = expected_record(path, stamped=stamped)
    return doc


def expected_repodata_bytes(subdir: str, packages: Iterable[Path], *, base_url: str | None = None, stamped: bool | None = None) -> bytes:
    return dumps(expected_repodata_doc(subdir, packages, base_url=base_url, stamped=stamped)).encode("ascii")


def expected_run_exports_bytes(subdir: str, packages: Iterable[Path]) -> bytes:
    """§6.2: CEP-12 run_exports.json; a package without run_exports gets {}."""
    doc: dict[str, Any] = {"info": {"subdir": subdir, "version": 1}, "packages": {}, "packages.conda": {}}
    for path in packages:
        path = Path(path)
        raw = read_info_member(path, "info/run_exports.json")
        section = "packages.conda" if path.name.endswith(".conda") else "packages"
        doc[section][path.name] = {"run_exports": json.loads(raw) if raw else {}}
    return dumps(doc).encode("ascii")


def package_files(folder: Path) -> list[Path]:
    """Package files directly in folder (not dotfiles, not folders)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.endswith((".conda", ".tar.bz2")) and not p.name.startswith("."))
