"""CEP-48 repodata revisions (docs/repodata-revisions.md): records that ask for or need
the v3 map are only there, the revision metadata says what the records say, repodata.json
and the shards agree, --repodata-next matches conda-index 0.13, and py-rattler 0.28 sees a
v3-only package that a reader of packages/packages.conda does not."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard

import peers
import pkgfactory as f
from conftest import run_index

WHEN = 'a >=1[when="python >=3.10"]'


def make(folder: Path, name: str, ext: str = ".conda", **index: Any) -> Path:
    path = folder / f"{name}-1.0-0{ext}"
    maker = f.make_conda if ext == ".conda" else f.make_tar_bz2
    maker(path, f.index_json(name, "1.0", "0", folder.name, **index), {f"share/{name}": os.urandom(8)})
    return path


def doc(folder: Path, name: str = "repodata.json") -> dict[str, Any]:
    return json.loads((folder / name).read_bytes())


def shards(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    dctx = zstandard.ZstdDecompressor()
    index = msgpack.unpackb(dctx.decompress((folder / "repodata_shards.msgpack.zst").read_bytes()))
    docs = {
        name: msgpack.unpackb(dctx.decompress((folder / "shards" / f"{digest.hex()}.msgpack.zst").read_bytes())) for name, digest in index["shards"].items()
    }
    return index, docs


def v3_channel(root: Path) -> Path:
    noarch = root / "noarch"
    make(noarch, "a")  # legacy
    make(noarch, "b", ext=".tar.bz2")  # legacy
    make(noarch, "asks", repodata_revision=3)  # asks for v3, no v3 syntax
    make(noarch, "cond", depends=[WHEN])  # CEP-43 conditional
    make(noarch, "extra", extra_depends={"test": ["b"]})  # CEP-44
    make(noarch, "flagged", ext=".tar.bz2", flags=["gpu"])  # CEP-45
    make(noarch, "extras", constrains=["b[extras=[docs]]"])  # extras in a match spec
    return root


V3_NAMES = {"conda": {"asks-1.0-0", "cond-1.0-0", "extra-1.0-0", "extras-1.0-0"}, "tar.bz2": {"flagged-1.0-0"}}


def test_placement_by_the_rule_and_revision_metadata(tmp_path: Path) -> None:
    channel = v3_channel(tmp_path / "channel")
    noarch = channel / "noarch"
    run_index(channel)
    for name in ("repodata.json", "repodata_from_packages.json"):
        d = doc(noarch, name)
        assert set(d["packages"]) == {"b-1.0-0.tar.bz2"} and set(d["packages.conda"]) == {"a-1.0-0.conda"}, name
        assert {s: set(d["v3"][s]) for s in ("conda", "tar.bz2")} == V3_NAMES and d["v3"]["whl"] == {}
        stamps = [r["indexed_timestamp"] for s in ("conda", "tar.bz2") for r in d["v3"][s].values()]
        # CEP-48: oldest/newest are the indexed_timestamp bounds of the v3 records
        assert d["info"]["repodata_revisions"] == {"v3": {"n_packages": 5, "oldest": min(stamps), "newest": max(stamps)}}
        assert d["v3"]["conda"]["cond-1.0-0"]["depends"] == [WHEN]
    # the shard index says the same, and every record is where repodata.json has it
    index, docs = shards(noarch)
    assert index["info"]["repodata_revisions"] == doc(noarch)["info"]["repodata_revisions"]
    from_shards: dict[str, dict[str, Any]] = {"packages": {}, "packages.conda": {}, "conda": {}, "tar.bz2": {}}
    for shard in docs.values():
        from_shards["packages"].update(shard["packages"])
        from_shards["packages.conda"].update(shard["packages.conda"])
        for s in ("conda", "tar.bz2"):
            from_shards[s].update(shard.get("v3", {}).get(s, {}))
    d = doc(noarch)
    assert {k: set(v) for k, v in from_shards.items()} == {
        "packages": set(d["packages"]), "packages.conda": set(d["packages.conda"]), **{s: set(d["v3"][s]) for s in ("conda", "tar.bz2")}
    }  # fmt: skip
    assert from_shards["conda"]["extra-1.0-0"]["indexed_timestamp"] == d["v3"]["conda"]["extra-1.0-0"]["indexed_timestamp"]
    # a second run keeps everything, the v3 set included (saved memo)
    again = run_index(channel)
    assert again.summary["extracted"] == 0 and doc(noarch) == d
    # a v3 package removed: the metadata follows
    (noarch / "asks-1.0-0.conda").unlink()
    run_index(channel)
    assert doc(noarch)["info"]["repodata_revisions"]["v3"]["n_packages"] == 4
    assert shards(noarch)[0]["info"]["repodata_revisions"]["v3"]["n_packages"] == 4
    # the last one removed: no v3 map at all (conda-index 0.13's bytes for a legacy channel)
    for p in noarch.glob("*.*"):
        if p.name.split("-1.0")[0] in {"cond", "extra", "flagged", "extras"}:
            p.unlink()
    run_index(channel)
    assert "v3" not in doc(noarch) and "repodata_revisions" not in doc(noarch)["info"]
    assert "repodata_revisions" not in shards(noarch)[0]["info"]


def test_invalid_v3_packages_are_skipped_with_their_reason(channel: Path) -> None:
    noarch = channel / "noarch"
    make(noarch, "good", depends=[WHEN])
    make(noarch, "legacyflags", repodata_revision=0, flags=["gpu"])
    make(noarch, "legacywhen", repodata_revision=0, depends=[WHEN])
    make(noarch, "future", repodata_revision=7)
    make(noarch, "oldif", depends=["a; if python >=3.10"], extra_depends={"x": ["b"]})
    make(noarch, "unbalanced", depends=['a[when="python >=3.10"'])
    result = run_index(channel)
    skipped = {s["path"]: s["reason"] for s in result.skipped}
    assert skipped == dict.fromkeys(
        ["future-1.0-0.conda", "legacyflags-1.0-0.conda", "legacywhen-1.0-0.conda", "oldif-1.0-0.conda", "unbalanced-1.0-0.conda"], "bad-v3-record"
    )
    assert set(doc(noarch)["v3"]["conda"]) == {"good-1.0-0"}


def test_patches_reach_v3_records(channel: Path, tmp_path: Path) -> None:
    noarch = channel / "noarch"
    make(noarch, "cond", depends=[WHEN])
    gen = tmp_path / "gen.py"
    gen.write_text("def _patch_repodata(repodata, subdir):\n    return {'packages.conda': {'cond-1.0-0.conda': {'license': 'MIT'}}}\n")
    run_index(channel, "--patch-generator", gen)
    assert doc(noarch)["v3"]["conda"]["cond-1.0-0"]["license"] == "MIT"
    assert doc(noarch, "repodata_from_packages.json")["v3"]["conda"]["cond-1.0-0"]["license"] == "BSD-3-Clause"
    _, docs = shards(noarch)
    assert docs["cond"]["v3"]["conda"]["cond-1.0-0"]["license"] == "MIT"


def test_rattler_sees_a_v3_only_package(tmp_path: Path) -> None:
    rattler = pytest.importorskip("rattler")
    channel = v3_channel(tmp_path / "channel")
    run_index(channel)
    d = doc(channel / "noarch")
    assert "extra-1.0-0.conda" not in {**d["packages"], **d["packages.conda"]}  # a legacy reader does not see it
    gateway = rattler.Gateway(cache_dir=tmp_path / "cache")
    records = asyncio.run(rattler.solve([channel.as_uri()], ["extra"], gateway=gateway, platforms=["noarch"]))
    (record,) = records
    assert record.name.normalized == "extra" and int(record.indexed_timestamp.timestamp() * 1000) == d["v3"]["conda"]["extra-1.0-0"]["indexed_timestamp"]


def _parity_channel(root: Path) -> Path:
    import test_corpus

    try:
        return test_corpus.copy_real(root)
    except pytest.skip.Exception:
        test_corpus._factory_channel(root)
        return root


def test_repodata_next_parity_with_conda_index(tmp_path: Path) -> None:
    """--repodata-next as conda-index 0.13 has it: every record into v3 (same records,
    same bytes with --no-indexed-timestamp, where oldest/newest are the build timestamps as
    0.13 has them), and a warning."""
    if peers.find()[0] is None:
        pytest.skip(peers.find()[1])
    ours = _parity_channel(tmp_path / "ours")
    theirs = tmp_path / "theirs"
    shutil.copytree(ours, theirs)
    result = run_index(ours, "--repodata-next", "--no-indexed-timestamp")
    assert [r for r in result.records if r.get("level") == "warning" and "--repodata-next" in r.get("event", "")]
    proc = peers.conda_index("--threads", "2", "--repodata-next", theirs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import test_corpus

    subdirs = test_corpus.known_subdirs(theirs)
    compared = 0
    for s in subdirs:
        mine, want = doc(ours / s), doc(theirs / s)
        assert mine["packages"] == mine["packages.conda"] == {}
        assert mine["v3"] == want["v3"], s
        assert mine["info"] == want["info"], s
        assert (ours / s / "repodata.json").read_bytes() == (theirs / s / "repodata.json").read_bytes(), s
        compared += sum(len(v) for v in mine["v3"].values())
    assert compared > 10
    # with indexed_timestamp (the default) the same records, each with its value, and the bounds from those
    run_index(ours, "--repodata-next")
    for s in subdirs:
        mine = doc(ours / s)
        values = [r.pop("indexed_timestamp") for sec in ("conda", "tar.bz2") for r in mine["v3"][sec].values()]
        assert mine["v3"] == doc(theirs / s)["v3"], s
        if values:
            assert mine["info"]["repodata_revisions"]["v3"]["oldest"] == min(values)


def test_current_repodata_holds_the_legacy_maps_only(tmp_path: Path) -> None:
    pytest.importorskip("rattler")
    channel = v3_channel(tmp_path / "channel")
    run_index(channel, "--current-repodata")
    current = doc(channel / "noarch", "current_repodata.json")
    assert "v3" not in current and "repodata_revisions" not in current["info"]
    assert set(current["packages.conda"]) == {"a-1.0-0.conda"}
