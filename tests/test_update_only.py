"""--update-only with conda-index's meaning: new and changed packages are indexed, the
records of packages no longer on disk are kept (a machine that holds only the new files
adds them to the channel's repodata). For `index` and `watch`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgpack
import pytest
import zstandard

import peers
from conftest import run_index
from daemonproc import DaemonProcess, all_records, repodata, wait_for
from pkgfactory import index_json, make_package


def names(channel: Path, subdir: str = "noarch") -> set[str]:
    return set(all_records(json.loads((channel / subdir / "repodata.json").read_bytes())))


def shard_names(folder: Path) -> set[str]:
    dctx = zstandard.ZstdDecompressor()
    index = msgpack.unpackb(dctx.decompress((folder / "repodata_shards.msgpack.zst").read_bytes()))
    out: set[str] = set()
    for digest in index["shards"].values():
        shard = msgpack.unpackb(dctx.decompress((folder / "shards" / f"{digest.hex()}.msgpack.zst").read_bytes()))
        out |= set(shard["packages"]) | set(shard["packages.conda"])
    return out


def pkg(channel: Path, fn: str) -> Path:
    stem = fn.removesuffix(".conda").removesuffix(".tar.bz2")
    name, version, build = stem.rsplit("-", 2)
    return make_package(channel / "noarch" / fn, index_json(name, version, build))


def test_index_update_only_keeps_records_of_missing_files(channel: Path) -> None:
    old = pkg(channel, "old-1.0-0.conda")
    pkg(channel, "kept-1.0-0.tar.bz2")
    run_index(channel)
    record = all_records(repodata(channel, "noarch"))[old.name]
    old.unlink()  # this machine no longer holds it
    pkg(channel, "new-1.0-0.conda")
    result = run_index(channel, "--update-only")
    assert names(channel) == {"old-1.0-0.conda", "kept-1.0-0.tar.bz2", "new-1.0-0.conda"}
    assert all_records(repodata(channel, "noarch"))[old.name] == record  # the same record, indexed_timestamp included
    assert shard_names(channel / "noarch") == names(channel)
    assert result.summary["extracted"] == 1
    # a changed file is read again
    time.sleep(0.01)
    changed = pkg(channel, "kept-1.0-0.tar.bz2")
    changed.write_bytes(changed.read_bytes())
    again = run_index(channel, "--update-only")
    assert again.summary["extracted"] == 1 and "old-1.0-0.conda" in names(channel)
    # without it, the channel is what is on disk again
    run_index(channel)
    assert names(channel) == {"kept-1.0-0.tar.bz2", "new-1.0-0.conda"}


def test_update_only_same_records_as_conda_index(tmp_path: Path) -> None:
    if peers.find()[0] is None:
        pytest.skip(peers.find()[1])
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for root in (ours, theirs):
        pkg(root, "a-1.0-0.conda")
        pkg(root, "b-1.0-0.tar.bz2")
    run_index(ours, "--no-indexed-timestamp")
    assert peers.conda_index("--threads", "2", theirs).returncode == 0
    for root in (ours, theirs):
        (root / "noarch/a-1.0-0.conda").unlink()
        pkg(root, "c-1.0-0.conda")
    run_index(ours, "--no-indexed-timestamp", "--update-only")
    proc = peers.conda_index("--threads", "2", "--update-only", theirs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert names(ours) == names(theirs) == {"a-1.0-0.conda", "b-1.0-0.tar.bz2", "c-1.0-0.conda"}
    ours_doc = json.loads((ours / "noarch/repodata.json").read_bytes())
    theirs_doc = json.loads((theirs / "noarch/repodata.json").read_bytes())
    for section in ("packages", "packages.conda"):  # c was built twice (other bytes): compare a and b
        for fn in ours_doc[section]:
            if not fn.startswith("c-"):
                assert ours_doc[section][fn] == theirs_doc[section][fn], fn


@pytest.mark.timeout(120)
def test_watch_update_only_keeps_a_deleted_package(channel: Path) -> None:
    gone = pkg(channel, "gone-1.0-0.conda")
    with DaemonProcess(channel, "--update-only", debounce=0.2, settle=0):
        wait_for(lambda: gone.name in names(channel), 20)
        gone.unlink()
        first = pkg(channel, "first-1.0-0.conda")
        wait_for(lambda: first.name in names(channel), 20, what="the new package published")
        time.sleep(1.0)  # the deletion's event has been handled too
        second = pkg(channel, "second-1.0-0.conda")
        wait_for(lambda: second.name in names(channel), 20, what="a later package published")
        assert gone.name in names(channel)
