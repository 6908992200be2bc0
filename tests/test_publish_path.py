"""The publish path at scale (issue 13): patches applied record by record give the bytes
of the whole-document patch, empty instructions cost nothing, a patch change re-encodes
only the shards of the names it touches, and a streamed .zst is one frame."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgpack
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conda_indexd.config import IndexConfig
from conda_indexd.formats import patches, shards
from conda_indexd.formats.repodata import Document, build_repodata, record_piece
from conda_indexd.names import REPODATA, REPODATA_FROM_PACKAGES, compact_json
from conda_indexd.pipeline import build
from conda_indexd.pipeline.outputs import publish_outputs
from conda_indexd.stores.local import LocalStore
from conftest import run_index
from pkgfactory import index_json, make_package

FILES = ["a-1-0.tar.bz2", "a-1-0.conda", "b-1-0.conda", "c-1-0.tar.bz2", "d-2-0.conda", "d-2-0.tar.bz2", "e-1-0.conda"]
FIXES = st.sampled_from([{}, {"license": None}, {"depends": ["x >=1"]}, {"extra": {"k": "v"}}, {"license": "BSD"},
                         {"constrains": None, "features": "f"}, {"nested": {"a": None, "b": 1}}])  # fmt: skip
NAMES = st.sampled_from(FILES + ["zz-1-0.conda", "zz-1-0.tar.bz2"])


def record(fn: str) -> dict:
    name, version, build_ = fn.removesuffix(".conda").removesuffix(".tar.bz2").split("-")
    return {"name": name, "version": version, "build": build_, "depends": ["y"], "license": "MIT",
            "nested": {"a": 1}, "sha256": "00" * 32}  # fmt: skip


def pieces(files: list[str]) -> list[tuple[str, str]]:
    return sorted((fn, record_piece(fn, json.dumps(record(fn)))) for fn in files)


def whole_document(files: list[str], instructions: dict) -> bytes:
    """The reference: parse the whole document, patches.apply, dump (as conda-index)."""
    doc = json.loads(build_repodata("noarch", pieces(files)))
    return compact_json(patches.apply(doc, instructions)).encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.lists(st.sampled_from(FILES), unique=True),
    tar=st.dictionaries(NAMES, FIXES, max_size=4),
    conda=st.dictionaries(NAMES, FIXES, max_size=4),
    revoke=st.lists(NAMES, max_size=3),
    remove=st.lists(NAMES, max_size=3),
)
def test_per_record_patches_equal_the_whole_document_patch(tmp_path: Path, files: list[str], tar: dict, conda: dict, revoke: list, remove: list) -> None:
    instructions = {"patch_instructions_version": 1, "packages": tar, "packages.conda": conda, "revoke": revoke,
                    "remove": remove, "a": {}}  # fmt: skip
    built = build.build_outputs(IndexConfig(tmp_path), "noarch", pieces(files), existing_instructions=json.dumps(instructions).encode())
    out = built.outputs[REPODATA]
    assert (out if isinstance(out, bytes) else out.to_bytes()) == whole_document(files, instructions)
    # the shards: the same records, patched one shard at a time
    rows = [(fn, json.dumps(record(fn)), None) for fn in files]
    whole = shards.shard_document(rows)
    patches.apply(whole, instructions)
    if not whole["removed"]:
        del whole["removed"]
    data, _ = shards.encode_shard(rows, instructions)
    assert data == shards.zstd.compress(msgpack.packb(whole))


def test_empty_instructions_cost_nothing(tmp_path: Path) -> None:
    files = FILES
    conda_index_style = json.dumps({"a": {}, "b": {}, "c": {}, "packages": {"a-1-0.tar.bz2": {}}}).encode()
    built = build.build_outputs(IndexConfig(tmp_path), "noarch", pieces(files), existing_instructions=conda_index_style)
    assert built.patched_records == 0
    assert built.outputs[REPODATA] is built.outputs[REPODATA_FROM_PACKAGES]  # one document, one pass
    keys = sorted((fn.split("-")[0], fn, "00" * 32) for fn in files)
    plain = shards.plan_shards(shards.ShardState(), keys, None, None, {})
    empty = shards.plan_shards(shards.ShardState(), keys, None, json.loads(conda_index_style), {})
    assert plain.todo == empty.todo and empty.salt == ""  # the fingerprints of an unpatched channel


def encoded(channel: Path) -> int:
    """shards_encoded of noarch in a one-shot run's log."""
    lines = [json.loads(line) for line in run_index(channel, "--log-format", "json").stdout.splitlines() if line.startswith("{")]
    return next(line["shards_encoded"] for line in lines if line.get("event") == "subdir indexed" and line["subdir"] == "noarch")


