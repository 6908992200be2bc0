"""Published files changed from outside (a clean-up script, rsync --delete from a
mirror, a person) are restored within seconds, with no package event; the daemon's own
writes never set this off."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from conda_indexd.formats import shards
from daemonproc import DaemonProcess, wait_for
from pkgfactory import index_json, make_package


def problems(noarch: Path, expected: set[str]) -> list[str]:
    """What is wrong with the published set (empty: all valid and complete)."""
    out = []
    try:
        doc = json.loads((noarch / "repodata.json").read_bytes())
        if set(doc["packages"]) | set(doc["packages.conda"]) != expected:
            out.append("repodata.json records")
        if zstandard.ZstdDecompressor().decompress((noarch / "repodata.json.zst").read_bytes()) != (noarch / "repodata.json").read_bytes():
            out.append("repodata.json.zst")
        json.loads((noarch / "repodata_from_packages.json").read_bytes())
        index = shards.decode((noarch / "repodata_shards.msgpack.zst").read_bytes())
        for name, digest in index["shards"].items():
            data = (noarch / "shards" / f"{digest.hex()}.msgpack.zst").read_bytes()
            if hashlib.sha256(data).digest() != digest:
                out.append(f"shard {name}")
    except Exception as exc:  # noqa: BLE001 - any damage is a problem to report
        out.append(f"{type(exc).__name__}: {exc}")
    return out


def some_shard(noarch: Path) -> Path:
    index = shards.decode((noarch / "repodata_shards.msgpack.zst").read_bytes())
    return noarch / "shards" / f"{index['shards']['b'].hex()}.msgpack.zst"


def overwrite_same_size(path: Path) -> None:
    size = path.stat().st_size
    path.write_bytes(b"\0" * size)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "repodata-removed": lambda n: (n / "repodata.json").unlink(),
    "zst-truncated": lambda n: (n / "repodata.json.zst").write_bytes((n / "repodata.json.zst").read_bytes()[:20]),
    "index-overwritten": lambda n: (n / "repodata_shards.msgpack.zst").write_bytes(b"garbage"),
    "from-packages-removed": lambda n: (n / "repodata_from_packages.json").unlink(),
    "shard-removed": lambda n: some_shard(n).unlink(),
    "shard-overwritten": lambda n: overwrite_same_size(some_shard(n)),
    "everything-removed": lambda n: [p.unlink() for p in [*n.glob("repodata*"), *n.glob("shards/*")]],
}


@pytest.fixture
def running(tmp_path: Path):
    channel = tmp_path / "channel"
    noarch = channel / "noarch"
    for name in "abc":
        make_package(noarch / f"{name}-1.0-0.conda", index_json(name, "1.0", "0"))
    with DaemonProcess(channel, debounce=0.2, settle=0.2) as d:
        yield d, noarch


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_published_files_heal(running: tuple[DaemonProcess, Path], damage: str) -> None:
    d, noarch = running
    expected = {"a-1.0-0.conda", "b-1.0-0.conda", "c-1.0-0.conda"}
    assert problems(noarch, expected) == []
    DAMAGE[damage](noarch)
    assert problems(noarch, expected)
    wait_for(lambda: problems(noarch, expected) == [], 3, what=f"published set valid again after {damage}")


def test_own_writes_do_not_trigger_anything(running: tuple[DaemonProcess, Path]) -> None:
    d, noarch = running
    make_package(noarch / "d-1.0-0.conda", index_json("d", "1.0", "0"))
    wait_for(lambda: "d-1.0-0.conda" in (noarch / "repodata.json").read_text(), d.debounce + 2, what="published")
    time.sleep(2.0)
    records = d.log_records()
    assert not [r for r in records if r.get("event", "").startswith("published files changed from outside")]
    assert d.metric("conda_indexd_events_total", kind="output") == 0
    publishes = [r for r in records if r.get("event") == "published"]
    assert len(publishes) == 2, publishes  # start-up, then the new package: nothing after
