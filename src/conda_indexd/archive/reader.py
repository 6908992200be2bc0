"""Read one package archive: its metadata members and its checksums, in one pass.

`read_package(stream, filename)` returns a `PackageMetadata` or raises `ArchiveError` with a short
machine-readable `reason` (used as a metrics label) and a one-line human message.
Only the `info/` members conda-index caches are read, plus `info/files` for its paths.
Every member name passed over, and every path `info/paths.json` and `info/files`
declare, must stay inside the install prefix (`pathcheck`): a `.tar.bz2` is walked to
its last member, a `.conda` through its zip directory and its whole info component (its
pkg component is not decompressed). md5 and sha256 are computed together while the file
is read once from start to end.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from conda_package_streaming import package_streaming

from conda_indexd.archive import pathcheck
from conda_indexd.archive.pkgmeta import post_install_flags, recipe_json
from conda_indexd.errors import IndexdError
from conda_indexd.names import FILTERED_KEYS, stem

INDEX_JSON = "info/index.json"
ABOUT_JSON = "info/about.json"
PATHS_JSON = "info/paths.json"
RUN_EXPORTS_JSON = "info/run_exports.json"
ICON_PNG = "info/icon.png"
FILES = "info/files"
RECIPE_MEMBERS = ("info/recipe/meta.yaml", "info/recipe/meta.yaml.rendered", "info/meta.yaml")
WANTED = frozenset({INDEX_JSON, ABOUT_JSON, PATHS_JSON, RUN_EXPORTS_JSON, ICON_PNG, FILES, *RECIPE_MEMBERS})


CHUNK = 1 << 20

# Caps on what is read of one metadata member: memory stays bounded whatever an archive
# declares or decompresses to. A package with a wanted member over its cap is left out
# ("oversized-metadata"). Real index.json files are a few KiB; real paths.json files
# reach tens of MiB for packages with ~100k files; info/files is a few MiB there.
MEMBER_CAPS = {INDEX_JSON: 4 << 20, PATHS_JSON: 256 << 20, FILES: 64 << 20, ICON_PNG: 4 << 20}
DEFAULT_MEMBER_CAP = 16 << 20
# A .conda's info component holds metadata only (the files are in pkg-*.tar.zst): one
# that unpacks to more than this is refused before its content is decompressed.
INFO_COMPONENT_CAP = 512 << 20


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def strict_json(raw: bytes | str) -> Any:
    """json.loads that rejects NaN and Infinity, which sqlite's json() refuses, and
    nesting too deep to parse (a ValueError, not a RecursionError)."""
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


class ArchiveError(IndexdError):
    """An archive that cannot be indexed. `reason` is a short, low-cardinality label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[ArchiveError], tuple[str, str]]:  # crosses process pools
        return (ArchiveError, (self.reason, self.message))


@dataclass(frozen=True)
class PackageMetadata:
    """What conda-index's cache.db stores for one package (JSON columns as text)."""

    filename: str
    index_json: dict[str, Any]  # filtered index.json + md5, sha256, size (in that order)
    about: str | None
    recipe: str | None
    run_exports: str | None
    post_install: str
    icon: bytes | None

    @property
    def name(self) -> str:
        return self.index_json["name"]


class _Checksums:
    def __init__(self) -> None:
        self.md5 = hashlib.md5()
        self.sha256 = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes) -> None:
        self.md5.update(data)
        self.sha256.update(data)
        self.size += len(data)

    def drain(self, fileobj: IO[bytes]) -> None:
        while data := fileobj.read(CHUNK):
            self.update(data)


