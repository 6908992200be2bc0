"""Deterministic builders for real conda packages (`.conda` and `.tar.bz2`), in memory.

Used by `conda-indexd demo` to make a channel that needs nothing but this package, and
by the test suite's fixture factory (tests/pkgfactory.py), which adds broken variants.

- `index_json(name, version, build, subdir, depends=..., **extra)`: a typical
  `info/index.json` (with the keys conda-index filters out, such as arch and platform).
- `make_tar_bz2(path, index, files, ...)`, `make_conda(path, index, files, ...)`,
  `make_package(path, ...)` (chosen by the filename); `tar_bz2_bytes`/`conda_bytes` give
  the bytes instead.

`index` is the `info/index.json` content: a dict (written as JSON), raw `bytes`/`str`
(written as-is), or None (no `info/index.json` member). `files` maps archive paths to
bytes; keys under `info/` go into the info part (first in a `.tar.bz2`, the `info-`
component of a `.conda`), the others into the package part.

Every output is byte-for-byte reproducible: tar members have mtime 0, uid/gid 0, empty
owner names and fixed modes, in a fixed order; zip entries have a fixed date_time and
attributes; bz2 and zstd are deterministic for given input.
"""

from __future__ import annotations

import bz2
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import zstandard

ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o644
IndexArg = dict[str, Any] | bytes | str | None


# --- low-level pieces --------------------------------------------------------------------


