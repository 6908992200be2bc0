"""CEP-16 shard encoding (src/conda_indexd/shards.py), checked against the spec and,
optionally, against conda-index 0.13's shards for the real corpus."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

from conda_indexd import shards
from conda_indexd.cache import SubdirCache
from conftest import run_index
from pkgfactory import index_json, make_package
from test_corpus import conda_index_python, copy_real, known_subdirs, run_conda_index  # noqa: F401


def shard_digests(subdir_path: Path) -> dict[str, tuple[bytes, bytes]]:
    with SubdirCache(subdir_path / ".cache" / "cache.db") as cache:
        return {
            name: shards.encode_shard([(fn, text, rx) for _, fn, text, rx in rows])
            for name, rows in itertools.groupby(cache.shard_rows(), key=lambda r: r[0])
        }


def test_shard_contents_follow_the_spec(channel: Path) -> None:
    noarch = channel / "noarch"
    a = make_package(noarch / "a-1.0-0.conda", index_json("a", "1.0", "0"), run_exports={"weak": ["a >=1.0"]})
    b = make_package(noarch / "a-1.0-0.tar.bz2", index_json("a", "1.0", "0"))
    make_package(noarch / "z-2.0-0.conda", index_json("z", "2.0", "0"))
    run_index(channel)
    encoded = shard_digests(noarch)
    assert sorted(encoded) == ["a", "z"]
    data, digest = encoded["a"]
    assert digest == hashlib.sha256(data).digest()
    doc = shards.decode(data)
    assert list(doc) == ["packages", "packages.conda"]
    conda_rec = doc["packages.conda"]["a-1.0-0.conda"]
    tar_rec = doc["packages"]["a-1.0-0.tar.bz2"]
    assert conda_rec["sha256"] == hashlib.sha256(a.read_bytes()).digest()
    assert conda_rec["md5"] == hashlib.md5(a.read_bytes()).digest()
    assert tar_rec["size"] == b.stat().st_size
    assert conda_rec["run_exports"] == {"weak": ["a >=1.0"]}
    assert tar_rec["run_exports"] == {}
    # index.json order, then md5, sha256, size, then run_exports; filtered keys gone
    keys = list(conda_rec)
    assert keys[-4:] == ["md5", "sha256", "size", "run_exports"]
    assert "arch" not in keys and "platform" not in keys
    # the same rows always encode to the same bytes
    assert shard_digests(noarch)["a"] == encoded["a"]


def test_index_layout() -> None:
    data = shards.encode_index(
        "linux-64", {"b": b"\x02" * 32, "a": b"\x01" * 32}, base_url="https://x/ch/", created="2026-01-01T00:00:00Z"
    )
    index = shards.decode(data)
    assert list(index) == ["version", "info", "shards"]
    assert index["version"] == 1
    assert index["info"] == {
        "base_url": "https://x/ch/linux-64/",
        "shards_base_url": "./shards/",
        "created_at": "2026-01-01T00:00:00Z",
        "subdir": "linux-64",
    }
    assert list(index["shards"]) == ["a", "b"] and index["shards"]["a"] == b"\x01" * 32
    assert shards.decode(shards.encode_index("noarch", {}, created="x"))["info"]["base_url"] == ""


def test_fingerprint_changes_with_any_file() -> None:
    base = shards.fingerprint([("a-1-0.conda", "11"), ("a-1-0.tar.bz2", "22")])
    assert base == shards.fingerprint([("a-1-0.tar.bz2", "22"), ("a-1-0.conda", "11")])
    assert base != shards.fingerprint([("a-1-0.conda", "11"), ("a-1-0.tar.bz2", "23")])
    assert base != shards.fingerprint([("a-1-0.conda", "11")])


def test_shards_equal_conda_index(tmp_path: Path, conda_index_python: str) -> None:  # noqa: F811
    """Optional: our shard bytes (so their names) equal conda-index 0.13's for corpus/real."""
    channel = copy_real(tmp_path / "real")
    run_conda_index(conda_index_python, channel, "--write-shards")
    compared = 0
    for subdir in known_subdirs(channel):
        index = shards.decode((channel / subdir / "repodata_shards.msgpack.zst").read_bytes())
        ours = shard_digests(channel / subdir)
        assert sorted(ours) == sorted(index["shards"]), subdir
        for name, (data, digest) in ours.items():
            assert digest == index["shards"][name], (subdir, name)
            theirs = (channel / subdir / f"{digest.hex()}.msgpack.zst").read_bytes()
            assert shards.decode(theirs) == shards.decode(data)
            compared += 1
    assert compared > 200, compared
