"""CEP-16 shard encoding (src/conda_indexd/formats/shards.py), checked against the spec and,
optionally, against conda-index 0.13's shards for the real corpus."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import time
from pathlib import Path

import pytest

from conda_indexd.backends import index_subdir
from conda_indexd.caches.sqlite.cache import SqliteCache
from conda_indexd.config import IndexConfig
from conda_indexd.formats import shards
from conftest import run_cli, run_index
from pkgfactory import index_json, make_package
from test_corpus import conda_index_python, copy_real, known_subdirs, run_conda_index  # noqa: F401


def shard_digests(subdir_path: Path) -> dict[str, tuple[bytes, bytes]]:
    with SqliteCache(subdir_path / ".cache" / "cache.db") as cache:
        return {
            name: shards.encode_shard([(fn, text, rx) for _, fn, text, rx in rows]) for name, rows in itertools.groupby(cache.shard_rows(), key=lambda r: r[0])
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
    data = shards.encode_index("linux-64", {"b": b"\x02" * 32, "a": b"\x01" * 32}, base_url="https://x/ch/", created="2026-01-01T00:00:00Z")
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


def published(subdir_path: Path) -> tuple[dict, dict[str, dict]]:
    """(the shard index, {name: decoded shard}); every shard the index names must exist
    under shards/ and hash to its name."""
    index = shards.decode((subdir_path / shards.SHARD_INDEX).read_bytes())
    docs = {}
    for name, digest in index["shards"].items():
        data = (subdir_path / "shards" / f"{digest.hex()}.msgpack.zst").read_bytes()
        assert hashlib.sha256(data).digest() == digest, name
        docs[name] = shards.decode(data)
    return index, docs


def shard_files(subdir_path: Path) -> dict[str, tuple[int, int]]:
    """{file name: (inode, mtime_ns)} under shards/."""
    return {e.name: (e.stat().st_ino, e.stat().st_mtime_ns) for e in os.scandir(subdir_path / "shards")}


def pkg(folder: Path, name: str, version: str, build: str = "0", ext: str = ".conda", **kw) -> Path:
    return make_package(folder / f"{name}-{version}-{build}{ext}", index_json(name, version, build), **kw)


def test_index_publishes_shards_matching_repodata(channel: Path) -> None:
    noarch = channel / "noarch"
    pkg(noarch, "a", "1.0", run_exports={"weak": ["a >=1.0"]})
    pkg(noarch, "a", "1.0", ext=".tar.bz2")
    pkg(noarch, "b", "2.0")
    result = index_subdir(IndexConfig(channel=channel, base_url="https://pkgs.example/ch", threads=2), "noarch")
    index, docs = published(noarch)
    assert list(index) == ["version", "info", "shards"] and index["version"] == 1
    assert list(index["info"]) == ["base_url", "shards_base_url", "created_at", "subdir"]
    assert index["info"]["base_url"] == "https://pkgs.example/ch/noarch/"
    assert index["info"]["shards_base_url"] == "./shards/"
    assert index["info"]["subdir"] == "noarch"
    assert list(index["shards"]) == ["a", "b"]
    # the same records as repodata.json, with md5/sha256 as bytes and run_exports added
    repodata = json.loads((noarch / "repodata.json").read_text())
    for section in ("packages", "packages.conda"):
        merged = {fn: rec for doc in docs.values() for fn, rec in doc[section].items()}
        assert sorted(merged) == sorted(repodata[section])
        for fn, rec in merged.items():
            want = dict(repodata[section][fn])
            assert rec.pop("run_exports") == ({"weak": ["a >=1.0"]} if fn == "a-1.0-0.conda" else {})
            assert rec.pop("md5").hex() == want.pop("md5") and rec.pop("sha256").hex() == want.pop("sha256")
            assert rec == want
    files = result.written
    assert files.index("repodata_shards.msgpack.zst") > max(i for i, f in enumerate(files) if f.startswith("shards/"))
    assert files.index("repodata_shards.msgpack.zst") < files.index("repodata.json")
    assert result.log_fields()["shards_written"] == 2 and "shards/" not in str(result.log_fields()["written"])


def test_one_change_encodes_one_shard_and_noop_rewrites_nothing(channel: Path) -> None:
    noarch = channel / "noarch"
    for i in range(20):
        pkg(noarch, f"p{i:02d}", "1.0")
    config = IndexConfig(channel=channel, threads=2)
    first = index_subdir(config, "noarch")
    assert first.shards.encoded == 20 and len(first.shards.written) == 21
    before_files = shard_files(noarch)
    index_bytes = (noarch / shards.SHARD_INDEX).read_bytes()

    again = index_subdir(config, "noarch")
    assert again.written == [] and again.shards.encoded == 0
    assert (noarch / shards.SHARD_INDEX).read_bytes() == index_bytes  # no created_at churn
    assert shard_files(noarch) == before_files

    time.sleep(1.1)  # a later created_at second would show as a rewrite
    pkg(noarch, "p07", "1.1")
    third = index_subdir(config, "noarch", touched=["p07-1.1-0.conda"])
    assert third.shards.encoded == 1
    new_shards = [f for f in third.written if f.startswith("shards/")]
    assert len(new_shards) == 1
    index, docs = published(noarch)
    assert sorted(docs["p07"]["packages.conda"]) == ["p07-1.0-0.conda", "p07-1.1-0.conda"]
    after_files = shard_files(noarch)
    # every other shard file is the very same file; the old p07 shard is kept (retention)
    assert {k: v for k, v in after_files.items() if k in before_files} == before_files
    assert set(after_files) - set(before_files) == {new_shards[0].removeprefix("shards/")}
    assert index["info"]["created_at"] != shards.decode(index_bytes)["info"]["created_at"]


def test_lost_state_or_damaged_shard_is_rebuilt_without_churn(channel: Path) -> None:
    noarch = channel / "noarch"
    for name in "abc":
        pkg(noarch, name, "1.0")
    config = IndexConfig(channel=channel, threads=2)
    index_subdir(config, "noarch")
    index_bytes = (noarch / shards.SHARD_INDEX).read_bytes()
    files = shard_files(noarch)

    (noarch / ".cache" / "shards-state.json").unlink()  # forgotten fingerprints: re-encode, same bytes, no writes
    rerun = index_subdir(config, "noarch")
    assert rerun.shards.encoded == 3 and rerun.written == []
    assert shard_files(noarch) == files

    (noarch / ".cache" / "shards-state.json").write_text("{not json")
    assert index_subdir(config, "noarch").written == []

    victim = noarch / "shards" / f"{shards.decode(index_bytes)['shards']['b'].hex()}.msgpack.zst"
    victim.write_bytes(victim.read_bytes()[:10])  # truncated by someone
    repaired = index_subdir(config, "noarch")
    assert repaired.written == [f"shards/{victim.name}"]
    published(noarch)
    assert (noarch / shards.SHARD_INDEX).read_bytes() == index_bytes


def test_unreferenced_shards_are_kept_for_the_retention_then_deleted(channel: Path) -> None:
    noarch = channel / "noarch"
    pkg(noarch, "keep", "1.0")
    gone = pkg(noarch, "gone", "1.0")
    run_index(channel, "--shard-retention", "8s")
    old = set(shard_files(noarch))
    gone.unlink()
    run_index(channel, "--shard-retention", "8s")
    index, _ = published(noarch)
    assert list(index["shards"]) == ["keep"]
    assert set(shard_files(noarch)) == old  # still there for clients holding the old index
    run_index(channel, "--shard-retention", "8s")
    assert set(shard_files(noarch)) == old
    time.sleep(8.2)
    result = run_index(channel, "--shard-retention", "8s")
    assert set(shard_files(noarch)) == {f"{index['shards']['keep'].hex()}.msgpack.zst"}
    assert result.subdir("noarch")["shards_deleted"] == 1
    # the default retention is a week: nothing goes at once
    pkg(noarch, "keep", "2.0")
    run_index(channel)
    before = set(shard_files(noarch))
    (noarch / "keep-2.0-0.conda").unlink()
    run_index(channel)
    assert set(shard_files(noarch)) == before


def test_no_write_shards_withdraws_the_index(channel: Path) -> None:
    noarch = channel / "noarch"
    pkg(noarch, "a", "1.0")
    run_index(channel, "--no-write-shards")
    assert not (noarch / shards.SHARD_INDEX).exists() and not (noarch / "shards").exists()
    run_index(channel)
    assert (noarch / shards.SHARD_INDEX).exists()
    run_index(channel, "--no-write-shards")
    assert not (noarch / shards.SHARD_INDEX).exists()  # a stale index would hide new packages
    assert (noarch / "shards").is_dir()  # kept for clients that cached the index


@pytest.mark.parametrize("bad", ["soon", "-1", "inf", "5x", ""])
def test_bad_shard_retention_is_a_usage_error(channel: Path, bad: str) -> None:
    result = run_cli("index", channel, "--shard-retention", bad)
    assert result.rc == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--shard-retention" in result.stderr


def test_reader_never_sees_an_index_naming_a_missing_shard(channel: Path) -> None:
    """A reader polling during many updates: every shard the index names is there, and
    every record in repodata.json is in the shards (shards are never behind)."""
    noarch = channel / "noarch"
    config = IndexConfig(channel=channel, threads=2, shard_retention=0)
    pkg(noarch, "base", "1.0")
    index_subdir(config, "noarch")
    problems: list[str] = []
    stop = threading.Event()
    checks = 0

    def reader() -> None:
        nonlocal checks
        while not stop.is_set():
            try:
                data = (noarch / shards.SHARD_INDEX).read_bytes()
                index = shards.decode(data)
                for name, digest in index["shards"].items():
                    path = noarch / "shards" / f"{digest.hex()}.msgpack.zst"
                    if hashlib.sha256(path.read_bytes()).digest() != digest:
                        problems.append(f"bad shard for {name}")
            except FileNotFoundError as exc:
                # with retention 0 an old index's shards may go once a newer index is
                # in place; only a miss while that index is still current is a bug
                if (noarch / shards.SHARD_INDEX).read_bytes() == data:
                    problems.append(f"missing: {exc.filename}")
            except Exception as exc:  # noqa: BLE001
                problems.append(repr(exc))
            checks += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(30):
            name = f"n{i % 5}"
            pkg(noarch, name, f"1.{i}")
            index_subdir(config, "noarch", touched=[f"{name}-1.{i}-0.conda"])
            if i % 3 == 0:
                (noarch / f"{name}-1.{i}-0.conda").unlink()
                index_subdir(config, "noarch", touched=[f"{name}-1.{i}-0.conda"])
    finally:
        stop.set()
        thread.join()
    assert checks > 30 and not problems, problems[:5]
    _, docs = published(noarch)
    repodata = json.loads((noarch / "repodata.json").read_text())
    assert sorted(fn for d in docs.values() for fn in d["packages.conda"]) == sorted(repodata["packages.conda"])


def test_shards_equal_conda_index(tmp_path: Path, conda_index_python: str) -> None:  # noqa: F811
    """Optional: our published shards hold the same records and hashes as conda-index
    0.13's for corpus/real (conda-index puts them in the subdir root, we in shards/)."""
    theirs_root = copy_real(tmp_path / "theirs")
    ours_root = copy_real(tmp_path / "ours")
    run_conda_index(conda_index_python, theirs_root, "--write-shards")
    run_index(ours_root, "--no-indexed-timestamp")  # conda-index 0.13 writes none (CEP-47)
    compared = 0
    for subdir in known_subdirs(theirs_root):
        index_theirs = shards.decode((theirs_root / subdir / shards.SHARD_INDEX).read_bytes())
        index_ours, docs = published(ours_root / subdir)
        assert index_ours["shards"] == index_theirs["shards"], subdir
        assert index_theirs["info"]["shards_base_url"] == "" and index_ours["info"]["base_url"] == ""
        for name, digest in index_theirs["shards"].items():
            theirs = (theirs_root / subdir / f"{digest.hex()}.msgpack.zst").read_bytes()
            assert shards.decode(theirs) == docs[name], (subdir, name)
            compared += 1
    assert compared > 200, compared