def index_json(
    name: str,
    version: str = "1.0",
    build: str = "0",
    subdir: str = "noarch",
    *,
    build_number: int = 0,
    depends: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A typical `info/index.json`, including keys conda-index filters out (arch, platform)."""
    platform, _, arch = subdir.partition("-")
    doc: dict[str, Any] = {
        "arch": None if subdir == "noarch" else arch,
        "build": build,
        "build_number": build_number,
        "depends": list(depends or []),
        "license": "BSD-3-Clause",
        "name": name,
        "platform": None if subdir == "noarch" else platform,
        "subdir": subdir,
        "timestamp": 1700000000000,
        "version": version,
    }
    doc.update(extra)
    return doc


def as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, indent=2).encode("utf-8")


def info_members(
    index: IndexArg,
    files: dict[str, bytes] | None = None,
    *,
    about: Any = None,
    run_exports: Any = None,
    paths_json: Any = None,
    recipe_yaml: str | bytes | None = None,
    extra_info: list[tuple[str, bytes]] | None = None,
) -> list[tuple[str, bytes]]:
    """The `info/` members in archive order: index.json first, then the rest sorted, then
    `extra_info` verbatim (any name at all: `/abs`, `../x`, ``; unsafe-path cases)."""
    members: dict[str, bytes] = {}
    if index is not None:
        members["info/index.json"] = as_bytes(index)
    if about is not None:
        members["info/about.json"] = as_bytes(about)
    if run_exports is not None:
        members["info/run_exports.json"] = as_bytes(run_exports)
    if paths_json is not None:
        members["info/paths.json"] = as_bytes(paths_json)
    if recipe_yaml is not None:
        members["info/recipe/meta.yaml"] = as_bytes(recipe_yaml)
    for name, data in (files or {}).items():
        if name.startswith("info/"):
            members[name] = data
    first = [(n, d) for n, d in members.items() if n == "info/index.json"]
    rest = sorted((n, d) for n, d in members.items() if n != "info/index.json")
    return first + rest + list(extra_info or [])


def pkg_members(files: dict[str, bytes] | None) -> list[tuple[str, bytes]]:
    return sorted((n, d) for n, d in (files or {}).items() if not n.startswith("info/"))


def tar_bytes(members: list[tuple[str, bytes]], *, prefix: str = "") -> bytes:
    """An uncompressed tar of regular files, reproducible."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            ti = tarfile.TarInfo(prefix + name)
            ti.size = len(data)
            ti.mtime = 0
            ti.mode = 0o755 if name.startswith("bin/") else FILE_MODE
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.type = tarfile.REGTYPE
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def zstd_bytes(data: bytes, level: int = 3) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def zip_bytes(entries: list[tuple[str, bytes]]) -> bytes:
    """A STORED zip with fixed timestamps and attributes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            zi = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
            zi.compress_type = zipfile.ZIP_STORED
            zi.create_system = 3
            zi.external_attr = (0o100000 | FILE_MODE) << 16
            zf.writestr(zi, data)
    return buf.getvalue()


def conda_stem(filename: str) -> str:
    if not filename.endswith(".conda"):
        raise ValueError(f"not a .conda filename: {filename}")
    return filename[: -len(".conda")]


def write_file(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- valid packages ----------------------------------------------------------------------


def tar_bz2_bytes(
    index: IndexArg,
    files: dict[str, bytes] | None = None,
    *,
    about: Any = None,
    run_exports: Any = None,
    paths_json: Any = None,
    recipe_yaml: str | bytes | None = None,
    member_prefix: str = "",
    extra_info: list[tuple[str, bytes]] | None = None,
) -> bytes:
    members = info_members(
        index, files, about=about, run_exports=run_exports, paths_json=paths_json, recipe_yaml=recipe_yaml,
        extra_info=extra_info,
    ) + pkg_members(files)  # fmt: skip
    return bz2.compress(tar_bytes(members, prefix=member_prefix), 9)


def make_tar_bz2(
    path: str | Path,
    index: IndexArg,
    files: dict[str, bytes] | None = None,
    *,
    about: Any = None,
    run_exports: Any = None,
    paths_json: Any = None,
    recipe_yaml: str | bytes | None = None,
    member_prefix: str = "",
    extra_info: list[tuple[str, bytes]] | None = None,
) -> Path:
    """A `.tar.bz2` package: info/ members first, then the package files."""
    return write_file(
        path,
        tar_bz2_bytes(
            index,
            files,
            about=about,
            run_exports=run_exports,
            paths_json=paths_json,
            recipe_yaml=recipe_yaml,
            member_prefix=member_prefix,
            extra_info=extra_info,
        ),
    )


def conda_bytes(
    filename: str,
    index: IndexArg,
    files: dict[str, bytes] | None = None,
    *,
    about: Any = None,
    run_exports: Any = None,
    paths_json: Any = None,
    recipe_yaml: str | bytes | None = None,
    member_prefix: str = "",
    component_stem: str | None = None,
    folder: str = "",
    with_info: bool = True,
    info_component: bytes | None = None,
    extra_info: list[tuple[str, bytes]] | None = None,
    extra_zip: list[tuple[str, bytes]] | None = None,
) -> bytes:
    """The bytes of a `.conda` named `filename` (only its stem is used).

    Knobs for broken variants: `component_stem` names the inner components after
    another stem, `folder` nests them in a zip folder, `with_info=False` leaves the
    info component out, `info_component` replaces its (zstd) bytes, `extra_info` adds
    members to the info component and `extra_zip` entries to the zip, names verbatim.
    """
    stem = component_stem if component_stem is not None else conda_stem(filename)
    info_tar = tar_bytes(
        info_members(
            index, files, about=about, run_exports=run_exports, paths_json=paths_json, recipe_yaml=recipe_yaml,
            extra_info=extra_info,
        ),
        prefix=member_prefix,
    )  # fmt: skip
    pkg_tar = tar_bytes(pkg_members(files), prefix=member_prefix)
    entries = [("metadata.json", json.dumps({"conda_pkg_format_version": 2}).encode())]
    entries.append((f"{folder}pkg-{stem}.tar.zst", zstd_bytes(pkg_tar)))
    if with_info:
        entries.append((f"{folder}info-{stem}.tar.zst", info_component if info_component is not None else zstd_bytes(info_tar)))
    return zip_bytes(entries + list(extra_zip or []))


def make_conda(
    path: str | Path,
    index: IndexArg,
    files: dict[str, bytes] | None = None,
    *,
    about: Any = None,
    run_exports: Any = None,
    paths_json: Any = None,
    recipe_yaml: str | bytes | None = None,
    member_prefix: str = "",
    component_stem: str | None = None,
    folder: str = "",
    with_info: bool = True,
    info_component: bytes | None = None,
    extra_info: list[tuple[str, bytes]] | None = None,
    extra_zip: list[tuple[str, bytes]] | None = None,
) -> Path:
    """A `.conda` package (CEP-35): stored zip of metadata.json, pkg- and info- components."""
    path = Path(path)
    return write_file(
        path,
        conda_bytes(
            path.name,
            index,
            files,
            about=about,
            run_exports=run_exports,
            paths_json=paths_json,
            recipe_yaml=recipe_yaml,
            member_prefix=member_prefix,
            component_stem=component_stem,
            folder=folder,
            with_info=with_info,
            info_component=info_component,
            extra_info=extra_info,
            extra_zip=extra_zip,
        ),
    )


def make_package(path: str | Path, index: IndexArg, files: dict[str, bytes] | None = None, **kw: Any) -> Path:
    """`make_conda` or `make_tar_bz2`, chosen by the filename."""
    if str(path).endswith(".conda"):
        return make_conda(path, index, files, **kw)
    if str(path).endswith(".tar.bz2"):
        return make_tar_bz2(path, index, files, **kw)
    raise ValueError(f"not a package filename: {path}")


def package_filename(index: dict[str, Any], ext: str) -> str:
    return f"{index['name']}-{index['version']}-{index['build']}{ext}"
