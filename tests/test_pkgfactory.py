"""The fixture builders themselves: reproducible bytes and the CEP-35 layout."""

from __future__ import annotations

import bz2
import io
import json
import tarfile
import zipfile
from pathlib import Path

import zstandard

import pkgfactory as f
import spec


def _build_both(folder: Path) -> tuple[Path, Path]:
    index = f.index_json("repro", "1.0", "0", "linux-64", depends=["x"])
    files = {"bin/repro": b"#!/bin/sh\n", "share/\u00e9.txt": b"e\n", "info/extra.txt": b"extra"}
    kw = dict(about={"summary": "s"}, run_exports={"weak": ["repro"]}, paths_json={"paths": []}, recipe_yaml="a: 1\n")
    return (
        f.make_tar_bz2(folder / "repro-1.0-0.tar.bz2", index, files, **kw),
        f.make_conda(folder / "repro-1.0-0.conda", index, files, **kw),
    )


def test_builders_are_reproducible(tmp_path: Path) -> None:
    a = _build_both(tmp_path / "a")
    b = _build_both(tmp_path / "b")
    for x, y in zip(a, b, strict=True):
        assert x.read_bytes() == y.read_bytes(), x.name
    for kind in f.BROKEN_KINDS:
        fa = kind.build(tmp_path / "a", "noarch")
        fb = kind.build(tmp_path / "b", "noarch")
        assert fa == fb and (tmp_path / "a" / fa).read_bytes() == (tmp_path / "b" / fb).read_bytes(), kind.name


def test_tar_bz2_layout(tmp_path: Path) -> None:
    tb, _ = _build_both(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(bz2.decompress(tb.read_bytes())), mode="r:") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[0] == "info/index.json"
    first_pkg = next(i for i, n in enumerate(names) if not n.startswith("info/"))
    assert all(n.startswith("info/") for n in names[:first_pkg])
    assert all(not n.startswith("info/") for n in names[first_pkg:])
    assert {"info/about.json", "info/run_exports.json", "info/paths.json", "info/recipe/meta.yaml", "info/extra.txt"} <= set(names)
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert m.isfile()


def test_conda_layout(tmp_path: Path) -> None:
    _, cd = _build_both(tmp_path)
    with zipfile.ZipFile(cd) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == ["metadata.json", "pkg-repro-1.0-0.tar.zst", "info-repro-1.0-0.tar.zst"]
        assert all(i.compress_type == zipfile.ZIP_STORED and i.date_time == f.ZIP_DATE_TIME for i in infos)
        assert json.loads(zf.read("metadata.json")) == {"conda_pkg_format_version": 2}
        info = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(zf.read("info-repro-1.0-0.tar.zst"))).read()
        pkg = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(zf.read("pkg-repro-1.0-0.tar.zst"))).read()
    with tarfile.open(fileobj=io.BytesIO(info), mode="r:") as tar:
        assert all(n.startswith("info/") for n in tar.getnames())
    with tarfile.open(fileobj=io.BytesIO(pkg), mode="r:") as tar:
        assert sorted(tar.getnames()) == ["bin/repro", "share/\u00e9.txt"]
    assert spec.read_index_json(cd)["name"] == "repro"


def test_broken_kinds_cover_the_corpus_notes() -> None:
    names = {k.name for k in f.BROKEN_KINDS}
    for required in (
        "empty-tar-bz2",
        "text-tar-bz2",
        "lfs-pointer-tar-bz2",
        "plain-tar-as-tar-bz2",
        "gzip-tar-as-tar-bz2",
        "conda-missing-info",
        "conda-wrong-component-names",
        "conda-nested-components",
        "truncated-tar-bz2",
        "truncated-conda",
        "conda-bad-zstd",
        "no-index-json-tar-bz2",
        "dot-slash-prefix-tar-bz2",
        "index-without-subdir-tar-bz2",
        "filename-mismatch-tar-bz2",
        "index-not-json",
        "index-missing-name",
        "index-missing-version",
        "index-missing-build",
        "index-build-number-string",
        "index-build-number-negative",
        "index-depends-string",
    ):
        assert required in names
    assert len(names) == len(f.BROKEN_KINDS)
