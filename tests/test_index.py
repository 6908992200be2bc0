"""`conda-indexd index`: outputs against the spec, incremental runs, broken archives,
atomic publishing, CLI errors, cache.db compatibility.

Expected documents are derived from channel-format.md by tests/spec.py, which reads
the fixture archives with tarfile/zipfile/zstandard and hashes them with hashlib; the
product's own reader is never used to compute an expectation.
"""

from __future__ import annotations

import bz2
import json
import math
import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import zstandard

import pkgfactory as f
import spec
from conftest import run_cli, run_index

GOLDEN = Path(__file__).resolve().parent / "golden"
SUBDIRS = ("noarch", "linux-64", "osx-arm64")
OUTPUT_NAMES = ("repodata.json", "repodata_from_packages.json")
UNICODE_SUMMARY = "Caf\u00e9 \u00fcber \u6570\u636e \u2603 \U0001f40d"


# --- fixture channels ----------------------------------------------------------------------


def build_mixed_channel(root: Path) -> dict[str, list[Path]]:
    """Both formats in noarch, linux-64 and osx-arm64, plus things that must be ignored.

    Returns {subdir: [package paths]} for the known subdirs.
    """
    pyfoo = f.index_json("pyfoo", "1.2", "pyh1_0", "noarch", noarch="python", depends=["python >=3.8", "requests"], license_family="MIT")
    pyfoo_files = {"site-packages/pyfoo/__init__.py": b"__version__ = '1.2'\n"}
    f.make_tar_bz2(root / "noarch/pyfoo-1.2-pyh1_0.tar.bz2", pyfoo, pyfoo_files, about={"summary": "foo"}, recipe_yaml="package:\n  name: pyfoo\n")
    f.make_conda(root / "noarch/pyfoo-1.2-pyh1_0.conda", pyfoo, pyfoo_files, about={"summary": "foo"}, recipe_yaml="package:\n  name: pyfoo\n")
    f.make_conda(
        root / "noarch/unidata-0.1-0.conda",
        f.index_json("unidata", "0.1", "0", "noarch", summary=UNICODE_SUMMARY, description='line one\nline "two"\t\\ end'),
        {"share/unidata/\u00e9t\u00e9.txt": "\u00e9t\u00e9\n".encode()},
    )
    libx = f.index_json(
        "libx",
        "2.0",
        "h123_1",
        "linux-64",
        build_number=1,
        depends=["libgcc-ng >=12"],
        constrains=["pyfoo >=1"],
        track_features="",
        features="",
        has_prefix=True,
        mtime=99,
        ucs=4,
        binstar={"x": 1},
        machine="x86_64",
        operatingsystem="linux",
        requires_features={"a": "b"},
        **{"target-triplet": "x86_64-conda-linux-gnu"},
        python_site_packages_path=None,
        extra_unknown={"nested": {"z": 1, "a": [3, 2, 1]}},
    )
    f.make_conda(root / "linux-64/libx-2.0-h123_1.conda", libx, {"lib/libx.so": b"\x7fELF"}, run_exports={"weak": ["libx >=2.0,<3"]})
    f.make_tar_bz2(root / "linux-64/libx-2.0-h123_1.tar.bz2", libx, {"lib/libx.so": b"\x7fELF"}, run_exports={"weak": ["libx >=2.0,<3"]})
    f.make_tar_bz2(
        root / "linux-64/tool-3.1-0.tar.bz2",
        f.index_json("tool", "3.1", "0", "linux-64", depends=["libx >=2.0,<3"], timestamp=1234567890),
        {"bin/tool": b"#!/bin/sh\necho tool\n"},
        paths_json={
            "paths": [{"_path": "bin/tool", "path_type": "hardlink", "prefix_placeholder": "/opt/anaconda1anaconda2anaconda3", "file_mode": "text"}],
            "paths_version": 1,
        },
    )
    f.make_conda(
        root / "osx-arm64/libx-2.0-h456_1.conda",
        f.index_json("libx", "2.0", "h456_1", "osx-arm64", build_number=1),
        {"lib/libx.dylib": b"\xcf\xfa\xed\xfe"},
        run_exports=["libx >=2.0"],  # CEP-34 list form, stored raw
    )
    # an unknown platform folder: never indexed
    f.make_conda(root / "linux-fake/fake-1.0-0.conda", f.index_json("fake", "1.0", "0", "linux-fake"))
    # non-package files and folders
    (root / "README.md").write_text("a channel\n")
    (root / "noarch/notes.txt").write_text("not a package\n")
    (root / "linux-64/source.tar.gz").write_bytes(b"\x1f\x8b not really")
    (root / "linux-64/archive.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    (root / "linux-64/folder-1.0-0.conda").mkdir()  # a folder with a package name
    return {s: spec.package_files(root / s) for s in SUBDIRS}


def make_simple(folder: Path, name: str, ext: str, version: str = "1.0", **extra: Any) -> Path:
    subdir = folder.name
    return f.make_package(folder / f"{name}-{version}-0{ext}", f.index_json(name, version, "0", subdir, **extra), {f"share/{name}.txt": name.encode()})


def repodata_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "repodata.json").read_bytes())


def all_records(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc["packages"], **doc["packages.conda"]}


def output_mtimes(root: Path) -> dict[str, int]:
    """mtimes of every output file under root (not packages, cache.db or the lock file)."""
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(root).parts and not p.name.endswith((".conda", ".tar.bz2")) and not p.name.endswith(".lock")
    }


