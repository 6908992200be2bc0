"""Optional tests on the shared corpus of real packages, and parity with conda-index 0.13.

Each test skips with a reason when `../shared` (next to the project checkout) is absent,
or, for the comparisons, when no Python with conda-index 0.13 is available. That Python
is `$CONDA_INDEX_PYTHON`, or `/tmp/peers/bin/python` when it exists; conda-index runs
with `PYTHONPATH=<shared>/tools/conda-stub` (conda itself is not on PyPI).
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

import pkgfactory as f
import spec
from conftest import run_index

SHARED = Path(__file__).resolve().parents[2] / "shared"
CORPUS = SHARED / "corpus"
STUB = SHARED / "tools" / "conda-stub"
DEFAULT_PEERS_PYTHON = Path("/tmp/peers/bin/python")


def need_corpus(*parts: str) -> Path:
    path = CORPUS.joinpath(*parts)
    if not SHARED.is_dir():
        pytest.skip(f"shared folder {SHARED} is absent (optional corpus tests)")
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


@functools.lru_cache(maxsize=1)
def _find_conda_index_python() -> tuple[str | None, str]:
    py = os.environ.get("CONDA_INDEX_PYTHON")
    if not py:
        if not DEFAULT_PEERS_PYTHON.exists():
            return None, f"set CONDA_INDEX_PYTHON to a Python with conda-index 0.13 ({DEFAULT_PEERS_PYTHON} does not exist)"
        py = str(DEFAULT_PEERS_PYTHON)
    if not STUB.is_dir():
        return None, f"{STUB} is absent"
    try:
        proc = subprocess.run(
            [py, "-c", "import conda_index; print(conda_index.__version__)"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(STUB)},
        )
    except OSError as exc:
        return None, f"cannot run {py}: {exc}"
    version = proc.stdout.strip()
    if proc.returncode != 0 or not version.startswith("0.13."):
        return None, f"{py} has no conda-index 0.13 (got {version or proc.stderr.strip()[-200:]!r})"
    return py, ""


@pytest.fixture
def conda_index_python() -> str:
    need_corpus()
    py, why = _find_conda_index_python()
    if py is None:
        pytest.skip(why)
    return py


def run_conda_index(py: str, channel: Path, *args: str) -> str:
    """conda-index 0.13 on channel; returns its combined log output."""
    proc = subprocess.run(
        [py, "-m", "conda_index", "--threads", "2", *args, str(channel)],
        capture_output=True,
        text=True,
        timeout=110,
        env={**os.environ, "PYTHONPATH": str(STUB)},
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"conda-index failed ({proc.returncode}):\n{output[-3000:]}"
    return output


def copy_real(dest: Path, subdirs: tuple[str, ...] | None = None) -> Path:
    real = need_corpus("real")
    shutil.copytree(real, dest, ignore=shutil.ignore_patterns("MANIFEST.tsv"))
    if subdirs is not None:
        for child in dest.iterdir():
            if child.is_dir() and child.name not in subdirs:
                shutil.rmtree(child)
    return dest


def known_subdirs(channel: Path) -> list[str]:
    return sorted(p.name for p in channel.iterdir() if p.is_dir() and p.name in spec.KNOWN_SUBDIRS)


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def records(folder: Path) -> dict[str, Any]:
    doc = json.loads((folder / "repodata.json").read_bytes())
    return {**doc["packages"], **doc["packages.conda"]}


def assert_same_outputs(a: Path, b: Path, subdirs: list[str], names: tuple[str, ...] = ("repodata.json",)) -> None:
    differing = [f"{s}/{n}" for s in subdirs for n in names if (a / s / n).read_bytes() != (b / s / n).read_bytes()]
    assert not differing, f"differ between {a} and {b}: {differing}"


# --- parity with conda-index on the real corpus, both ways round on each other's cache ----------

# conda-index 0.13 writes no CEP-47 indexed_timestamp: byte parity is with it turned off
NO_STAMP = "--no-indexed-timestamp"


def test_real_corpus_parity_and_shared_cache(tmp_path: Path, conda_index_python: str) -> None:
    ours = copy_real(tmp_path / "ours")
    theirs = copy_real(tmp_path / "theirs")
    subdirs = known_subdirs(ours)
    assert "noarch" in subdirs and len(subdirs) > 3

    first = run_index(ours, NO_STAMP)
    run_conda_index(conda_index_python, theirs)
    assert first.summary["skipped"] == 0, first.skipped
    assert_same_outputs(ours, theirs, subdirs)
    for fake in ("linux-fake", "osx-fake", "win-fake"):
        assert not (ours / fake / "repodata.json").exists()

    # against the manifest's answer key too
    manifest = {Path(r["corpus_path"]).relative_to("real").as_posix(): r for r in read_tsv(CORPUS / "real/MANIFEST.tsv")}
    for subdir in subdirs:
        for fn, rec in records(ours / subdir).items():
            row = manifest[f"{subdir}/{fn}"]
            assert (rec["sha256"], rec["md5"], rec["size"]) == (row["sha256"], row["md5"], int(row["size"])), fn

    reference = {s: (theirs / s / "repodata.json").read_bytes() for s in subdirs}

    # conda-indexd on conda-index's cache.db: nothing is re-extracted, same output
    again = run_index(theirs, NO_STAMP)
    assert again.summary["extracted"] == 0, again.summary
    assert again.summary["skipped"] == 0
    for s in subdirs:
        assert (theirs / s / "repodata.json").read_bytes() == reference[s], s

    # conda-index on conda-indexd's cache.db: nothing is re-extracted, same output
    log = run_conda_index(conda_index_python, ours)
    for s in subdirs:
        assert re.search(rf"\b{re.escape(s)} cached 0 B from 0 packages\b", log), f"conda-index re-extracted in {s}:\n{log[-3000:]}"
        assert (ours / s / "repodata.json").read_bytes() == reference[s], s


# --- parity with conda-index on factory-built channels ----------------------------------------------


def _factory_channel(root: Path) -> None:
    """Valid packages plus the odd kinds that conda-index and conda-indexd both index.

    Left out, as deliberate differences: `./info/` member prefixes (conda-indexd indexes
    them, conda-index finds no index.json) and a folder named like a package (conda-index
    lists it in run_exports.json).
    """
    import test_index

    test_index.build_mixed_channel(root)
    (root / "linux-64/folder-1.0-0.conda").rmdir()
    for kind in f.BROKEN_KINDS:
        if kind.expect == "indexed" and not kind.name.startswith("dot-slash"):
            kind.build(root / "linux-64", "linux-64")


def test_factory_channel_parity(tmp_path: Path, conda_index_python: str) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    _factory_channel(ours)
    _factory_channel(theirs)
    run_index(ours, "--run-exports", "--bz2", NO_STAMP)
    run_conda_index(conda_index_python, theirs, "--run-exports", "--bz2")
    subdirs = ["linux-64", "noarch", "osx-arm64"]
    assert known_subdirs(ours) == subdirs
    assert_same_outputs(ours, theirs, subdirs, ("repodata.json", "repodata_from_packages.json", "run_exports.json"))
    for s in subdirs:
        for name in ("repodata.json.bz2", "repodata_from_packages.json.bz2"):
            assert (ours / s / name).read_bytes() == (theirs / s / name).read_bytes(), f"{s}/{name}"


def test_factory_channel_base_url_parity(tmp_path: Path, conda_index_python: str) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    shutil.copytree(Path(__file__).resolve().parent / "golden" / "channel", ours)
    shutil.copytree(ours, theirs)
    run_index(ours, "--base-url", "https://example.com/ch/", NO_STAMP)
    run_conda_index(conda_index_python, theirs, "--base-url", "https://example.com/ch/")
    assert_same_outputs(ours, theirs, ["linux-64", "noarch"])


def _schema(db_path: Path) -> dict[str, Any]:
    import test_index

    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return {"user_version": db.execute("PRAGMA user_version").fetchone()[0], **test_index.schema_of(db)}
    finally:
        db.close()


def test_cache_schema_equals_conda_index(tmp_path: Path, conda_index_python: str) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for root in (ours, theirs):
        f.make_conda(root / "noarch/one-1.0-0.conda", f.index_json("one"), about={"summary": "x"})
    run_index(ours)
    run_conda_index(conda_index_python, theirs)
    assert _schema(ours / "noarch/.cache/cache.db") == _schema(theirs / "noarch/.cache/cache.db")

    # and the stored rows that conda-index reads are the same
    def rows(root: Path) -> dict[str, Any]:
        db = sqlite3.connect(root / "noarch/.cache/cache.db")
        try:
            return {
                "index_json": db.execute("SELECT path, index_json, name, sha256 FROM index_json").fetchall(),
                "about": db.execute("SELECT path, about FROM about").fetchall(),
                "post_install": [(p, json.loads(v)) for p, v in db.execute("SELECT path, post_install FROM post_install")],
                "stat": db.execute("SELECT stage, path, mtime, size, sha256, md5 FROM stat WHERE stage IN ('fs', 'indexed') ORDER BY stage, path").fetchall(),
            }
        finally:
            db.close()

    a, b = rows(ours), rows(theirs)
    assert a["index_json"] == b["index_json"]
    assert a["about"] == b["about"]
    assert a["post_install"] == b["post_install"]
    # mtimes differ between the two copies; compare the rest
    assert [r[:2] + r[3:] for r in a["stat"]] == [r[:2] + r[3:] for r in b["stat"]]


# --- every odd file of the corpus in one channel ------------------------------------------------------


def test_odd_corpus_in_one_channel(tmp_path: Path) -> None:
    need_corpus("odd", "NOTES.tsv")
    channel = tmp_path / "odd"
    folder = channel / "linux-64"
    folder.mkdir(parents=True)
    rows: dict[str, dict[str, str]] = {}
    for row in read_tsv(CORPUS / "odd/NOTES.tsv"):
        fn = Path(row["corpus_path"]).name
        if fn in rows:
            continue
        rows[fn] = row
        shutil.copyfile(CORPUS / row["corpus_path"], folder / fn)
    assert len(rows) > 50

    result = run_index(channel)
    published = records(folder)
    skipped = {r["path"]: r for r in result.skipped if r.get("subdir") == "linux-64"}
    problems = []
    for fn, row in rows.items():
        what = row["what_is_odd"]
        if fn in published:
            if fn in skipped:
                problems.append(f"{fn}: published and skipped")
            if published[fn] != spec.expected_record(folder / fn):
                problems.append(f"{fn}: record is not index.json as-is + checksums")
        elif fn in skipped:
            if not skipped[fn].get("reason"):
                problems.append(f"{fn}: skipped without a reason")
        else:
            problems.append(f"{fn}: neither published nor logged as skipped ({what})")
        if what.startswith("valid archive but info/index.json lacks 'subdir'") and fn not in published:
            problems.append(f"{fn}: index.json without subdir must be indexed as-is")
        # "no info/index.json" in the notes includes `./info/` prefixes, which are indexed
        unreadable = what.startswith("git-lfs pointer") or (what.startswith("unreadable as conda package") and "no info/index.json" not in what)
        if unreadable and fn in published:
            problems.append(f"{fn}: unreadable file was published ({what})")
    assert not problems, "\n".join(problems)
    assert result.summary["skipped"] == len(skipped)
    assert result.summary["packages"] == len(published)

    again = run_index(channel)
    assert again.summary["extracted"] == 0
    assert again.skipped == []


# --- same filename, new content (alt builds) -------------------------------------------------------------


def _pick_alt(real_rows: dict[str, dict[str, str]], alt_rows: list[dict[str, str]]) -> list[dict[str, str]]:
    wanted = [("linux-64", ".conda"), ("linux-64", ".tar.bz2"), ("osx-arm64", ".conda")]
    picked = []
    for subdir, fmt in wanted:
        for row in sorted(alt_rows, key=lambda r: r["corpus_path"]):
            fn = Path(row["corpus_path"]).name
            real = real_rows.get(f"{subdir}/{fn}")
            if row["subdir"] == subdir and row["format"] == fmt and real and real["sha256"] != row["sha256"]:
                if all(Path(p["corpus_path"]).name != fn for p in picked):
                    picked.append(row)
                    break
    return picked


def test_alt_build_replaces_exactly_one_record(tmp_path: Path) -> None:
    need_corpus("alt", "MANIFEST.tsv")
    real_rows = {Path(r["corpus_path"]).relative_to("real").as_posix(): r for r in read_tsv(CORPUS / "real/MANIFEST.tsv")}
    picked = _pick_alt(real_rows, read_tsv(CORPUS / "alt/MANIFEST.tsv"))
    if not picked:
        pytest.skip("no usable alt builds in the corpus")
    channel = copy_real(tmp_path / "ch", subdirs=tuple({r["subdir"] for r in picked}))
    run_index(channel)
    before = {s: records(channel / s) for s in known_subdirs(channel)}

    for row in picked:
        target = channel / row["subdir"] / Path(row["corpus_path"]).name
        mtime = target.stat().st_mtime_ns
        shutil.copyfile(CORPUS / row["corpus_path"], target)
        os.utime(target, ns=(mtime + 5_000_000_000, mtime + 5_000_000_000))

    result = run_index(channel)
    assert result.summary["extracted"] == len(picked)
    assert result.summary["skipped"] == 0
    replaced = {(r["subdir"], Path(r["corpus_path"]).name): r for r in picked}
    for subdir, old in before.items():
        new = records(channel / subdir)
        assert set(new) == set(old), subdir
        changed = {fn for fn in new if new[fn] != old[fn]}
        assert changed == {fn for (s, fn) in replaced if s == subdir}, subdir
        for fn in changed:
            row = replaced[subdir, fn]
            assert (new[fn]["sha256"], new[fn]["md5"], new[fn]["size"]) == (row["sha256"], row["md5"], int(row["size"]))
            assert new[fn] == spec.expected_record(channel / subdir / fn)
        assert (channel / subdir / "repodata.json").read_bytes() == spec.expected_repodata_bytes(subdir, spec.package_files(channel / subdir))
