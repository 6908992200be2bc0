"""Small real archives (.conda and .tar.bz2) for benchmark channels, from records.

Each archive holds info/index.json (the record, subdir set) and one small file, named
`<name>-<version>-<build>` as conda-index, rattler-index and conda-indexd expect.
"""

from __future__ import annotations

import bz2
import io
import json
import tarfile
import zipfile
from pathlib import Path

import zstandard

_ZSTD = zstandard.ZstdCompressor(level=3)


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 0
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def archive_bytes(filename: str, record: dict) -> bytes:
    index = json.dumps(record, indent=2, sort_keys=True).encode()
    payload = [("lib/" + record["name"] + ".txt", f"{filename}\n".encode())]
    if filename.endswith(".tar.bz2"):
        return bz2.compress(_tar([("info/index.json", index), *payload]), 1)
    stem = filename.removesuffix(".conda")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("metadata.json", b'{"conda_pkg_format_version": 2}')
        zf.writestr(f"pkg-{stem}.tar.zst", _ZSTD.compress(_tar(payload)))
        zf.writestr(f"info-{stem}.tar.zst", _ZSTD.compress(_tar([("info/index.json", index)])))
    return buf.getvalue()


def write_archive(folder: Path, filename: str, record: dict) -> Path:
    path = folder / filename
    path.write_bytes(archive_bytes(filename, record))
    return path
