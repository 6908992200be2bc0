"""Deterministic builders for fixture conda packages (no network, no ../shared).

Valid packages (built by `conda_indexd.demo.pkgbuild`, re-exported here):

- `make_tar_bz2(path, index, files, *, about, run_exports, paths_json, recipe_yaml)`
- `make_conda(path, index, files, *, about, run_exports, paths_json, recipe_yaml)`

`index` is the `info/index.json` content: a dict (written as JSON), raw `bytes`/`str`
(written as-is, to make invalid JSON), or None (no `info/index.json` member at all).
`files` maps archive paths to bytes; keys under `info/` go into the info part (first in
a `.tar.bz2`, the `info-` component of a `.conda`), the others into the package part.

Every output is byte-for-byte reproducible: tar members have mtime 0, uid/gid 0, empty
owner names and fixed modes, in a fixed order; zip entries have a fixed date_time and
attributes; bz2, gzip and zstd are deterministic for given input.

Broken or unusual archives (the kinds found in shared/corpus/odd/NOTES.tsv and more)
are built by the `make_*` helpers further down; `BROKEN_KINDS` lists every kind with
a builder and what the indexer is expected to do with it.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The valid-package builders live in the package (the demo uses them); re-exported here
# so the tests keep one import.
from conda_indexd.demo.pkgbuild import (  # noqa: F401
    FILE_MODE,
    ZIP_DATE_TIME,
    IndexArg,
    as_bytes,
    conda_bytes,
    conda_stem,
    index_json,
    info_members,
    make_conda,
    make_package,
    make_tar_bz2,
    package_filename,
    pkg_members,
    tar_bytes,
    tar_bz2_bytes,
    write_file,
    zip_bytes,
    zstd_bytes,
)

# --- broken or unusual archives ------------------------------------------------------------


def make_empty(path: str | Path) -> Path:
    """A zero-byte file under a package name."""
    return write_file(path, b"")


def make_text(path: str | Path, text: str = "This is not a conda package.\nJust some text.\n") -> Path:
    """A text file under a package name."""
    return write_file(path, text.encode())


def make_lfs_pointer(path: str | Path, content: bytes = b"the real package") -> Path:
    """A git-lfs pointer (what a checkout without `git lfs pull` holds)."""
    oid = hashlib.sha256(content).hexdigest()
    return write_file(path, f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(content)}\n".encode())


def make_plain_tar(path: str | Path, index: IndexArg, files: dict[str, bytes] | None = None) -> Path:
    """An uncompressed tar named `.tar.bz2`."""
    return write_file(path, tar_bytes(info_members(index, files) + pkg_members(files)))


def make_gzip_tar(path: str | Path, index: IndexArg, files: dict[str, bytes] | None = None) -> Path:
    """A gzip-compressed tar named `.tar.bz2`."""
    return write_file(path, gzip.compress(tar_bytes(info_members(index, files) + pkg_members(files)), mtime=0))


def make_conda_missing_info(path: str | Path, index: IndexArg, files: dict[str, bytes] | None = None) -> Path:
    """A `.conda` with metadata.json and the pkg component only."""
    return make_conda(path, index, files, with_info=False)


def make_conda_wrong_components(path: str | Path, index: IndexArg, other_stem: str = "other-0.1-0") -> Path:
    """A `.conda` whose inner component names belong to another filename."""
    return make_conda(path, index, component_stem=other_stem)


def make_conda_nested(path: str | Path, index: IndexArg, folder: str = "pkgdir/") -> Path:
    """A `.conda` whose components sit in a folder inside the zip."""
    return make_conda(path, index, folder=folder)


def make_conda_bad_zstd(path: str | Path, index: IndexArg) -> Path:
    """A `.conda` whose info component starts like zstd and then is garbage."""
    garbage = b"\x28\xb5\x2f\xfd" + bytes(range(7, 250)) * 4
    return make_conda(path, index, info_component=garbage)


def _bulky_files(seed: str, n: int = 4096) -> dict[str, bytes]:
    """Some incompressible but reproducible payload, so truncation hits real data."""
    data = b"".join(hashlib.sha256(f"{seed}-{i}".encode()).digest() for i in range(n // 32 + 1))[:n]
    return {"share/payload.bin": data}


def make_truncated_tar_bz2(path: str | Path, index: IndexArg, keep: float = 0.5) -> Path:
    """A `.tar.bz2` cut short (an interrupted copy)."""
    data = tar_bz2_bytes(index, _bulky_files(Path(path).name))
    return write_file(path, data[: int(len(data) * keep)])


def make_truncated_conda(path: str | Path, index: IndexArg, keep: float = 0.5) -> Path:
    """A `.conda` cut short: the zip central directory is gone."""
    path = Path(path)
    data = conda_bytes(path.name, index, _bulky_files(Path(path).name))
    return write_file(path, data[: int(len(data) * keep)])


def make_no_index_json(path: str | Path, files: dict[str, bytes] | None = None) -> Path:
    """An archive with info/ members but no info/index.json."""
    return make_package(path, None, files or {"info/about.json": b'{"summary": "no index"}'}, about=None)


# --- the catalogue of broken kinds -----------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One kind of odd archive.

    build(folder, subdir) creates the file in `folder` and returns its filename.
    expect is "indexed" (must appear in repodata.json, index.json as-is) or "skipped"
    (must be left out with a `skipped archive` log record). reason, when set, is the
    exact reason label required by the spec; None means any non-empty reason.
    """

    name: str
    build: Callable[[Path, str], str]
    expect: str
    reason: str | None = None