def cache_db(channel: Path, subdir: str) -> sqlite3.Connection:
    path = channel / subdir / ".cache" / "cache.db"
    assert path.is_file(), f"missing {path}"
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def stat_rows(channel: Path, subdir: str, stage: str) -> dict[str, tuple]:
    with cache_db(channel, subdir) as db:
        rows = db.execute("SELECT path, rowid, mtime, size, sha256, md5, last_modified, etag FROM stat WHERE stage = ?", (stage,)).fetchall()
    return {row[0]: row[1:] for row in rows}


def bump_mtime(path: Path, seconds: float = 10.0) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + int(seconds * 1e9)))


# --- outputs against the spec -----------------------------------------------------------------


def test_repodata_matches_spec(channel: Path) -> None:
    packages = build_mixed_channel(channel)
    result = run_index(channel)

    for subdir in SUBDIRS:
        folder = channel / subdir
        expected = spec.expected_repodata_bytes(subdir, packages[subdir])
        got = (folder / "repodata.json").read_bytes()
        assert got == expected, f"{subdir}/repodata.json differs from the spec-derived document"
        assert (folder / "repodata_from_packages.json").read_bytes() == got
        for name in OUTPUT_NAMES:
            zst = (folder / f"{name}.zst").read_bytes()
            assert zstandard.ZstdDecompressor().decompress(zst) == got
            # §2.3: one frame that records the content size
            assert zstandard.get_frame_parameters(zst).content_size == len(got)
            assert not (folder / f"{name}.bz2").exists(), "--bz2 is off by default"
        assert not (folder / "run_exports.json").exists(), "--run-exports is off by default"
        assert not (folder / "current_repodata.json").exists()
        assert result.subdir(subdir)["packages"] == len(packages[subdir])

    # non-ASCII text is escaped (ensure_ascii) and the files are pure ASCII
    noarch = (channel / "noarch/repodata.json").read_bytes()
    assert noarch.isascii()
    assert b"Caf\\u00e9 \\u00fcber \\u6570\\u636e \\u2603 \\ud83d\\udc0d" in noarch
    assert repodata_of(channel / "noarch")["packages.conda"]["unidata-0.1-0.conda"]["summary"] == UNICODE_SUMMARY
    assert not noarch.endswith(b"\n")

    # unknown platform folders and non-package files are ignored; no other subdir appears
    assert not (channel / "linux-fake/repodata.json").exists()
    assert not (channel / "linux-fake/.cache").exists()
    assert sorted(p.name for p in channel.iterdir() if p.is_dir()) == ["linux-64", "linux-fake", "noarch", "osx-arm64"]
    assert {r["subdir"] for r in result.events("subdir indexed")} == set(SUBDIRS)
    assert result.summary["packages"] == sum(len(v) for v in packages.values())
    assert result.summary["skipped"] == 0
    assert result.skipped == []


def test_golden_channel(tmp_path: Path) -> None:
    """Byte comparison against committed files derived from the spec (tests/golden/make_golden.py):
    conda-index 0.13's bytes, so without CEP-47's indexed_timestamp."""
    channel = tmp_path / "golden"
    shutil.copytree(GOLDEN / "channel", channel)
    run_index(channel, "--run-exports", "--no-indexed-timestamp")
    for subdir in ("noarch", "linux-64"):
        for name in ("repodata.json", "run_exports.json"):
            expected = (GOLDEN / "expected" / subdir / name).read_bytes()
            assert (channel / subdir / name).read_bytes() == expected, f"{subdir}/{name}"


def test_noarch_is_created_and_indexed_when_missing(channel: Path) -> None:
    make_simple(channel / "linux-64", "only", ".conda")
    run_index(channel)
    assert (channel / "noarch/repodata.json").read_bytes() == spec.expected_repodata_bytes("noarch", [])
    assert (channel / "noarch/repodata.json").read_bytes() == (
        b'{"info":{"subdir":"noarch"},"packages":{},"packages.conda":{},"removed":[],"repodata_version":1}'
    )


def test_bz2_and_no_zst(channel: Path) -> None:
    packages = build_mixed_channel(channel)
    run_index(channel, "--bz2")
    for subdir in SUBDIRS:
        folder = channel / subdir
        got = (folder / "repodata.json").read_bytes()
        assert got == spec.expected_repodata_bytes(subdir, packages[subdir])
        for name in OUTPUT_NAMES:
            assert bz2.decompress((folder / f"{name}.bz2").read_bytes()) == got
            assert (folder / f"{name}.zst").is_file()

    run_index(channel, "--bz2", "--no-zst")
    for subdir in SUBDIRS:
        folder = channel / subdir
        for name in OUTPUT_NAMES:
            assert not (folder / f"{name}.zst").exists(), f"--no-zst must remove {subdir}/{name}.zst"
            assert bz2.decompress((folder / f"{name}.bz2").read_bytes()) == (folder / name).read_bytes()

    # turning .zst back on writes it again even though the JSON did not change
    run_index(channel, "--zst")
    for subdir in SUBDIRS:
        folder = channel / subdir
        for name in OUTPUT_NAMES:
            assert zstandard.ZstdDecompressor().decompress((folder / f"{name}.zst").read_bytes()) == (folder / name).read_bytes()


@pytest.mark.parametrize("url", ["https://example.com/chan", "https://example.com/chan/"])
def test_base_url(channel: Path, url: str) -> None:
    packages = build_mixed_channel(channel)
    run_index(channel, "--base-url", url)
    for subdir in SUBDIRS:
        got = (channel / subdir / "repodata.json").read_bytes()
        doc = json.loads(got)
        assert doc["info"] == {"subdir": subdir, "base_url": f"https://example.com/chan/{subdir}/"}
        assert doc["repodata_version"] == 2
        assert "repodata_version" not in doc["info"]
        assert got == spec.expected_repodata_bytes(subdir, packages[subdir], base_url=url)