def test_a_patch_change_reencodes_only_the_touched_names_shards(tmp_path: Path) -> None:
    channel = tmp_path / "channel"
    for name in ("a", "b", "c", "d"):
        make_package(channel / "noarch" / f"{name}-1.0-0.conda", index_json(name, "1.0", "0", "noarch", license="MIT"))
    instructions = channel / "noarch" / "patch_instructions.json"
    instructions.write_text(json.dumps({n: {} for n in "abcd"}))  # as conda-index --write-shards leaves it
    assert encoded(channel) == 4
    before = (channel / "noarch" / "repodata.json").read_bytes()
    assert before == (channel / "noarch" / "repodata_from_packages.json").read_bytes()
    instructions.write_text(json.dumps({"packages.conda": {"b-1.0-0.conda": {"license": "BSD"}}}))
    assert encoded(channel) == 1
    doc = json.loads((channel / "noarch" / "repodata.json").read_text())
    assert doc["packages.conda"]["b-1.0-0.conda"]["license"] == "BSD"
    assert doc["packages.conda"]["a-1.0-0.conda"]["license"] == "MIT"
    instructions.write_text(json.dumps({"packages.conda": {"b-1.0-0.conda": {"license": "BSD"}}, "c": {}}))
    assert encoded(channel) == 0  # the same patches
    instructions.unlink()
    assert encoded(channel) == 1  # b is unpatched again
    assert (channel / "noarch" / "repodata.json").read_bytes() == before


def test_a_streamed_zst_is_one_frame_a_single_frame_decoder_reads(tmp_path: Path) -> None:
    channel = tmp_path / "channel"
    (channel / "noarch").mkdir(parents=True)
    files = [f"p{i:05d}-1-0.conda" for i in range(9000)] + [f"p{i:05d}-1-0.tar.bz2" for i in range(3000)]
    sections: dict[str, list[bytes]] = {"packages": [], "packages.conda": []}
    for fn, piece in sorted((fn, record_piece(fn, json.dumps({"name": fn, "n": i}))) for i, fn in enumerate(files)):
        sections["packages.conda" if fn.endswith(".conda") else "packages"].append(piece.encode())
    doc = Document("noarch", sections["packages"], sections["packages.conda"])
    data = doc.to_bytes()
    assert doc.size == len(data) and json.loads(data)["packages.conda"]["p00042-1-0.conda"]["n"] == 42
    store = LocalStore(channel)
    written = publish_outputs(IndexConfig(channel, bz2=True), store, "noarch", {REPODATA_FROM_PACKAGES: doc, REPODATA: doc})
    assert written == [REPODATA_FROM_PACKAGES, REPODATA_FROM_PACKAGES + ".zst", REPODATA_FROM_PACKAGES + ".bz2",
                       REPODATA, REPODATA + ".zst", REPODATA + ".bz2"]  # fmt: skip
    for suffix in ("", ".zst", ".bz2"):  # streamed once: the second name is the same file
        assert os.path.samefile(channel / "noarch" / (REPODATA + suffix), channel / "noarch" / (REPODATA_FROM_PACKAGES + suffix))
    for name in (REPODATA, REPODATA_FROM_PACKAGES):
        assert (channel / "noarch" / name).read_bytes() == data
        blob = (channel / "noarch" / f"{name}.zst").read_bytes()
        assert zstandard.get_frame_parameters(blob).content_size == len(data)
        one = zstandard.ZstdDecompressor().decompressobj()  # stops at the end of the first frame
        assert one.decompress(blob) == data and one.eof and one.unused_data == b""
    assert publish_outputs(IndexConfig(channel, bz2=True), store, "noarch", {REPODATA_FROM_PACKAGES: doc, REPODATA: doc}) == []
    stale = channel / "noarch" / "stale"
    stale.write_bytes(b"stale")
    stale.replace(channel / "noarch" / f"{REPODATA}.zst")  # as tools replace a file: repaired, nothing else rewritten
    assert publish_outputs(IndexConfig(channel, bz2=True), store, "noarch", {REPODATA_FROM_PACKAGES: doc, REPODATA: doc}) == [REPODATA + ".zst"]
    (channel / "noarch" / f"{REPODATA}.zst").write_bytes(b"stale")  # in place: the twin names share the file, both repaired
    assert publish_outputs(IndexConfig(channel, bz2=True), store, "noarch", {REPODATA_FROM_PACKAGES: doc, REPODATA: doc}) == [
        REPODATA_FROM_PACKAGES + ".zst", REPODATA + ".zst"]  # fmt: skip
    assert zstandard.ZstdDecompressor().decompress((channel / "noarch" / f"{REPODATA}.zst").read_bytes()) == data
    assert sorted(p.name for p in (channel / "noarch").iterdir() if p.name.startswith(".")) == []  # no temporaries