def _idx(name: str, subdir: str, **kw: Any) -> dict[str, Any]:
    return index_json(name, "1.0", "0", subdir, **kw)


def _fn(name: str, ext: str) -> str:
    return f"{name}-1.0-0{ext}"


def _kind_builder(name: str, ext: str, maker: Callable[[Path, dict[str, Any]], Any]) -> Callable[[Path, str], str]:
    def build(folder: Path, subdir: str) -> str:
        fn = _fn(name, ext)
        maker(folder / fn, _idx(name, subdir))
        return fn

    return build


def _raw_index_builder(name: str, ext: str, raw: Callable[[str], IndexArg]) -> Callable[[Path, str], str]:
    def build(folder: Path, subdir: str) -> str:
        fn = _fn(name, ext)
        make_package(folder / fn, raw(subdir))
        return fn

    return build


def _without(key: str) -> Callable[[str], dict[str, Any]]:
    def raw(subdir: str) -> dict[str, Any]:
        doc = _idx("odd-missing-" + key, subdir)
        del doc[key]
        return doc

    return raw


def _build_filename_mismatch(folder: Path, subdir: str) -> str:
    fn = "odd-renamed-1.0-0.tar.bz2"
    make_tar_bz2(folder / fn, index_json("something-else", "2.0", "py_7", subdir))
    return fn


def _build_filename_mismatch_conda(folder: Path, subdir: str) -> str:
    fn = "odd-renamed-conda-1.0-0.conda"
    make_conda(folder / fn, index_json("t", "1", "0", subdir))
    return fn


def _build_subdir_mismatch(folder: Path, subdir: str) -> str:
    """A package built for another platform dropped into this subdir's folder."""
    other = "osx-arm64" if subdir != "osx-arm64" else "linux-64"
    fn = _fn("odd-elsewhere", ".conda")
    make_conda(folder / fn, _idx("odd-elsewhere", other))
    return fn


def _build_no_subdir(ext: str) -> Callable[[Path, str], str]:
    def build(folder: Path, subdir: str) -> str:
        fn = _fn("odd-nosubdir" + ext.replace(".", "-"), ext)
        doc = _idx("odd-nosubdir" + ext.replace(".", "-"), subdir)
        del doc["subdir"]
        make_package(folder / fn, doc)
        return fn

    return build


def _build_dot_slash(ext: str) -> Callable[[Path, str], str]:
    def build(folder: Path, subdir: str) -> str:
        name = "odd-dotslash" + ext.replace(".", "-")
        fn = _fn(name, ext)
        make_package(folder / fn, _idx(name, subdir), {"lib/x.txt": b"x\n"}, member_prefix="./", about={"summary": "dot slash"})
        return fn

    return build


def _simple(name: str, ext: str, maker: Callable[[Path], Any]) -> Callable[[Path, str], str]:
    def build(folder: Path, subdir: str) -> str:
        fn = _fn(name, ext)
        maker(folder / fn)
        return fn

    return build