def test_run_exports(channel: Path) -> None:
    packages = build_mixed_channel(channel)
    # §6.2: run_exports.json covers every file of the fs stage, even one that failed
    broken = f.make_empty(channel / "linux-64/broken-1.0-0.tar.bz2")
    run_index(channel, "--run-exports")
    for subdir in SUBDIRS:
        got = (channel / subdir / "run_exports.json").read_bytes()
        doc = json.loads(got)
        if subdir == "linux-64":
            assert doc["packages"].pop(broken.name) == {"run_exports": {}}
            got = spec.dumps(doc).encode()
        assert got == spec.expected_run_exports_bytes(subdir, packages[subdir]), subdir
        assert not (channel / subdir / "run_exports.json.zst").exists()
    doc = json.loads((channel / "linux-64/run_exports.json").read_bytes())
    assert doc["packages.conda"]["libx-2.0-h123_1.conda"] == {"run_exports": {"weak": ["libx >=2.0,<3"]}}
    assert doc["packages"]["tool-3.1-0.tar.bz2"] == {"run_exports": {}}
    assert json.loads((channel / "osx-arm64/run_exports.json").read_bytes())["packages.conda"] == {"libx-2.0-h456_1.conda": {"run_exports": ["libx >=2.0"]}}
    # the broken file is still left out of repodata.json
    assert broken.name not in repodata_of(channel / "linux-64")["packages"]


def test_output_dir(channel: Path, tmp_path: Path) -> None:
    packages = build_mixed_channel(channel)
    out = tmp_path / "published"
    run_index(channel, "--output", out)
    for subdir in SUBDIRS:
        got = (out / subdir / "repodata.json").read_bytes()
        assert got == spec.expected_repodata_bytes(subdir, packages[subdir])
        assert (out / subdir / "repodata_from_packages.json").read_bytes() == got
        assert (out / subdir / "repodata.json.zst").is_file()
        assert not (channel / subdir / "repodata.json").exists()
        assert not (channel / subdir / "repodata.json.zst").exists()
        assert (channel / subdir / ".cache" / "cache.db").is_file(), "cache.db stays in the channel"
        assert not (out / subdir / ".cache").exists()
    assert not (out / "linux-fake").exists()


def test_subdir_option_limits_the_run(channel: Path) -> None:
    packages = build_mixed_channel(channel)
    result = run_index(channel, "--subdir", "linux-64")
    assert {r["subdir"] for r in result.events("subdir indexed")} == {"linux-64"}
    assert (channel / "linux-64/repodata.json").read_bytes() == spec.expected_repodata_bytes("linux-64", packages["linux-64"])
    assert not (channel / "noarch/repodata.json").exists()
    assert not (channel / "osx-arm64/repodata.json").exists()