def test_quiet_rescans_still_see_every_change(tmp_path: Path) -> None:
    from conda_indexd.backends import index_subdir

    channel = tmp_path / "channel"
    noarch = channel / "noarch"
    for name in ("a", "b"):
        make_package(noarch / f"{name}-1.0-0.conda", index_json(name, "1.0", "0", "noarch"))
    config = IndexConfig(channel, threads=1)
    assert index_subdir(config, "noarch").added == ["a-1.0-0.conda", "b-1.0-0.conda"]
    make_package(noarch / "z-1.0-0.conda", index_json("z", "1.0", "0", "noarch"))
    first = index_subdir(config, "noarch")  # a one-shot run reports against the cache's last publish
    assert first.added == ["z-1.0-0.conda"] and first.removed == [] and first.changed == []
    (noarch / "z-1.0-0.conda").unlink()
    memo = index_subdir(config, "noarch").memo
    quiet = index_subdir(config, "noarch", memo=memo)
    assert quiet.written == [] and quiet.packages == 2 and quiet.repodata_bytes == (noarch / REPODATA).stat().st_size
    # a damaged output of the same size is repaired by the next rescan
    zst = noarch / f"{REPODATA}.zst"
    good = zst.read_bytes()
    zst.write_bytes(b"\0" * len(good))  # in place: repodata_from_packages.json.zst is the same file
    repaired = index_subdir(config, "noarch", memo=memo).written
    assert repaired == [f"{REPODATA_FROM_PACKAGES}.zst", f"{REPODATA}.zst"] and zst.read_bytes() == good
    # an event run, then a removal nobody reported: the rescan after it lists again
    make_package(noarch / "c-1.0-0.conda", index_json("c", "1.0", "0", "noarch"))
    assert index_subdir(config, "noarch", touched=["c-1.0-0.conda"], memo=memo).added == ["c-1.0-0.conda"]
    (noarch / "c-1.0-0.conda").unlink()
    rescan = index_subdir(config, "noarch", memo=memo)
    assert rescan.removed == ["c-1.0-0.conda"] and "c-1.0-0.conda" not in (noarch / REPODATA).read_text()
    # new patch instructions are an input too
    (noarch / "patch_instructions.json").write_text(json.dumps({"packages.conda": {"a-1.0-0.conda": {"license": "X"}}}))
    assert REPODATA in index_subdir(config, "noarch", memo=memo).written
    assert json.loads((noarch / REPODATA).read_text())["packages.conda"]["a-1.0-0.conda"]["license"] == "X"