BROKEN_KINDS: list[Kind] = [
    Kind("empty-tar-bz2", _simple("odd-empty-tb", ".tar.bz2", make_empty), "skipped"),
    Kind("empty-conda", _simple("odd-empty-c", ".conda", make_empty), "skipped"),
    Kind("text-tar-bz2", _simple("odd-text-tb", ".tar.bz2", make_text), "skipped"),
    Kind("text-conda", _simple("odd-text-c", ".conda", make_text), "skipped"),
    Kind("lfs-pointer-tar-bz2", _simple("odd-lfs-tb", ".tar.bz2", make_lfs_pointer), "skipped"),
    Kind("lfs-pointer-conda", _simple("odd-lfs-c", ".conda", make_lfs_pointer), "skipped"),
    Kind("plain-tar-as-tar-bz2", _kind_builder("odd-plaintar", ".tar.bz2", make_plain_tar), "skipped"),
    Kind("gzip-tar-as-tar-bz2", _kind_builder("odd-gziptar", ".tar.bz2", make_gzip_tar), "skipped"),
    Kind("conda-missing-info", _kind_builder("odd-noinfo", ".conda", make_conda_missing_info), "skipped"),
    Kind("conda-wrong-component-names", _kind_builder("odd-wrongstem", ".conda", make_conda_wrong_components), "skipped"),
    Kind("conda-nested-components", _kind_builder("odd-nested", ".conda", make_conda_nested), "skipped"),
    Kind("truncated-tar-bz2", _kind_builder("odd-trunc-tb", ".tar.bz2", make_truncated_tar_bz2), "skipped"),
    Kind("truncated-conda", _kind_builder("odd-trunc-c", ".conda", make_truncated_conda), "skipped"),
    Kind("conda-bad-zstd", _kind_builder("odd-badzstd", ".conda", make_conda_bad_zstd), "skipped"),
    Kind("no-index-json-tar-bz2", _simple("odd-noindex-tb", ".tar.bz2", make_no_index_json), "skipped"),
    Kind("no-index-json-conda", _simple("odd-noindex-c", ".conda", make_no_index_json), "skipped"),
    Kind("dot-slash-prefix-tar-bz2", _build_dot_slash(".tar.bz2"), "indexed"),
    Kind("dot-slash-prefix-conda", _build_dot_slash(".conda"), "indexed"),
    Kind("index-without-subdir-tar-bz2", _build_no_subdir(".tar.bz2"), "indexed"),
    Kind("index-without-subdir-conda", _build_no_subdir(".conda"), "indexed"),
    Kind("filename-mismatch-tar-bz2", _build_filename_mismatch, "skipped", "filename-mismatch"),
    Kind("filename-mismatch-conda", _build_filename_mismatch_conda, "skipped", "filename-mismatch"),
    Kind("subdir-mismatch", _build_subdir_mismatch, "skipped", "subdir-mismatch"),
    Kind("index-not-json", _raw_index_builder("odd-notjson", ".tar.bz2", lambda s: b'{"name": "odd-notjson", '), "skipped", "bad-index-json"),
    Kind("index-not-json-conda", _raw_index_builder("odd-notjson-c", ".conda", lambda s: b"\xff\xfe not json"), "skipped", "bad-index-json"),
    Kind("index-json-list", _raw_index_builder("odd-jsonlist", ".tar.bz2", lambda s: b'["name", "version"]'), "skipped", "bad-index-json"),
    Kind("index-missing-name", _raw_index_builder("odd-missing-name", ".tar.bz2", _without("name")), "skipped", "bad-index-json"),
    Kind("index-missing-version", _raw_index_builder("odd-missing-version", ".conda", _without("version")), "skipped", "bad-index-json"),
    Kind("index-missing-build", _raw_index_builder("odd-missing-build", ".tar.bz2", _without("build")), "skipped", "bad-index-json"),
    Kind(
        "index-build-number-string",
        _raw_index_builder("odd-bnstr", ".tar.bz2", lambda s: _idx("odd-bnstr", s, build_number="abc")),
        "skipped",
        "bad-index-json",
    ),
    Kind(
        "index-build-number-negative",
        _raw_index_builder("odd-bnneg", ".conda", lambda s: _idx("odd-bnneg", s, build_number=-1)),
        "skipped",
        "bad-index-json",
    ),
    Kind(
        "index-depends-string",
        _raw_index_builder("odd-depstr", ".tar.bz2", lambda s: {**_idx("odd-depstr", s), "depends": "python 3.6*"}),
        "skipped",
        "bad-index-json",
    ),
]

BROKEN_BY_NAME = {k.name: k for k in BROKEN_KINDS}


# --- names outside the install prefix (issue 17) ----------------------------------------------------