def test_python_dash_m_and_console_script_agree(channel: Path) -> None:
    exe = shutil.which("conda-indexd")
    if exe is None:
        pytest.skip("conda-indexd console script not on PATH")
    import subprocess

    make_simple(channel / "noarch", "one", ".conda")
    proc = subprocess.run([exe, "index", str(channel), "--log-format", "json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (channel / "noarch/repodata.json").read_bytes() == spec.expected_repodata_bytes("noarch", spec.package_files(channel / "noarch"))


# --- incremental runs ------------------------------------------------------------------------------


def test_incremental_add_replace_delete(channel: Path) -> None:
    lin = channel / "linux-64"
    for name in ("a", "b", "c", "e"):
        make_simple(lin, name, ".conda")
        make_simple(lin, name, ".tar.bz2")
    make_simple(channel / "noarch", "n", ".conda")
    first = run_index(channel)
    assert first.summary["extracted"] == 9
    before_doc = repodata_of(lin)
    before_rows = stat_rows(channel, "linux-64", "indexed")
    before_noarch_rows = stat_rows(channel, "noarch", "indexed")
    old_mtime = (lin / "repodata.json").stat().st_mtime
    noarch_mtimes = output_mtimes(channel / "noarch")

    # add one, replace one (same name, different bytes, newer mtime), delete one
    added = make_simple(lin, "d", ".conda")
    replaced = lin / "b-1.0-0.tar.bz2"
    replaced_mtime = replaced.stat().st_mtime_ns
    f.make_tar_bz2(replaced, f.index_json("b", "1.0", "0", "linux-64", depends=["a >=1"]), {"share/b.txt": b"b v2"})
    os.utime(replaced, ns=(replaced_mtime + 5_000_000_000, replaced_mtime + 5_000_000_000))
    deleted = lin / "c-1.0-0.conda"
    deleted.unlink()

    second = run_index(channel)
    assert second.summary["extracted"] == 2
    assert second.subdir("linux-64")["extracted"] == 2
    assert second.subdir("noarch")["extracted"] == 0
    assert second.subdir("noarch")["written"] == []
    assert output_mtimes(channel / "noarch") == noarch_mtimes
    assert "repodata.json" in second.subdir("linux-64")["written"]

    after_doc = repodata_of(lin)
    before, after = all_records(before_doc), all_records(after_doc)
    assert set(after) == (set(before) - {deleted.name}) | {added.name}
    changed = {fn for fn in before.keys() & after.keys() if before[fn] != after[fn]}
    assert changed == {replaced.name}
    assert after[replaced.name] == spec.expected_record(replaced)
    assert after[added.name] == spec.expected_record(added)
    assert (lin / "repodata.json").read_bytes() == spec.expected_repodata_bytes("linux-64", spec.package_files(lin))

    # cache.db: untouched packages keep their `indexed` rows untouched (same rowid, same values)
    after_rows = stat_rows(channel, "linux-64", "indexed")
    for fn, row in before_rows.items():
        if fn in (replaced.name, deleted.name):
            continue
        assert after_rows[fn] == row, f"{fn} was re-extracted or its row rewritten"
    assert after_rows[replaced.name][1] == replaced.stat().st_mtime
    assert after_rows[replaced.name][3] == spec.checksums(replaced)["sha256"]
    assert after_rows[added.name][3] == spec.checksums(added)["sha256"]
    assert stat_rows(channel, "noarch", "indexed") == before_noarch_rows
    assert set(stat_rows(channel, "linux-64", "fs")) == {p.name for p in spec.package_files(lin)}

    # a rewritten repodata.json is at least one whole second newer (nginx ETag/Last-Modified)
    new_mtime = (lin / "repodata.json").stat().st_mtime
    assert math.floor(new_mtime) >= math.floor(old_mtime) + 1

    # a run with no change rewrites nothing
    mtimes = output_mtimes(channel)
    third = run_index(channel)
    assert third.summary["extracted"] == 0
    for record in third.events("subdir indexed"):
        assert record["written"] == [], record
        assert record["extracted"] == 0
    assert output_mtimes(channel) == mtimes
    assert stat_rows(channel, "linux-64", "indexed") == after_rows


def test_same_size_replacement_is_noticed_by_mtime(channel: Path) -> None:
    """A replacement of exactly the same size is re-read because its mtime changed."""
    lin = channel / "linux-64"
    path = lin / "s-1.0-0.tar.bz2"
    f.make_tar_bz2(path, f.index_json("s", "1.0", "0", "linux-64", license="AAA"))
    run_index(channel)
    size = path.stat().st_size
    data = f.tar_bz2_bytes(f.index_json("s", "1.0", "0", "linux-64", license="BBB"))
    if len(data) != size:
        pytest.skip("bz2 output size differs; cannot build a same-size replacement")
    mtime = path.stat().st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(mtime + 3_000_000_000, mtime + 3_000_000_000))
    result = run_index(channel)
    assert result.summary["extracted"] == 1
    assert repodata_of(lin)["packages"][path.name]["license"] == "BBB"
    assert repodata_of(lin)["packages"][path.name] == spec.expected_record(path)


def test_broken_replacement_drops_out_and_is_not_reread(channel: Path) -> None:
    lin = channel / "linux-64"
    victim = make_simple(lin, "victim", ".tar.bz2")
    keep = make_simple(lin, "keep", ".conda")
    run_index(channel)
    assert victim.name in repodata_of(lin)["packages"]

    mtime = victim.stat().st_mtime_ns
    f.make_text(victim)
    os.utime(victim, ns=(mtime + 5_000_000_000, mtime + 5_000_000_000))
    second = run_index(channel)
    assert second.summary["extracted"] == 0
    doc = repodata_of(lin)
    assert victim.name not in doc["packages"]
    assert (lin / "repodata.json").read_bytes() == spec.expected_repodata_bytes("linux-64", [keep])
    skipped = [r for r in second.skipped if r["path"] == victim.name]
    assert len(skipped) == 1 and skipped[0]["reason"], second.skipped
    reason = skipped[0]["reason"]
    assert second.summary["skipped_by_reason"] == {reason: 1}
    assert second.summary["skipped"] == 1
    failed = stat_rows(channel, "linux-64", "failed")
    assert failed[victim.name][6] == reason  # etag column holds the reason
    assert failed[victim.name][5]  # last_modified holds the message
    assert victim.name not in stat_rows(channel, "linux-64", "indexed")

    # next run: the failed file is not read again, but still reported as skipped
    mtimes = output_mtimes(channel)
    third = run_index(channel)
    assert third.summary["extracted"] == 0
    assert third.skipped == [], "an unchanged failed file must not be read (and fail) again"
    assert third.summary["skipped_by_reason"] == {reason: 1}
    assert output_mtimes(channel) == mtimes
    assert stat_rows(channel, "linux-64", "failed") == failed

    # a new mtime makes it be read again (and fail again)
    bump_mtime(victim, 7)
    fourth = run_index(channel)
    assert [r["path"] for r in fourth.skipped] == [victim.name]
    assert stat_rows(channel, "linux-64", "failed")[victim.name][1] == victim.stat().st_mtime

    # fixed: back in repodata.json, no longer skipped
    make_simple(lin, "victim", ".tar.bz2")
    bump_mtime(victim, 20)
    fifth = run_index(channel)
    assert fifth.summary["extracted"] == 1
    assert fifth.summary["skipped"] == 0
    assert fifth.summary["skipped_by_reason"] == {}
    assert (lin / "repodata.json").read_bytes() == spec.expected_repodata_bytes("linux-64", [keep, victim])
    assert victim.name not in stat_rows(channel, "linux-64", "failed")


def test_size_change_of_failed_file_is_reread(channel: Path) -> None:
    lin = channel / "linux-64"
    path = f.make_empty(lin / "late-1.0-0.conda")
    st = path.stat()
    run_index(channel)
    # the upload completes: same mtime, different size
    make_simple(lin, "late", ".conda")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = run_index(channel)
    assert result.summary["extracted"] == 1
    assert result.summary["skipped"] == 0
    assert (lin / "repodata.json").read_bytes() == spec.expected_repodata_bytes("linux-64", [path])


# --- broken archives ----------------------------------------------------------------------------------


def test_every_broken_kind_in_one_channel(channel: Path) -> None:
    valid = build_mixed_channel(channel)
    lin = channel / "linux-64"
    built: dict[str, f.Kind] = {}
    for kind in f.BROKEN_KINDS:
        fn = kind.build(lin, "linux-64")
        assert fn not in built
        built[fn] = kind
    # a few in noarch too
    for name in ("empty-conda", "truncated-tar-bz2", "index-depends-string", "dot-slash-prefix-conda"):
        f.BROKEN_BY_NAME[name].build(channel / "noarch", "noarch")

    result = run_index(channel)
    problems = []
    doc = repodata_of(lin)
    records = all_records(doc)
    skipped = {}
    for r in result.skipped:
        assert r.get("subdir") in SUBDIRS, r
        if r["subdir"] == "linux-64":
            if r["path"] in skipped:
                problems.append(f"{r['path']}: two 'skipped archive' records")
            skipped[r["path"]] = r
    for fn, kind in built.items():
        if kind.expect == "indexed":
            if fn not in records:
                problems.append(f"{kind.name}: {fn} should be indexed as-is but is missing")
            elif records[fn] != spec.expected_record(lin / fn):
                problems.append(f"{kind.name}: record differs from index.json as-is: {records[fn]}")
            if fn in skipped:
                problems.append(f"{kind.name}: indexed but also logged as skipped")
        else:
            if fn in records:
                problems.append(f"{kind.name}: {fn} must not be in repodata.json")
            rec = skipped.get(fn)
            if rec is None:
                problems.append(f"{kind.name}: no 'skipped archive' record for {fn}")
            elif not isinstance(rec.get("reason"), str) or not rec["reason"]:
                problems.append(f"{kind.name}: skipped without a reason: {rec}")
            elif kind.reason is not None and rec["reason"] != kind.reason:
                problems.append(f"{kind.name}: reason {rec['reason']!r}, expected {kind.reason!r}")
    assert not problems, "\n".join(problems)

    # every valid package published, bytes as the spec says
    indexed = [lin / fn for fn, k in built.items() if k.expect == "indexed"]
    assert (lin / "repodata.json").read_bytes() == spec.expected_repodata_bytes("linux-64", sorted(valid["linux-64"] + indexed))
    assert (channel / "osx-arm64/repodata.json").read_bytes() == spec.expected_repodata_bytes("osx-arm64", valid["osx-arm64"])
    noarch_records = all_records(repodata_of(channel / "noarch"))
    assert set(noarch_records) == {p.name for p in valid["noarch"]} | {"odd-dotslash-conda-1.0-0.conda"}

    n_skipped = sum(1 for k in built.values() if k.expect == "skipped") + 3
    assert result.summary["skipped"] == n_skipped
    assert sum(result.summary["skipped_by_reason"].values()) == n_skipped
    assert len(result.skipped) == n_skipped

    # the one-line log records: each is one stdout line of JSON
    for line in result.stdout.splitlines():
        if '"skipped archive"' in line:
            assert json.loads(line)["event"] == "skipped archive"

    # and a second run re-reads none of them
    again = run_index(channel)
    assert again.summary["extracted"] == 0
    assert again.skipped == []
    assert again.summary["skipped"] == n_skipped


@pytest.mark.parametrize("kind", [k for k in f.BROKEN_KINDS if k.expect == "skipped"], ids=lambda k: k.name)
def test_broken_kind_alone_does_not_break_the_subdir(tmp_path: Path, kind: f.Kind) -> None:
    """Each broken kind next to one good package: exit 0, the good one published."""
    channel = tmp_path / "ch"
    good = make_simple(channel / "noarch", "good", ".conda")
    fn = kind.build(channel / "noarch", "noarch")
    result = run_index(channel)
    assert (channel / "noarch/repodata.json").read_bytes() == spec.expected_repodata_bytes("noarch", [good])
    assert [r["path"] for r in result.skipped] == [fn]
    if kind.reason:
        assert result.skipped[0]["reason"] == kind.reason


def _strict_json(data: bytes) -> Any:
    def reject(constant: str) -> Any:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(data, parse_constant=reject)


@pytest.mark.parametrize(
    "member",
    ["index-nan", "index-infinity", "about-nan", "run-exports-nan", "recipe-nan"],
)
def test_non_finite_numbers_do_not_abort_the_run(channel: Path, member: str) -> None:
    """NaN/Infinity are accepted by Python's json but not by sqlite's json(): one such
    package must not abort the whole run (exit 0, the other packages published)."""
    noarch = channel / "noarch"
    good = make_simple(noarch, "good", ".conda")
    fn = "odd-nan-1.0-0.tar.bz2"
    index = f.index_json("odd-nan")
    if member == "index-nan":
        f.make_tar_bz2(noarch / fn, json.dumps({**index, "timestamp": float("nan")}).encode())
    elif member == "index-infinity":
        f.make_tar_bz2(noarch / fn, json.dumps({**index, "build_number": 0, "size_hint": float("inf")}).encode())
    elif member == "about-nan":
        f.make_tar_bz2(noarch / fn, index, about=b'{"summary": "x", "score": NaN}')
    elif member == "run-exports-nan":
        f.make_tar_bz2(noarch / fn, index, run_exports=b'{"weak": ["x"], "w": -Infinity}')
    else:
        f.make_tar_bz2(noarch / fn, index, recipe_yaml="package:\n  name: odd-nan\nextra:\n  ratio: .nan\n  top: .inf\n")
    result = run_index(channel, "--run-exports")
    data = (noarch / "repodata.json").read_bytes()
    doc = _strict_json(data)
    _strict_json((noarch / "run_exports.json").read_bytes())
    assert doc["packages.conda"] == {good.name: spec.expected_record(good)}
    if member.startswith("index-"):
        # a record that cannot be stored as JSON: left out with a reason (or published as strict JSON)
        if fn not in doc["packages"]:
            assert [r["path"] for r in result.skipped] == [fn]
            assert result.skipped[0]["reason"]
    else:
        # a broken optional member only loses that member; the record itself is fine
        assert doc["packages"] == {fn: spec.expected_record(noarch / fn)}
        assert result.skipped == []


def test_non_utf8_filename_does_not_abort_the_run(channel: Path) -> None:
    """A file name that is not valid UTF-8 (possible on POSIX) must not stop the run."""
    noarch = channel / "noarch"
    good = make_simple(noarch, "good", ".conda")
    odd = Path(os.fsdecode(os.fsencode(noarch) + b"/odd\xff-1.0-0.tar.bz2"))
    f.make_tar_bz2(odd, f.index_json("odd"))
    result = run_cli("index", channel, "--threads", "2")
    assert result.rc == 0, str(result)
    assert "Traceback" not in result.stderr
    assert result.records  # stdout stays JSON lines
    assert (noarch / "repodata.json").read_bytes() == spec.expected_repodata_bytes("noarch", [good])


def test_checksums_when_reading_stops_early(channel: Path) -> None:
    """Every wanted info/ member comes first and the payload spans several bz2 blocks:
    the reader may stop decompressing early, the checksums still cover the whole file."""
    noarch = channel / "noarch"
    payload = "".join(f"{i:08x}{i * 2654435761 % 2**32:08x}\n" for i in range(130_000)).encode()
    assert len(payload) > 2 * 900_000
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    common: dict[str, Any] = dict(
        about={"summary": "all members"},
        run_exports={"weak": ["full"]},
        paths_json={"paths": [{"_path": "share/payload.txt", "path_type": "hardlink"}], "paths_version": 1},
        recipe_yaml="package:\n  name: full\n",
    )
    files = {"info/icon.png": png, "share/payload.txt": payload}
    tb = f.make_tar_bz2(noarch / "full-1.0-0.tar.bz2", f.index_json("full", icon="icon.png"), files, **common)
    cd = f.make_conda(noarch / "full-1.0-0.conda", f.index_json("full", icon="icon.png"), files, **common)
    run_index(channel, "--run-exports")
    assert (noarch / "repodata.json").read_bytes() == spec.expected_repodata_bytes("noarch", [cd, tb])
    with cache_db(channel, "noarch") as db:
        icons = dict(db.execute("SELECT path, icon_png FROM icon").fetchall())
        assert icons == {tb.name: png, cd.name: png}
        rows = db.execute("SELECT path, sha256, md5, size FROM stat WHERE stage = 'indexed' ORDER BY path").fetchall()
    assert rows == [(p.name, *(spec.checksums(p)[k] for k in ("sha256", "md5", "size"))) for p in (cd, tb)]


def test_stale_compressed_copy_is_repaired(channel: Path) -> None:
    """A run interrupted between repodata.json and its .zst/.bz2 (or any other mismatch)
    must not leave clients that prefer the compressed copy on stale data for good: after
    a run, every compressed copy decompresses to its JSON, even when the JSON did not change."""
    noarch = channel / "noarch"
    make_simple(noarch, "one", ".conda")
    run_index(channel, "--bz2")
    make_simple(noarch, "two", ".conda")
    run_index(channel, "--bz2")
    # simulate the interruption: the new JSON is in place, its compressed copies are the old ones
    stale = spec.expected_repodata_bytes("noarch", [noarch / "one-1.0-0.conda"])
    for name in OUTPUT_NAMES:
        (noarch / f"{name}.zst").write_bytes(zstandard.ZstdCompressor().compress(stale))
        (noarch / f"{name}.bz2").write_bytes(bz2.compress(stale))
    run_index(channel, "--bz2")
    for name in OUTPUT_NAMES:
        current = (noarch / name).read_bytes()
        assert current == spec.expected_repodata_bytes("noarch", spec.package_files(noarch))
        assert zstandard.ZstdDecompressor().decompress((noarch / f"{name}.zst").read_bytes()) == current, f"{name}.zst is stale"
        assert bz2.decompress((noarch / f"{name}.bz2").read_bytes()) == current, f"{name}.bz2 is stale"


# --- atomic publishing ----------------------------------------------------------------------------------


def test_reader_never_sees_partial_repodata(channel: Path) -> None:
    lin = channel / "linux-64"
    for i in range(150):
        make_simple(lin, f"pkg{i:03d}", ".conda" if i % 2 else ".tar.bz2", description="x" * 300)
    run_index(channel)

    stop = threading.Event()
    errors: list[str] = []
    reads = [0]
    counts: list[int] = []

    def reader() -> None:
        dctx = zstandard.ZstdDecompressor()
        while not stop.is_set():
            for name in ("repodata.json", "repodata.json.zst"):
                try:
                    with open(lin / name, "rb") as fh:
                        data = fh.read()
                except FileNotFoundError:
                    errors.append(f"{name} missing during a rewrite")
                    continue
                try:
                    if name.endswith(".zst"):
                        data = dctx.decompress(data)
                    doc = json.loads(data)
                    assert doc["info"]["subdir"] == "linux-64"
                    if name == "repodata.json":
                        counts.append(len(all_records(doc)))
                except Exception as exc:  # noqa: BLE001 - any failure is a partial file
                    errors.append(f"{name}: {type(exc).__name__}: {exc} ({len(data)} bytes)")
                reads[0] += 1

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for i in range(12):
            if i % 3 == 2:
                (lin / f"new{i - 1:02d}-1.0-0.conda").unlink()
            else:
                make_simple(lin, f"new{i:02d}", ".conda")
            run_index(channel)
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors[:5]
    assert reads[0] > 12, "the reader did not get to run"
    assert counts and min(counts) >= 150
    assert repodata_of(lin) == json.loads(spec.expected_repodata_bytes("linux-64", spec.package_files(lin)))

    # no temporary file left behind anywhere
    from conda_indexd.ha.flock import LOCK_NAME

    leftovers = [
        str(p.relative_to(channel))
        for p in channel.rglob("*")
        if ".cache" not in p.relative_to(channel).parts and p.name.startswith(".") and p.name != LOCK_NAME
    ]
    assert leftovers == []
    assert not [p for p in channel.rglob("*.tmp")]


# --- CLI errors ------------------------------------------------------------------------------------------


def _assert_one_line_error(result: Any) -> None:
    assert result.rc != 0, str(result)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, str(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr:\n{result}"
    assert lines[0].strip()


def test_error_missing_channel(tmp_path: Path) -> None:
    result = run_cli("index", tmp_path / "nope")
    _assert_one_line_error(result)
    assert not (tmp_path / "nope").exists()


def test_error_channel_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    _assert_one_line_error(run_cli("index", path))
    assert path.read_text() == "x"


def test_error_unwritable_output(channel: Path, tmp_path: Path) -> None:
    make_simple(channel / "noarch", "one", ".conda")
    blocker = tmp_path / "regular-file"
    blocker.write_text("x")
    _assert_one_line_error(run_cli("index", channel, "--output", blocker / "out"))
    _assert_one_line_error(run_cli("index", channel, "--output", blocker))


def test_error_output_under_file_deeper(channel: Path, tmp_path: Path) -> None:
    """The output folder exists but a subdir path in it is a regular file."""
    make_simple(channel / "noarch", "one", ".conda")
    out = tmp_path / "out"
    out.mkdir()
    (out / "noarch").write_text("in the way")
    _assert_one_line_error(run_cli("index", channel, "--output", out))


@pytest.mark.parametrize(
    "args",
    [
        ["index", "{channel}", "--no-such-flag"],
        ["index", "{channel}", "--threads", "0"],
        ["index", "{channel}", "--threads", "many"],
        ["index", "{channel}", "--log-format", "xml"],
        ["index"],
        [],
        ["frobnicate", "{channel}"],
    ],
    ids=["bad-flag", "threads-0", "threads-word", "bad-log-format", "no-channel", "no-command", "bad-command"],
)
def test_error_bad_arguments(channel: Path, args: list[str]) -> None:
    result = run_cli(*[a.format(channel=channel) for a in args])
    _assert_one_line_error(result)
    assert not (channel / "noarch").exists(), "nothing is written on a usage error"


def test_help_and_version() -> None:
    result = run_cli("--help")
    assert result.rc == 0 and "index" in result.stdout
    result = run_cli("index", "--help")
    assert result.rc == 0 and "--base-url" in result.stdout
    result = run_cli("--version")
    assert result.rc == 0 and "conda-indexd" in result.stdout


def test_channel_lock_refuses_second_writer(channel: Path) -> None:
    from conda_indexd.ha.flock import ChannelLock

    make_simple(channel / "noarch", "one", ".conda")
    lock = ChannelLock(channel).acquire()
    try:
        result = run_cli("index", channel)
        _assert_one_line_error(result)
        assert not (channel / "noarch/repodata.json").exists()
    finally:
        lock.release()
    run_index(channel)
    assert (channel / "noarch/repodata.json").is_file()


# --- cache.db compatibility with conda-index 0.13 --------------------------------------------------------

SPEC_SCHEMA = """
CREATE TABLE about        (path TEXT PRIMARY KEY, about BLOB);
CREATE TABLE index_json   (path TEXT PRIMARY KEY, index_json BLOB,
                           name   AS (json_extract(index_json,'$.name')),
                           sha256 AS (json_extract(index_json,'$.sha256')));
CREATE TABLE recipe       (path TEXT PRIMARY KEY, recipe BLOB);
CREATE TABLE recipe_log   (path TEXT PRIMARY KEY, recipe_log BLOB);
CREATE TABLE run_exports  (path TEXT PRIMARY KEY, run_exports BLOB);
CREATE TABLE post_install (path TEXT PRIMARY KEY, post_install BLOB);
CREATE TABLE icon         (path TEXT PRIMARY KEY, icon_png BLOB);
CREATE TABLE stat (stage TEXT NOT NULL DEFAULT 'indexed', path TEXT NOT NULL,
                   mtime NUMBER, size INTEGER, sha256 TEXT, md5 TEXT,
                   last_modified TEXT, etag TEXT);
CREATE UNIQUE INDEX idx_stat ON stat (path, stage);
CREATE INDEX idx_stat_stage ON stat (stage, path);
"""


def schema_of(db: sqlite3.Connection) -> dict[str, Any]:
    """Tables with their columns (incl. generated ones) and indexes with their columns."""
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    out: dict[str, Any] = {}
    for table in tables:
        columns = [tuple(r[1:]) for r in db.execute(f"PRAGMA table_xinfo({table})")]
        indexes = {}
        for _, name, unique, origin, partial in db.execute(f"PRAGMA index_list({table})"):
            indexes[name] = (unique, origin, partial, [r[2] for r in db.execute(f"PRAGMA index_info({name})")])
        out[table] = {"columns": columns, "indexes": indexes}
    return out


def test_cache_db_schema_is_conda_index(channel: Path) -> None:
    build_mixed_channel(channel)
    run_index(channel)
    reference = sqlite3.connect(":memory:")
    reference.executescript(SPEC_SCHEMA)
    expected = schema_of(reference)
    for subdir in SUBDIRS:
        with cache_db(channel, subdir) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == 2
            assert db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal"
            assert schema_of(db) == expected, subdir
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index') AND name NOT LIKE 'sqlite_%'")}
            assert names == {"about", "index_json", "recipe", "recipe_log", "run_exports", "post_install", "icon", "stat", "idx_stat", "idx_stat_stage"}
            # generated columns name and sha256 are virtual columns of index_json
            gen = {r[1]: r[6] for r in db.execute("PRAGMA table_xinfo(index_json)")}
            assert gen["name"] != 0 and gen["sha256"] != 0
            assert {r[0] for r in db.execute("SELECT DISTINCT stage FROM stat")} <= {"fs", "indexed", "failed"}


def test_cache_db_contents(channel: Path) -> None:
    lin = channel / "linux-64"
    index = f.index_json("rich", "1.0", "0", "linux-64", depends=["x"], zzz_first_in_file=True)
    # a key order that is not sorted, to check the stored order (§3.4)
    index = {"zzz_first_in_file": True, **{k: v for k, v in index.items() if k != "zzz_first_in_file"}}
    paths = {
        "paths": [
            {"_path": "bin/rich", "path_type": "hardlink", "prefix_placeholder": "/opt/placeholder", "file_mode": "binary"},
            {"_path": "etc/conda/activate.d/rich.sh", "path_type": "hardlink"},
            {"_path": "bin/.rich-post-link.sh", "path_type": "hardlink"},
        ],
        "paths_version": 1,
    }
    about = {"summary": "rich \u00e9", "home": "https://example.com"}
    pkg = f.make_conda(
        lin / "rich-1.0-0.conda",
        index,
        {"bin/rich": b"x", "etc/conda/activate.d/rich.sh": b"", "bin/.rich-post-link.sh": b""},
        about=about,
        run_exports={"strong": ["rich"]},
        paths_json=paths,
        recipe_yaml="package:\n  name: rich\n  version: '1.0'\nbuild:\n  number: 0\n",
    )
    broken = f.make_text(lin / "bad-1.0-0.tar.bz2")
    run_index(channel)
    with cache_db(channel, "linux-64") as db:
        (text,) = db.execute("SELECT index_json FROM index_json WHERE path = ?", (pkg.name,)).fetchone()
        keys = list(json.loads(text, object_pairs_hook=lambda pairs: dict(pairs)).keys())
        expected_keys = [k for k in index if k not in spec.FILTERED_KEYS] + ["md5", "sha256", "size"]
        assert keys == expected_keys
        assert json.loads(text) == spec.expected_record(pkg, stamped=False)  # conda-index's row: no indexed_timestamp
        assert db.execute("SELECT name, sha256 FROM index_json WHERE path = ?", (pkg.name,)).fetchone() == (
            "rich",
            spec.checksums(pkg)["sha256"],
        )
        assert json.loads(db.execute("SELECT about FROM about WHERE path = ?", (pkg.name,)).fetchone()[0]) == about
        assert json.loads(db.execute("SELECT run_exports FROM run_exports WHERE path = ?", (pkg.name,)).fetchone()[0]) == {"strong": ["rich"]}
        assert json.loads(db.execute("SELECT recipe FROM recipe WHERE path = ?", (pkg.name,)).fetchone()[0]) == {
            "package": {"name": "rich", "version": "1.0"},
            "build": {"number": 0},
        }
        assert json.loads(db.execute("SELECT post_install FROM post_install WHERE path = ?", (pkg.name,)).fetchone()[0]) == {
            "binary_prefix": True,
            "text_prefix": False,
            "activate.d": True,
            "deactivate.d": False,
            "pre_link": False,
            "post_link": True,
            "pre_unlink": False,
        }
        st = pkg.stat()
        sums = spec.checksums(pkg)
        assert db.execute("SELECT mtime, size, sha256, md5 FROM stat WHERE stage = 'indexed' AND path = ?", (pkg.name,)).fetchone() == (
            st.st_mtime,
            st.st_size,
            sums["sha256"],
            sums["md5"],
        )
        assert db.execute("SELECT mtime, size FROM stat WHERE stage = 'fs' AND path = ?", (pkg.name,)).fetchone() == (
            st.st_mtime,
            st.st_size,
        )
        # the failed archive: a `failed` row (reason in etag, message in last_modified), no metadata
        row = db.execute("SELECT mtime, size, etag, last_modified FROM stat WHERE stage = 'failed' AND path = ?", (broken.name,)).fetchone()
        assert row is not None and row[:2] == (broken.stat().st_mtime, broken.stat().st_size)
        assert row[2] and row[3]
        assert db.execute("SELECT count(*) FROM index_json WHERE path = ?", (broken.name,)).fetchone() == (0,)
        # paths are bare filenames
        assert all("/" not in p for (p,) in db.execute("SELECT path FROM stat"))


def test_cache_db_too_new_is_refused(channel: Path) -> None:
    make_simple(channel / "noarch", "one", ".conda")
    db_path = channel / "noarch/.cache/cache.db"
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as db:
        db.execute("PRAGMA user_version = 3")
    db.close()
    result = run_cli("index", channel)
    _assert_one_line_error(result)
    assert not (channel / "noarch/repodata.json").exists()
