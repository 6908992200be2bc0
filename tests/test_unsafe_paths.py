"""Packages holding names outside the install prefix (issue 17): an absolute path, a `..`
component or an empty name, as a member or as a path paths.json / info/files declares, is
left out with reason `unsafe-path` in both formats; every valid package beside them is
published; names that only look odd are not flagged."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import pkgfactory as f
from conftest import run_index
from daemonproc import DaemonProcess, all_records, repodata, wait_for

pytestmark = pytest.mark.timeout(120)

KINDS = f.UNSAFE_KINDS + f.UNCHECKED_KINDS
UNSAFE = {k.name for k in KINDS if k.expect == "skipped"}


def build_channel_folder(folder: Path, subdir: str = "noarch") -> tuple[dict[str, str], set[str]]:
    """Every unsafe kind plus valid packages of both formats in `folder`.
    Returns ({filename: kind} of the unsafe ones, filenames that must be published)."""
    folder.mkdir(parents=True, exist_ok=True)
    unsafe: dict[str, str] = {}
    published: set[str] = set()
    for kind in KINDS:
        fn = kind.build(folder, subdir)
        if kind.expect == "skipped":
            unsafe[fn] = kind.name
        else:
            published.add(fn)
    for i, ext in enumerate((".conda", ".tar.bz2", ".conda", ".tar.bz2")):
        index = f.index_json(f"valid{i}", "1.0", "0", subdir)
        fn = f.package_filename(index, ext)
        files = {"lib/x.txt": b"x\n", "info/files": b"lib/x.txt\n"}
        f.make_package(folder / fn, index, files, paths_json=f.paths_json_doc(["lib/x.txt"]), about={"summary": "valid"})
        published.add(fn)
    return unsafe, published


def test_kinds_cover_both_formats_and_every_name() -> None:
    names = {k.name for k in f.UNSAFE_KINDS}
    for short in ("tb", "c"):
        for how in ("absolute", "dotdot", "empty"):
            assert f"member-{how}-{short}" in names and f"paths-json-{how}-{short}" in names
    assert {"zip-member-absolute-c", "zip-member-dotdot-c", "zip-member-empty-c", "pkg-member-dotdot-tb"} <= names


def test_index_leaves_unsafe_packages_out_and_publishes_the_rest(channel: Path) -> None:
    unsafe, expected = build_channel_folder(channel / "noarch")
    escape = Path("/tmp/conda-indexd-escape.txt")
    escape.unlink(missing_ok=True)
    result = run_index(channel)
    reasons = {r["path"]: r["reason"] for r in result.skipped}
    assert reasons == dict.fromkeys(unsafe, "unsafe-path"), reasons
    for record in result.skipped:  # the message names the offending path and where it is
        assert "outside the install prefix" in record["detail"], record
    doc = repodata(channel, "noarch")
    assert set(all_records(doc)) == expected
    assert result.summary["skipped"] == len(unsafe)
    assert not escape.exists() and not list(channel.parent.rglob("conda-indexd-escape.txt"))
    # not read again while unchanged
    again = run_index(channel)
    assert again.summary["extracted"] == 0 and again.skipped == []


def test_daemon_counts_unsafe_packages_and_publishes_the_rest(channel: Path, tmp_path: Path) -> None:
    (channel / "noarch").mkdir()
    staging = tmp_path / "staging"
    unsafe, expected = build_channel_folder(staging)
    with DaemonProcess(channel) as d:
        for src in sorted(staging.iterdir()):  # uploads: copy under a dot name, rename into place
            tmp = channel / "noarch" / f".{src.name}.part"
            shutil.copyfile(src, tmp)
            os.replace(tmp, channel / "noarch" / src.name)
        wait_for(lambda: set(all_records(repodata(channel, "noarch"))) == expected, 20, what="the valid packages published")
        wait_for(
            lambda: d.metric("conda_indexd_package_errors_total", subdir="noarch", reason="unsafe-path") == len(unsafe),
            10, what=f"{len(unsafe)} unsafe-path errors",
        )  # fmt: skip
        status = json.loads(d.get("/status.json")[1])
        noarch = next(s for s in status["subdirs"] if s["subdir"] == "noarch")
        assert {s["path"]: s["reason"] for s in noarch["skipped"]} == dict.fromkeys(unsafe, "unsafe-path")
        assert d.get("/healthz")[0] == 200
