"""Build conda package caches ("pkgs dirs") the way conda lays them out, for tests.

`add(pkgs, name, ...)` writes the tarball (`.conda` or `.tar.bz2`, real packages from
pkgbuild), the extracted folder (payload, `info/index.json`, `info/repodata_record.json`
as conda writes it: index.json + fn/url/channel/md5/sha256/size + `constrains: []`, with
`patch` applied as an origin channel's repodata patch would be), and the urls.txt line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conda_indexd.demo.pkgbuild import conda_bytes, index_json, tar_bz2_bytes

ORIGIN = "https://origin.example.org/conda-forge"


@dataclass
class Pkg:
    fn: str
    subdir: str
    index: dict[str, Any]
    data: bytes
    record: dict[str, Any] | None

    @property
    def stem(self) -> str:
        return self.fn.removesuffix(".conda").removesuffix(".tar.bz2")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()


def make_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "urls.txt").touch()
    (path / "urls").touch()
    (path / "cache").mkdir(exist_ok=True)
    (path / "cache" / "497deca9.json").write_text("{}")
    return path


def add(
    pkgs: Path,
    name: str,
    version: str = "1.0",
    build: str = "0",
    subdir: str = "noarch",
    *,
    ext: str = ".conda",
    depends: list[str] | None = None,
    tarball: bool = True,
    folder: bool = True,
    patch: dict[str, Any] | None = None,
    stale: bool = False,
    payload: str = "hello",
    **extra: Any,
) -> Pkg:
    index = index_json(name, version, build, subdir, depends=depends or [], **extra)
    fn = f"{name}-{version}-{build}{ext}"
    files = {f"share/{name}/payload.txt": f"{payload}\n".encode()}
    paths = {"paths": [{"_path": p, "path_type": "hardlink", "sha256": hashlib.sha256(d).hexdigest(), "size_in_bytes": len(d)}
                       for p, d in sorted(files.items())], "paths_version": 1}  # fmt: skip
    members = {**files, "info/files": "".join(p + "\n" for p in sorted(files)).encode()}
    data = conda_bytes(fn, index, members, paths_json=paths) if ext == ".conda" else tar_bz2_bytes(index, members, paths_json=paths)
    if tarball:
        (pkgs / fn).write_bytes(data)
    record = None
    if folder:
        stem = fn.removesuffix(ext)
        info = pkgs / stem / "info"
        info.mkdir(parents=True)
        (pkgs / stem / "share" / name).mkdir(parents=True)
        (pkgs / stem / "share" / name / "payload.txt").write_bytes(files[f"share/{name}/payload.txt"])
        (info / "index.json").write_text(json.dumps(index, indent=2))
        record = {k: v for k, v in index.items() if v is not None}
        record.update(constrains=[], fn=fn, channel=f"{ORIGIN}/{subdir}", url=f"{ORIGIN}/{subdir}/{fn}",
                      md5=hashlib.md5(data).hexdigest(), sha256=hashlib.sha256(data).hexdigest(), size=len(data))  # fmt: skip
        if stale:  # extracted from another build of the same name
            record.update(md5=hashlib.md5(b"other").hexdigest(), sha256=hashlib.sha256(b"other").hexdigest())
        record.update(patch or {})
        (info / "repodata_record.json").write_text(json.dumps(record, indent=2))
    with open(pkgs / "urls.txt", "a") as f:
        f.write(f"{ORIGIN}/{subdir}/{fn}\n")
    return Pkg(fn, subdir, index, data, record)


def tree_hashes(root: Path) -> dict[str, tuple[str, int, int]]:
    """{relative path: (sha256 or 'dir', mode, mtime_ns)} of every entry (byte-for-byte check)."""
    out: dict[str, tuple[str, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            if path.is_dir() and not path.is_symlink():
                out[rel] = ("dir", st.st_mode, st.st_mtime_ns)
            else:
                out[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mode, st.st_mtime_ns)
    return out


def _run(*argv: str) -> bool:
    return subprocess.run(argv, capture_output=True).returncode == 0


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """Make a pkgs dir read-only the way conda sees it (urls.txt not writable): a
    read-only bind mount as root (root may write any file), chmod otherwise."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [path, path / "urls.txt"]}
        (path / "urls.txt").chmod(0o444)
        path.chmod(0o555)
        try:
            yield path
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    if not (_run("mount", "--bind", str(path), str(path)) and _run("mount", "-o", "remount,ro,bind", str(path))):
        _run("umount", str(path))
        pytest.skip("a read-only pkgs dir needs a read-only bind mount as root, and mount failed here")
    try:
        yield path
    finally:
        _run("umount", str(path))


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "64m") -> Iterator[Path]:
    """A second filesystem (a small tmpfs), or skip."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)):
        pytest.skip("a second filesystem needs a tmpfs mount (root); not possible here")
    try:
        yield path
    finally:
        _run("umount", "-l", str(path))
