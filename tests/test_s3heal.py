"""A bucket channel heals itself (issue 23): outputs deleted or damaged from outside (an
`aws s3 rm`, a sync with `--delete`, a lifecycle rule) are restored by the next
`index s3://` run and by the daemon's periodic rescan, and a rescan with nothing damaged
still writes nothing. Checked from the outside, with GETs on the session's real Ceph RGW
(tests/rgwserver.py; skips without it)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard

from daemonproc import DaemonProcess, wait_for
from pkgfactory import index_json, make_conda

PREFIX = "chan/noarch/"


def get(s3: Any, bucket: str, key: str) -> bytes | None:
    try:
        return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def outputs(s3: Any, bucket: str) -> dict[str, bytes]:
    """Every published file of the subdir but the packages and the shards, by name."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX, Delimiter="/").get("Contents", [])
    names = [o["Key"].removeprefix(PREFIX) for o in listed]
    return {n: get(s3, bucket, PREFIX + n) or b"" for n in names if not n.endswith((".conda", ".tar.bz2"))}


def shard_index(blob: bytes | None) -> dict[str, Any]:
    """A shard index without its created_at (the time of the run that wrote it)."""
    assert blob is not None
    doc = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(blob))
    doc["info"].pop("created_at", None)
    return dict(doc)


INDEX = "repodata_shards.msgpack.zst"


def problems(s3: Any, bucket: str, fresh: dict[str, bytes]) -> list[str]:
    """How the published set differs from what the fresh index gave (empty: restored):
    the same bytes for every output (the shard index apart from its created_at), and
    every shard the index names there, hashing to its name."""
    now = outputs(s3, bucket)
    out = []
    for name in sorted(fresh):
        if name not in now:
            out.append(f"{name} missing")
        elif now[name] != fresh[name] and (name != INDEX or shard_index(now[name]) != shard_index(fresh[name])):
            out.append(f"{name} other bytes")
    if INDEX in now:
        for name, digest in shard_index(now[INDEX])["shards"].items():
            data = get(s3, bucket, f"{PREFIX}shards/{digest.hex()}.msgpack.zst")
            if data is None or hashlib.sha256(data).digest() != digest:
                out.append(f"shard of {name} {'missing' if data is None else 'other bytes'}")
    return out


def named_shard(s3: Any, bucket: str, name: str = "b") -> str:
    index = shard_index(get(s3, bucket, PREFIX + INDEX))
    return f"{PREFIX}shards/{index['shards'][name].hex()}.msgpack.zst"


def garbage_of_the_same_size(s3: Any, bucket: str, key: str) -> None:
    old = get(s3, bucket, key)
    assert old is not None
    new = bytes(b ^ 0xFF for b in old)  # as long, every byte other
    s3.put_object(Bucket=bucket, Key=key, Body=new)


DAMAGE: dict[str, Callable[[Any, str], object]] = {
    "repodata-deleted": lambda s3, b: s3.delete_object(Bucket=b, Key=PREFIX + "repodata.json"),
    "zst-overwritten-same-size": lambda s3, b: garbage_of_the_same_size(s3, b, PREFIX + "repodata.json.zst"),
    "named-shard-deleted": lambda s3, b: s3.delete_object(Bucket=b, Key=named_shard(s3, b)),
    "named-shard-truncated": lambda s3, b: s3.put_object(Bucket=b, Key=named_shard(s3, b), Body=(get(s3, b, named_shard(s3, b)) or b"")[:-7]),
}


@pytest.fixture
def indexed(tmp_path: Path, s3: Any, bucket: str, index: Any) -> dict[str, bytes]:
    """Three packages in `chan/noarch/`, indexed once with a state folder: the outputs
    that fresh index published."""
    for name in "abc":
        path = make_conda(tmp_path / "pkgs" / f"{name}-1.0-0.conda", index_json(name, "1.0"), {f"share/{name}.txt": name.encode() * 50})
        s3.upload_file(str(path), bucket, PREFIX + path.name)
    index(f"s3://{bucket}/chan", "--cache-dir", tmp_path / "state")
    fresh = outputs(s3, bucket)
    assert {"repodata.json", "repodata.json.zst", "repodata_from_packages.json", INDEX} <= set(fresh)
    assert problems(s3, bucket, fresh) == []
    return fresh


def written(result: Any) -> list[str]:
    (subdir,) = [r for r in result.events("subdir indexed") if r["subdir"] == "noarch"]
    return [*subdir["written"], *["shards/"] * subdir["shards_written"]]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_index_rerun_restores(tmp_path: Path, s3: Any, bucket: str, index: Any, indexed: dict[str, bytes], damage: str) -> None:
    args = (f"s3://{bucket}/chan", "--cache-dir", tmp_path / "state")
    DAMAGE[damage](s3, bucket)
    assert problems(s3, bucket, indexed)  # the damage is real
    rerun = index(*args)
    assert rerun.summary["extracted"] == 0 and written(rerun)  # nothing read again, the damage written over
    assert problems(s3, bucket, indexed) == []
    assert written(index(*args)) == []  # and quiet again


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_daemon_rescan_restores(tmp_path: Path, s3: Any, bucket: str, indexed: dict[str, bytes], damage: str) -> None:
    """No notifications and no polling: only the periodic rescan (every second here) can
    see the damage. Before it and after the repair, rescans write nothing. The daemon has
    a state folder of its own, so it builds and publishes once at start-up (writing
    nothing: the bytes are equal) and its rescans start from what that publish left."""
    daemon = DaemonProcess(tmp_path, "--rescan-interval", "1", debounce=0.2, log=tmp_path / "daemon.log")
    daemon.args[daemon.args.index(str(tmp_path))] = f"s3://{bucket}/chan"
    daemon.args += ["--cache-dir", str(tmp_path / "daemon-state")]

    def writes() -> float:
        m = daemon.metrics()
        return sum(
            v for (name, labels), v in m.items() if name == "conda_indexd_s3_requests_total" and dict(labels)["operation"] in ("put_object", "copy_object")
        )

    def quiet_for_two_rescans() -> None:
        before, rescans = writes(), daemon.metric("conda_indexd_rescans_total", reason="periodic")
        # a rescan is counted when queued: the third one queued means two have run
        wait_for(lambda: daemon.metric("conda_indexd_rescans_total", reason="periodic") >= rescans + 3, 15, what="three rescans")
        wait_for(lambda: daemon.get("/readyz")[0] == 200, 10, what="ready")
        assert writes() == before and problems(s3, bucket, indexed) == []

    with daemon.start():
        quiet_for_two_rescans()
        DAMAGE[damage](s3, bucket)
        assert problems(s3, bucket, indexed)
        wait_for(lambda: problems(s3, bucket, indexed) == [], 10, what=f"restored after {damage}")
        assert writes() > 0
        quiet_for_two_rescans()
        assert "Traceback" not in daemon.log_text()