UNSAFE_NAMES = {"absolute": "/tmp/conda-indexd-escape.txt", "dotdot": "lib/../../conda-indexd-escape.txt", "empty": ""}


def paths_json_doc(paths: list[str]) -> dict[str, Any]:
    """An info/paths.json declaring `paths` (hardlinks, sizes and hashes made up)."""
    entries = [{"_path": p, "path_type": "hardlink", "sha256": "0" * 64, "size_in_bytes": 1} for p in paths]
    return {"paths": entries, "paths_version": 1}


def _unsafe_builder(name: str, ext: str, files: dict[str, bytes] | None = None, **kw: Any) -> Callable[[Path, str], str]:
    def build(folder: Path, subdir: str) -> str:
        fn = _fn(name, ext)
        make_package(folder / fn, _idx(name, subdir), files if files is not None else {"lib/ok.txt": b"ok\n"}, **kw)
        return fn

    return build


def _unsafe_kinds() -> list[Kind]:
    kinds = []
    for ext in (".tar.bz2", ".conda"):
        short = "tb" if ext == ".tar.bz2" else "c"
        for how, bad in UNSAFE_NAMES.items():
            # a member of the part the reader walks (the info part / info component)
            kinds.append(
                Kind(f"member-{how}-{short}", _unsafe_builder(f"unsafe-member-{how}-{short}", ext, extra_info=[(bad, b"x\n")]), "skipped", "unsafe-path")
            )
            # a path paths.json declares
            kinds.append(Kind(
                f"paths-json-{how}-{short}",
                _unsafe_builder(f"unsafe-pathsjson-{how}-{short}", ext, paths_json=paths_json_doc(["lib/ok.txt", bad])),
                "skipped", "unsafe-path",
            ))  # fmt: skip
        for how in ("absolute", "dotdot"):  # blank lines in info/files are skipped, as conda does
            kinds.append(Kind(
                f"info-files-{how}-{short}",
                _unsafe_builder(f"unsafe-files-{how}-{short}", ext, files={"lib/ok.txt": b"ok\n", "info/files": f"lib/ok.txt\n{UNSAFE_NAMES[how]}\n".encode()}),
                "skipped", "unsafe-path",
            ))  # fmt: skip
        kinds.append(Kind(
            f"paths-json-backslash-{short}",
            _unsafe_builder(f"unsafe-backslash-{short}", ext, paths_json=paths_json_doc(["Library\\..\\..\\evil.dll"])),
            "skipped", "unsafe-path",
        ))  # fmt: skip
        # names that only look odd, and stay inside the prefix
        kinds.append(Kind(
            f"safe-lookalikes-{short}",
            _unsafe_builder(
                f"safe-lookalikes-{short}", ext,
                files={"lib/..hidden": b"1", "lib/a...b": b"2", "share/x/./y": b"3", "info/files": b"# comment\n\nlib/..hidden\nlib/a...b\n"},
                paths_json=paths_json_doc(["lib/..hidden", "lib/a...b", "share/x/./y"]),
                extra_info=[("./", b""), ("info/x..y", b"4")],
            ),
            "indexed",
        ))  # fmt: skip
    # a .tar.bz2 member after the info part (the reader walks to the last member)
    kinds.append(Kind(
        "pkg-member-dotdot-tb",
        _unsafe_builder("unsafe-pkgmember-tb", ".tar.bz2", files={"lib/ok.txt": b"ok\n", "../../conda-indexd-escape.txt": b"x\n"}),
        "skipped", "unsafe-path",
    ))  # fmt: skip
    for how, bad in UNSAFE_NAMES.items():  # a .conda's zip member names
        kinds.append(Kind(f"zip-member-{how}-c", _unsafe_builder(f"unsafe-zip-{how}-c", ".conda", extra_zip=[(bad, b"x\n")]), "skipped", "unsafe-path"))
    return kinds


UNSAFE_KINDS: list[Kind] = _unsafe_kinds()
# Not checked (docs/reliability.md): a .conda's pkg component is not decompressed, so a member
# there that no paths.json or info/files declares is published. Kept here so the limit is pinned.
UNCHECKED_KINDS: list[Kind] = [
    Kind(
        "pkg-component-member-dotdot-c",
        _unsafe_builder("unchecked-pkgmember-c", ".conda", files={"lib/ok.txt": b"ok\n", "../../conda-indexd-escape.txt": b"x\n"}),
        "indexed",
    ),
]