class _HashingReader:
    """File wrapper that hashes every byte the decompressor reads, for `.tar.bz2`."""

    def __init__(self, fileobj: IO[bytes], sums: _Checksums):
        self._f = fileobj
        self._sums = sums

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._sums.update(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:  # the caller owns the file
        pass

    @property
    def closed(self) -> bool:
        return self._f.closed


def _collect_members(filename: str, stream_source: Any) -> dict[str, bytes]:
    """The wanted `info/` members, each read up to its cap. Every member name passed over
    is checked: the whole `.tar.bz2`, or a `.conda`'s zip directory and info component."""
    wanted = set(WANTED)
    members: dict[str, bytes] = {}
    unpacked, limit = 0, INFO_COMPONENT_CAP if filename.endswith(".conda") else None
    stream = _member_stream(filename, stream_source)
    try:
        for tar, member in stream:
            unpacked += member.size  # tar headers give each size before its content
            if limit is not None and unpacked > limit:
                raise ArchiveError("oversized-metadata", f"the info component unpacks to over {limit >> 20} MiB")
            if why := pathcheck.why_unsafe(member.name):
                raise _unsafe(pathcheck.describe("member", member.name, why))
            name = member.name.removeprefix("./")
            if name not in wanted:
                continue
            wanted.discard(name)
            if not member.isfile():
                continue
            cap = member_cap(name)
            if member.size > cap:
                raise _oversized(name, cap)
            reader = tar.extractfile(member)
            if reader is None:
                continue
            data = reader.read(cap + 1)  # never more, whatever the header says
            if len(data) > cap:
                raise _oversized(name, cap)
            members[name] = data
            if name == INDEX_JSON:
                try:
                    if strict_json(data).get("icon") is None:
                        wanted.discard(ICON_PNG)
                except (ValueError, AttributeError):
                    pass  # reported as bad index.json once every name is checked
            if name in RECIPE_MEMBERS:
                wanted.difference_update(RECIPE_MEMBERS)
    finally:
        stream.close()
    return members


def _member_stream(filename: str, stream_source: Any) -> Any:
    """(tar, member) pairs: every member of a `.tar.bz2`, or a `.conda`'s info component
    once its zip member names are checked."""
    if not filename.endswith(".conda"):
        return package_streaming.stream_conda_info(filename, stream_source)
    zf = zipfile.ZipFile(stream_source)
    if problem := pathcheck.first_unsafe((zi.filename for zi in zf.infolist()), "zip member"):
        raise _unsafe(problem)
    return package_streaming.stream_conda_component(filename, stream_source, "info", zf=zf)


def _unsafe(message: str) -> ArchiveError:
    return ArchiveError("unsafe-path", f"{message}: it would be written outside the install prefix")


def member_cap(name: str) -> int:
    return MEMBER_CAPS.get(name, DEFAULT_MEMBER_CAP)


def _oversized(name: str, cap: int) -> ArchiveError:
    return ArchiveError("oversized-metadata", f"{name} is over {cap >> 20} MiB")


def read_package(stream: IO[bytes], filename: str, subdir: str | None = None) -> PackageMetadata:
    """Read the metadata and checksums of one `.conda` or `.tar.bz2` archive from a
    seekable binary stream (the store opens it; see ChannelStore.open_package).

    With `subdir`, a package whose index.json names another subdir is refused, and so is
    one whose filename is not `<name>-<version>-<build>` of its index.json.
    """
    try:
        size = stream.seek(0, 2)
        stream.seek(0)
        if size == 0:
            raise ArchiveError("empty", "empty file")
        sums = _Checksums()
        if filename.endswith(".conda"):
            members = _collect_members(filename, stream)
            stream.seek(0)
            sums.drain(stream)
        else:
            reader = _HashingReader(stream, sums)
            members = _collect_members(filename, reader)
            sums.drain(stream)
    except ArchiveError:
        raise
    except Exception as exc:  # every failure of a third-party reader becomes a reason
        raise (_sniff(stream, filename) or classify(filename, exc)) from exc
    meta = _to_metadata(filename, members, sums)
    if subdir is not None:
        _check_placement(meta, subdir)
    return meta


def read_file(path: str | Path, subdir: str | None = None) -> PackageMetadata:
    """`read_package` of a file on disk (for tools and tests; the indexer reads through
    its store)."""
    path = Path(path)
    with open(path, "rb") as f:
        return read_package(f, path.name, subdir)


def _check_placement(meta: PackageMetadata, subdir: str) -> None:
    """Clients key records by filename and solve by name/version/build: the two must agree,
    and a package built for one platform must not be served from another's folder."""
    index = meta.index_json
    expected = f"{index['name']}-{index['version']}-{index['build']}"
    if stem(meta.filename) != expected:
        raise ArchiveError("filename-mismatch", f"filename does not match index.json ({expected!r})")
    declared = index.get("subdir")
    if declared is not None and declared != subdir:
        raise ArchiveError("subdir-mismatch", f"index.json says subdir {declared!r}, found in {subdir!r}")


def _sniff(stream: IO[bytes], filename: str) -> ArchiveError | None:
    """Name the common impostors: git-lfs pointers, gzip or plain tar under a package name."""
    try:
        stream.seek(0)
        head = stream.read(512)
    except (OSError, ValueError):
        return None
    if head.startswith(b"version https://git-lfs"):
        return ArchiveError("git-lfs-pointer", "a git-lfs pointer file, not the package (fetch it with git lfs pull)")
    if filename.endswith(".tar.bz2"):
        if head.startswith(b"\x1f\x8b"):
            return ArchiveError("not-bzip2", "gzip data under a .tar.bz2 name")
        if head[257:262] == b"ustar":
            return ArchiveError("not-bzip2", "an uncompressed tar under a .tar.bz2 name")
    return None


def classify(filename: str, exc: BaseException) -> ArchiveError:
    detail = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    if isinstance(exc, FileNotFoundError):
        return ArchiveError("vanished", f"file disappeared while reading ({detail})")
    if isinstance(exc, zipfile.BadZipFile):
        return ArchiveError("not-a-zip", f".conda is not a valid zip file ({detail})")
    if isinstance(exc, LookupError) and "component" in str(exc):
        return ArchiveError("missing-info-component", f"no info-<stem> component matching the filename ({detail})")
    if isinstance(exc, EOFError):
        return ArchiveError("truncated", f"archive ends early ({detail})")
    if isinstance(exc, tarfile.ReadError):
        reason = "truncated" if "truncated" in str(exc) or "unexpected end" in str(exc) else "bad-tar"
        return ArchiveError(reason, f"unreadable tar stream ({detail})")
    if type(exc).__module__.startswith(("backports.zstd", "compression.zstd", "zstandard")) or "zstd" in type(exc).__name__.lower():
        return ArchiveError("bad-zstd", f"bad zstd data in the info component ({detail})")
    if isinstance(exc, OSError) and filename.endswith(".tar.bz2") and "Invalid data stream" in str(exc):
        return ArchiveError("not-bzip2", f".tar.bz2 is not a bzip2 stream ({detail})")
    if isinstance(exc, OSError):
        return ArchiveError("io-error", f"could not read the file ({detail})")
    return ArchiveError("unreadable", f"could not read the archive ({detail})")


def _check_index_json(index: Any) -> str | None:
    """Why a record would break clients (rattler, conda), or None when it is usable."""
    if not isinstance(index, dict):
        return "index.json is not an object"
    for key in ("name", "version", "build"):
        value = index.get(key)
        if not isinstance(value, str) or not value:
            return f"index.json {key!r} is missing or not a string"
    bn = index.get("build_number", 0)
    if not isinstance(bn, int) or isinstance(bn, bool) or bn < 0:
        return "index.json 'build_number' is not a non-negative integer"
    for key in ("depends", "constrains", "track_features_list"):
        if key in index and not (isinstance(index[key], list) and all(isinstance(s, str) for s in index[key])):
            return f"index.json {key!r} is not a list of strings"
    return None


def _check_declared_paths(paths: Any, files_raw: bytes | None) -> None:
    """Every path paths.json or info/files declares stays inside the install prefix."""
    if problem := pathcheck.first_unsafe(pathcheck.paths_json_names(paths), "info/paths.json path"):
        raise _unsafe(problem)
    if files_raw is not None and (problem := pathcheck.first_unsafe(pathcheck.files_names(files_raw), "info/files path")):
        raise _unsafe(problem)


def _to_metadata(filename: str, members: dict[str, bytes], sums: _Checksums) -> PackageMetadata:
    paths = _parse_paths(members.get(PATHS_JSON))
    _check_declared_paths(paths, members.get(FILES))
    raw_index = members.get(INDEX_JSON)
    if raw_index is None:
        raise ArchiveError("missing-index-json", "archive has no info/index.json")
    try:
        index = strict_json(raw_index)
    except ValueError as exc:
        raise ArchiveError("bad-index-json", f"info/index.json is not valid JSON ({exc})") from exc
    if problem := _check_index_json(index):
        raise ArchiveError("bad-index-json", problem)
    record = {k: v for k, v in index.items() if k not in FILTERED_KEYS}
    record["md5"] = sums.md5.hexdigest()
    record["sha256"] = sums.sha256.hexdigest()
    record["size"] = sums.size
    recipe_raw = next((members[m] for m in RECIPE_MEMBERS if m in members), None)
    return PackageMetadata(
        filename=filename,
        index_json=record,
        about=_json_text(members.get(ABOUT_JSON)),
        recipe=None if recipe_raw is None else recipe_json(recipe_raw),
        run_exports=_json_text(members.get(RUN_EXPORTS_JSON)),
        post_install=post_install_flags(paths),
        icon=members.get(ICON_PNG),
    )


def _json_text(raw: bytes | None) -> str | None:
    """An optional JSON member as text, or None when absent or not valid JSON.

    conda-index aborts the whole run when sqlite's json() rejects a member; a broken
    optional member only loses that member here.
    """
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
        strict_json(text)
    except ValueError:
        return None
    return text


def _parse_paths(paths_raw: bytes | None) -> Any:
    """info/paths.json parsed, or None when absent or not valid JSON (it is optional)."""
    if not paths_raw:
        return None
    try:
        return strict_json(paths_raw)
    except ValueError:
        return None
