"""Switching from conda-index: a channel indexed by conda-index 0.13 --write-shards, then
conda-indexd. Nothing is re-extracted, conda-index's superseded files are reported once,
and --clean-conda-index-leftovers removes exactly those, only once our shards are in
shards/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import peers
from conda_indexd.cli import leftovers
from conftest import run_index
from daemonproc import DaemonProcess, wait_for
from pkgfactory import index_json, make_package

LEFTOVER = re.compile(r"^([0-9a-f]{64}\.msgpack\.zst|repodata_shards_from_packages\.msgpack\.zst|index\.html|patch_instructions\.json)$")


def _files(channel: Path) -> set[str]:
    return {str(p.relative_to(channel)) for p in channel.rglob("*") if p.is_file() and ".cache" not in p.parts}


def conda_index_channel(tmp_path: Path) -> Path:
    """A channel as conda-index 0.13 --write-shards leaves it (skips without conda-index)."""
    channel = tmp_path / "channel"
    make_package(channel / "noarch" / "a-1.0-0.conda", index_json("a", "1.0", "0"), run_exports={"weak": ["a"]})
    make_package(channel / "noarch" / "b-1.0-0.tar.bz2", index_json("b", "1.0", "0", depends=["a"]))
    make_package(channel / "linux-64" / "c-1.0-0.conda", index_json("c", "1.0", "0", "linux-64", depends=["a"]))
    proc = peers.conda_index("--threads", "2", "--write-shards", channel)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return channel


def expected_leftovers(channel: Path) -> set[str]:
    """What conda-index wrote that conda-indexd supersedes, by name (checked below to be
    what conda-index 0.13 really writes)."""
    return {f for f in _files(channel) if "/" in f and f.count("/") == 1 and LEFTOVER.match(f.split("/")[1])}


def test_switch_from_conda_index(tmp_path: Path) -> None:
    channel = conda_index_channel(tmp_path)
    found = expected_leftovers(channel)
    # conda-index 0.13 --write-shards really writes these: root-level shards (one per name),
    # the unpatched shard index, its index.html and its shards-pass patch_instructions.json
    for subdir, names in (("noarch", 2), ("linux-64", 1)):
        mine = {f.split("/")[1] for f in found if f.startswith(subdir + "/")}
        assert sum(1 for f in mine if f.endswith(".msgpack.zst") and len(f) == 64 + 12) == names, mine
        assert {"repodata_shards_from_packages.msgpack.zst", "index.html", "patch_instructions.json"} <= mine
    assert json.loads((channel / "noarch" / "patch_instructions.json").read_text()) == {"a": {}, "b": {}}

    first = run_index(channel)
    assert first.summary["extracted"] == 0, "cache.db carries over: nothing is re-extracted"
    reported = first.events("conda-index leftovers (remove with --clean-conda-index-leftovers)")
    assert sorted(r["subdir"] for r in reported) == ["linux-64", "noarch"]  # once per subdir
    assert {f"{r['subdir']}/{f}" for r in reported for f in r["files"]} == found
    assert expected_leftovers(channel) == found, "reporting removes nothing"
    for subdir in ("noarch", "linux-64"):
        assert list((channel / subdir / "shards").glob("*.msgpack.zst")), "our shards are in shards/"

    before = _files(channel)
    cleaned = run_index(channel, "--clean-conda-index-leftovers")
    assert cleaned.summary["extracted"] == 0
    removed = cleaned.events("conda-index leftovers removed")
    assert {f"{r['subdir']}/{f}" for r in removed for f in r["files"]} == found
    assert _files(channel) == before - found, "exactly the leftovers are gone"
    for subdir in ("noarch", "linux-64"):
        assert (channel / subdir / "repodata.json").is_file() and (channel / subdir / "repodata_shards.msgpack.zst").is_file()

    again = run_index(channel, "--clean-conda-index-leftovers")
    assert not again.events("conda-index leftovers removed") and not again.events("conda-index leftovers (remove with --clean-conda-index-leftovers)")


def test_leftovers_kept_until_our_shards_exist(tmp_path: Path) -> None:
    channel = conda_index_channel(tmp_path)
    found = expected_leftovers(channel)
    result = run_index(channel, "--no-write-shards", "--clean-conda-index-leftovers")
    kept = result.events("conda-index leftovers kept: conda-indexd's shards are not published yet")
    assert sorted(r["subdir"] for r in kept) == ["linux-64", "noarch"]
    assert expected_leftovers(channel) == found and not result.events("conda-index leftovers removed")
    # and before conda-indexd has published anything, the check refuses on its own
    fresh = conda_index_channel(tmp_path / "fresh")
    assert leftovers.our_shards_published(fresh / "noarch") is not None


@pytest.mark.timeout(120)
def test_daemon_reports_once_and_cleans_after_ready(tmp_path: Path) -> None:
    channel = conda_index_channel(tmp_path)
    found = expected_leftovers(channel)
    with DaemonProcess(channel) as d:
        wait_for(lambda: any(r.get("event", "").startswith("conda-index leftovers") for r in d.log_records()), 10,
                 what="the leftovers report")  # fmt: skip

        def publishes() -> int:
            return sum(1 for r in d.log_records() if r.get("event") == "published" and r.get("subdir") == "noarch")

        seen = publishes()
        make_package(channel / "noarch" / "a-2.0-0.conda", index_json("a", "2.0", "0"))
        wait_for(lambda: publishes() > seen, 10, what="a later publish")
    records = d.log_records()
    reports = [r for r in records if r.get("event", "").startswith("conda-index leftovers")]
    assert sorted(r["subdir"] for r in reports) == ["linux-64", "noarch"], "listed once, not at every publish"
    ready_at = next(i for i, r in enumerate(records) if r.get("event") == "ready")
    assert all(records.index(r) > ready_at for r in reports), "reported after the start-up publish"
    assert expected_leftovers(channel) == found

    with DaemonProcess(channel, "--clean-conda-index-leftovers") as d:
        wait_for(lambda: not expected_leftovers(channel), 10, what="leftovers removed")
    assert {f"{r['subdir']}/{f}" for r in d.log_records() if r.get("event") == "conda-index leftovers removed" for f in r["files"]} == found


def test_real_patch_instructions_are_never_leftovers(tmp_path: Path) -> None:
    folder = tmp_path / "noarch"
    folder.mkdir()
    (folder / "patch_instructions.json").write_text('{"packages": {"b-1.0-0.tar.bz2": {"depends": []}}}')
    (folder / "index.html").write_text("<html><body>my own page</body></html>")
    assert leftovers.find_in(folder, write_html=False) == []
    (folder / "patch_instructions.json").write_text('{"a": {}, "b": {}}')
    assert leftovers.find_in(folder, write_html=False) == ["patch_instructions.json"]
