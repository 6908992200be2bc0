"""Repodata patches (--patch-generator, §6.6): in repodata.json, in the shards, and to
py-rattler's solver; failures keep the last good repodata."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from conda_indexd.formats import shards
from conftest import run_cli, run_index
from daemonproc import DaemonProcess, all_records, repodata, wait_for
from pkgfactory import index_json, make_package
from test_corpus import conda_index_python, run_conda_index  # noqa: F401

INSTRUCTIONS = {
    "patch_instructions_version": 1,
    "packages": {"a-1.0-0.tar.bz2": {"depends": ["b >=2"], "license": None, "extra": {"note": "patched"}}},
    "revoke": ["c-1.0-0.conda"],
    "remove": ["d-1.0-0.conda"],
}
GENERATOR = f"""
def _patch_repodata(repodata, subdir):
    if subdir != "noarch":
        return {{}}
    return {INSTRUCTIONS!r}
"""


def make_channel(root: Path) -> Path:
    noarch = root / "noarch"
    for fn, deps in (("a-1.0-0.tar.bz2", ["b"]), ("a-1.0-0.conda", ["b"]), ("b-1.0-0.conda", []),
                     ("c-1.0-0.conda", []), ("d-1.0-0.conda", [])):  # fmt: skip
        name = fn.split("-")[0]
        idx = index_json(name, "1.0", "0", "noarch", depends=deps, license="MIT")
        idx["noarch"] = "generic"
        make_package(noarch / fn, idx)
    (root / "linux-64").mkdir()
    return root


def decoded_shards(subdir: Path) -> dict[str, dict]:
    index = shards.decode((subdir / shards.SHARD_INDEX).read_bytes())
    return {n: shards.decode((subdir / "shards" / f"{d.hex()}.msgpack.zst").read_bytes()) for n, d in index["shards"].items()}


def check_patched(channel: Path) -> None:
    noarch = channel / "noarch"
    doc = json.loads((noarch / "repodata.json").read_text())
    raw = json.loads((noarch / "repodata_from_packages.json").read_text())
    for section, fn in (("packages", "a-1.0-0.tar.bz2"), ("packages.conda", "a-1.0-0.conda")):
        rec = doc[section][fn]
        assert rec["depends"] == ["b >=2"] and "license" not in rec and rec["extra"] == {"note": "patched"}
        assert raw[section][fn]["depends"] == ["b"]  # repodata_from_packages stays unpatched
    assert doc["packages.conda"]["c-1.0-0.conda"]["revoked"] is True
    assert doc["packages.conda"]["c-1.0-0.conda"]["depends"] == ["package_has_been_revoked"]
    assert "d-1.0-0.conda" not in doc["packages.conda"] and doc["removed"] == ["d-1.0-0.conda"]
    assert "d-1.0-0.conda" in raw["packages.conda"]
    # the shards carry the same patches; a removed name stays with empty sections
    sh = decoded_shards(noarch)
    assert sh["a"]["packages"]["a-1.0-0.tar.bz2"]["depends"] == ["b >=2"]
    assert sh["a"]["packages.conda"]["a-1.0-0.conda"]["depends"] == ["b >=2"]
    assert "removed" not in sh["a"]
    assert sh["c"]["packages.conda"]["c-1.0-0.conda"]["revoked"] is True
    assert sh["d"] == {"packages": {}, "packages.conda": {}, "removed": ["d-1.0-0.conda"]}


def solve(channel: Path, spec: str) -> dict[str, str] | str:
    rattler = pytest.importorskip("rattler")
    try:
        records = asyncio.run(rattler.solve([channel.as_uri()], [spec], platforms=["linux-64", "noarch"],
                                            virtual_packages=[], gateway=rattler.Gateway(cache_dir=channel.parent / "rcache")))  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the solver's own error types
        return type(exc).__name__
    return {r.name.normalized: str(r.version) for r in records}


@pytest.mark.parametrize("kind", ["py", "package"])
def test_patches_reach_repodata_shards_and_the_solver(tmp_path: Path, kind: str) -> None:
    channel = make_channel(tmp_path / "channel")
    if kind == "py":
        generator = tmp_path / "gen.py"
        generator.write_text(GENERATOR)
    else:
        generator = make_package(tmp_path / "patches-1.0-0.conda", index_json("patches", "1.0", "0"),
                                 {"noarch/patch_instructions.json": json.dumps(INSTRUCTIONS).encode()})  # fmt: skip
    run_index(channel, "--patch-generator", generator)
    check_patched(channel)
    written = (channel / "noarch" / "patch_instructions.json").read_bytes()
    assert written == (json.dumps(INSTRUCTIONS, sort_keys=True, separators=(",", ":")) + "\n").encode()
    assert not (channel / "linux-64" / "patch_instructions.json").exists()
    assert solve(channel, "b") == {"b": "1.0"}
    assert solve(channel, "a") == "SolverError"  # needs b >=2 now
    assert solve(channel, "c") == "SolverError"  # revoked
    assert solve(channel, "d") == "SolverError"  # removed
    # a second run changes nothing; the stored instructions keep applying without a generator
    assert run_index(channel, "--patch-generator", generator).subdir("noarch")["written"] == []
    assert run_index(channel).subdir("noarch")["written"] == []
    check_patched(channel)


@pytest.mark.parametrize(
    "body", ["raise RuntimeError('boom')", "return ['not', 'instructions']", "return {'patch_instructions_version': 2}", "return {'revoke': 'c-1.0-0.conda'}"]
)
def test_failing_generator_keeps_the_last_good_repodata(tmp_path: Path, body: str) -> None:
    channel = make_channel(tmp_path / "channel")
    run_index(channel)
    before = {p.name: p.read_bytes() for p in (channel / "noarch").iterdir() if p.is_file()}
    bad = tmp_path / "bad.py"
    bad.write_text(f"def _patch_repodata(repodata, subdir):\n    {body}\n")
    result = run_index(channel, "--patch-generator", bad, check=False)
    assert result.rc == 1 and "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and "patches failed" in result.stderr
    assert "noarch" in [r["subdir"] for r in result.events("patches failed; subdir left as it was")]
    after = {p.name: p.read_bytes() for p in (channel / "noarch").iterdir() if p.is_file()}
    assert after == before


def test_missing_generator_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("index", make_channel(tmp_path / "channel"), "--patch-generator", tmp_path / "nope.py")
    assert result.rc == 2 and result.stderr.count("\n") == 1 and "patch generator not found" in result.stderr


def test_daemon_republishes_on_generator_change_and_survives_a_broken_one(tmp_path: Path) -> None:
    channel = make_channel(tmp_path / "channel")
    generator = tmp_path / "gen.py"
    generator.write_text("def _patch_repodata(repodata, subdir):\n    return {}\n")
    with DaemonProcess(channel, "--patch-generator", str(generator)) as d:
        # files younger than --settle at start-up are published just after ready
        wait_for(lambda: "d-1.0-0.conda" in all_records(repodata(channel, "noarch")), 10, what="first publish")
        generator.write_text(GENERATOR)
        wait_for(lambda: "d-1.0-0.conda" not in all_records(repodata(channel, "noarch")), 10, what="patched publish")
        check_patched(channel)
        good = (channel / "noarch" / "repodata.json").read_bytes()
        generator.write_text("def _patch_repodata(repodata, subdir):\n    raise ValueError('oops')\n")
        wait_for(lambda: d.metric("conda_indexd_subdir_errors_total", subdir="noarch", reason="PatchError") >= 1, 10)
        assert (channel / "noarch" / "repodata.json").read_bytes() == good
        assert d.get("/healthz")[0] == 200
        assert d.metric("conda_indexd_rescans_total", reason="patches") >= 2
        generator.write_text("def _patch_repodata(repodata, subdir):\n    return {'remove': ['b-1.0-0.conda']}\n")
        wait_for(lambda: "b-1.0-0.conda" not in all_records(repodata(channel, "noarch")), 10, what="fixed generator published")


def test_patched_output_equals_conda_index(tmp_path: Path, conda_index_python: str) -> None:  # noqa: F811
    """Optional: repodata.json and patch_instructions.json byte-identical to conda-index 0.13's."""
    ours = make_channel(tmp_path / "ours")
    theirs = tmp_path / "theirs"
    shutil.copytree(ours, theirs)
    generator = tmp_path / "gen.py"
    generator.write_text(GENERATOR)
    run_index(ours, "--patch-generator", generator, "--no-indexed-timestamp")  # conda-index 0.13 writes none (CEP-47)
    run_conda_index(conda_index_python, theirs, "--patch-generator", str(generator))
    for name in ("repodata.json", "repodata_from_packages.json", "patch_instructions.json"):
        assert (ours / "noarch" / name).read_bytes() == (theirs / "noarch" / name).read_bytes(), name
