"""`conda-indexd index|watch --from-pkgs-dir`: conda package caches served as a channel.

The pkgs dirs are built here in conda's layout (pkgscache.py); the channel is made by
the real CLI and the real daemon, and solved and installed from with py-rattler.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import pkgscache as pc
from conda_indexd.formats import origin, shards
from conftest import run_cli, run_index
from daemonproc import DaemonProcess, all_records, repodata, wait_for


def records(channel: Path, subdir: str, name: str = "repodata.json") -> dict[str, Any]:
    return all_records(json.loads((channel / subdir / name).read_bytes()))


def shard_records(channel: Path, subdir: str, package: str) -> dict[str, Any]:
    index = shards.decode((channel / subdir / "repodata_shards.msgpack.zst").read_bytes())
    shard = shards.decode((channel / subdir / "shards" / f"{index['shards'][package].hex()}.msgpack.zst").read_bytes())
    return {**shard["packages"], **shard["packages.conda"]}


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Two pkgs dirs: `rw` (writable) and `ro` (read-only, given FIRST on the command line,
    so conda's writable-first order is what puts rw's copies ahead)."""
    root = tmp_path_factory.mktemp("caches")
    rw, ro = pc.make_dir(root / "rw"), pc.make_dir(root / "ro")
    p: dict[str, pc.Pkg] = {}
    # in both dirs, different bytes: the writable dir's copy is served
    p["dup_rw"] = pc.add(rw, "dup", ext=".tar.bz2", payload="from rw")
    p["dup_ro"] = pc.add(ro, "dup", ext=".conda", payload="from ro")
    # both formats in one dir: .conda wins
    p["both_conda"] = pc.add(rw, "both", ext=".conda")
    p["both_tar"] = pc.add(rw, "both", ext=".tar.bz2", folder=False)
    p["taronly"] = pc.add(rw, "taronly", ext=".tar.bz2", folder=False)  # served, index.json metadata
    p["folderonly"] = pc.add(rw, "folderonly", tarball=False)  # conda clean --tarballs: no-tarball
    # the origin channel patched depends and license: kept by default
    p["patched"] = pc.add(rw, "patched", depends=[], patch={"depends": ["taronly >=1.0"], "license": "MIT"})
    # a folder extracted from another build: stale, index.json is used
    p["stale"] = pc.add(rw, "stale", depends=["dup"], stale=True, patch={"depends": ["dup", "nonexistent"]})
    # served from rw (no folder there): ro's folder of the SAME bytes lends its origin
    # record; ro's folder of a same-named package with other bytes does not
    p["shared"] = pc.add(ro, "shared", patch={"depends": ["dup"]})
    (rw / p["shared"].fn).write_bytes(p["shared"].data)
    p["foreign_rw"] = pc.add(rw, "foreign", folder=False, payload="rw build")
    p["foreign_ro"] = pc.add(ro, "foreign", patch={"depends": ["from-another-channel"]}, payload="ro build")
    p["linux"] = pc.add(ro, "rolinux", "2.0", "h0_0", "linux-64", depends=["patched"])
    # what conda and copy tools leave that is not a package
    (rw / "half-1.0-0.conda.partial").write_bytes(p["patched"].data[:100])
    (rw / "locked-1.0-0.conda.lock").write_bytes(b"")
    (rw / "tmp-1.0-0.tar.bz2.tmp").write_bytes(b"x")
    (rw / ".hidden-1.0-0.conda").write_bytes(p["patched"].data)
    (rw / "trash-1.0-0.conda.c~").write_bytes(p["patched"].data)
    (rw / "cache" / "inside-1.0-0.conda").write_bytes(p["patched"].data)
    with pc.read_only(ro):
        before = {d: pc.tree_hashes(d) for d in (rw, ro)}
        channel = root / "channel"
        result = run_index(channel, "--from-pkgs-dir", ro, "--from-pkgs-dir", rw, "--current-repodata")
        after = {d: pc.tree_hashes(d) for d in (rw, ro)}
        again = run_index(channel, "--from-pkgs-dir", ro, "--from-pkgs-dir", rw, "--current-repodata")
        yield {"rw": rw, "ro": ro, "p": p, "channel": channel, "result": result, "again": again, "before": before, "after": after}


def test_which_packages_are_served(caches: Any) -> None:
    ch, p = caches["channel"], caches["p"]
    assert set(records(ch, "noarch")) == {p[k].fn for k in ("dup_rw", "both_conda", "taronly", "patched", "stale", "shared", "foreign_rw")}
    assert set(records(ch, "linux-64")) == {p["linux"].fn}
    assert records(ch, "noarch")[p["dup_rw"].fn]["sha256"] == p["dup_rw"].sha256  # the writable dir's bytes
    assert {f for f in os.listdir(ch / "noarch") if f.endswith((".conda", ".tar.bz2"))} == set(records(ch, "noarch"))
    synced = caches["result"].events("pkgs dirs synced")[0]
    by_dir = {d["dir"]: d for d in synced["dirs"]}
    rw, ro = by_dir[str(caches["rw"])], by_dir[str(caches["ro"])]
    assert (rw["writable"], ro["writable"]) == (True, False)
    assert (rw["taken"], rw["duplicates_dropped"], rw["skipped"]) == (7, 1, 1)  # both .tar.bz2; folderonly/
    assert (ro["taken"], ro["duplicates_dropped"], ro["skipped"]) == (1, 3, 0)  # dup, shared, foreign
    skipped = caches["result"].events("pkgs-dir entry skipped")
    assert [(s["path"], s["reason"]) for s in skipped] == [("folderonly-1.0-0/", "no-tarball")]
    assert synced["skipped_by_reason"] == {"no-tarball": 1}


def test_records_checksums_from_tarballs_and_origin_metadata(caches: Any) -> None:
    ch, p = caches["channel"], caches["p"]
    served = records(ch, "noarch")
    for key in ("dup_rw", "both_conda", "taronly", "patched", "stale", "shared", "foreign_rw"):
        pkg = p[key]
        assert (served[pkg.fn]["sha256"], served[pkg.fn]["md5"], served[pkg.fn]["size"]) == (pkg.sha256, pkg.md5, len(pkg.data))
    patched = p["patched"].fn
    assert (served[patched]["depends"], served[patched]["license"]) == (["taronly >=1.0"], "MIT")
    assert records(ch, "noarch", "repodata_from_packages.json")[patched]["depends"] == []  # stays as packaged
    assert shard_records(ch, "noarch", "patched")[patched]["depends"] == ["taronly >=1.0"]
    assert records(ch, "noarch", "current_repodata.json")[patched]["license"] == "MIT"
    assert "url" not in served[patched] and "channel" not in served[patched]  # never points clients at the origin
    assert served[p["stale"].fn]["depends"] == ["dup"]  # stale folder: index.json
    assert served[p["shared"].fn]["depends"] == ["dup"] and served[p["foreign_rw"].fn]["depends"] == []
    kept = caches["result"].events("origin metadata kept")
    assert sorted((k["path"], k["keys"]) for k in kept) == [(f"noarch/{patched}", ["depends", "license"]), (f"noarch/{p['shared'].fn}", ["depends"])]
    stale = caches["result"].events("extracted folder does not match its tarball; using index.json")
    assert sorted(s["path"] for s in stale) == [f"noarch/{p['foreign_rw'].fn}", f"noarch/{p['stale'].fn}"]
    assert not (ch / "noarch" / "patch_instructions.json").exists()  # the overlay is not a stored patch


def test_hard_links_and_pkgs_dirs_unchanged(caches: Any) -> None:
    ch, p = caches["channel"], caches["p"]
    assert caches["before"] == caches["after"]
    assert os.stat(ch / "noarch" / p["patched"].fn).st_ino == os.stat(caches["rw"] / p["patched"].fn).st_ino
    # the read-only dir is a read-only bind mount (as root): another mount, so a copy
    copied = ch / "linux-64" / p["linux"].fn
    assert os.stat(copied).st_ino != os.stat(caches["ro"] / p["linux"].fn).st_ino and copied.read_bytes() == p["linux"].data
    synced = caches["result"].events("pkgs dirs synced")[0]
    assert (synced["linked"], synced["copied"]) == (7, 1) if os.geteuid() == 0 else (8, 0)
    again = caches["again"]
    assert again.events("pkgs dirs synced")[0]["placed"] == 0
    assert again.events("origin metadata kept")  # logged once per run
    assert all(r["added"] == 0 and r["changed"] == 0 for r in again.events("subdir indexed"))


def test_opt_out_keeps_index_json(caches: Any, tmp_path: Path) -> None:
    channel = tmp_path / "plain"
    result = run_index(channel, "--from-pkgs-dir", caches["rw"], "--no-origin-metadata")
    patched = caches["p"]["patched"].fn
    assert records(channel, "noarch")[patched]["depends"] == []
    assert records(channel, "noarch")[patched]["license"] == "BSD-3-Clause"
    assert not result.events("origin metadata kept")
    assert not list((channel / origin.OVERLAY_DIR).glob("origin-*.json"))


def test_rattler_solves_and_installs(caches: Any, tmp_path: Path) -> None:
    rattler = pytest.importorskip("rattler", reason="py-rattler is a test dependency: pip install -e '.[test]'")
    ch = caches["channel"]
    gateway = rattler.Gateway(cache_dir=tmp_path / "cache")
    solved = asyncio.run(rattler.solve([ch.as_uri()], ["rolinux"], gateway=gateway, platforms=["linux-64", "noarch"], virtual_packages=[]))
    # taronly comes only from the origin's patched depends of `patched`
    assert sorted(r.name.normalized for r in solved) == ["patched", "rolinux", "taronly"]
    prefix = tmp_path / "env"
    asyncio.run(rattler.install(solved, prefix, cache_dir=tmp_path / "pkgs", show_progress=False))
    assert (prefix / "share" / "taronly" / "payload.txt").read_text() == "hello\n"


def test_removed_package_leaves_only_what_we_placed(tmp_path: Path) -> None:
    pkgs = pc.make_dir(tmp_path / "pkgs")
    gone = pc.add(pkgs, "gone")
    pc.add(pkgs, "stays")
    taken = pc.add(pkgs, "taken", payload="the cache's build", patch={"depends": ["from-the-cache"]})
    theirs = pc.add(pc.make_dir(tmp_path / "other"), "taken", payload="the channel's own build", folder=False)
    channel = tmp_path / "channel"
    (channel / "noarch").mkdir(parents=True)
    (channel / "noarch" / theirs.fn).write_bytes(theirs.data)  # already in the channel, not ours
    first = run_index(channel, "--from-pkgs-dir", pkgs)
    assert first.events("pkgs dirs synced")[0]["skipped_by_reason"] == {"name-taken": 1}
    assert [r["path"] for r in first.events("channel already has another file of that name; left alone")] == [f"noarch/{taken.fn}"]
    assert (channel / "noarch" / theirs.fn).read_bytes() == theirs.data
    assert records(channel, "noarch")[theirs.fn]["depends"] == []  # the cache's origin record is not theirs
    mine = pc.add(pc.make_dir(tmp_path / "elsewhere"), "mine", folder=False)
    (channel / "noarch" / mine.fn).write_bytes(mine.data)  # a file we did not place
    for pkg in (gone, taken):  # conda clean --all
        (pkgs / pkg.fn).unlink()
        shutil.rmtree(pkgs / pkg.stem)
    result = run_index(channel, "--from-pkgs-dir", pkgs)
    assert result.events("pkgs dirs synced")[0]["removed"] == 1
    assert not (channel / "noarch" / gone.fn).exists()
    assert set(records(channel, "noarch")) == {"stays-1.0-0.conda", mine.fn, theirs.fn}
    assert records(channel, "noarch")[theirs.fn]["sha256"] == theirs.sha256


def test_copy_to_another_filesystem(tmp_path: Path) -> None:
    pkgs = pc.make_dir(tmp_path / "pkgs")
    pkg = pc.add(pkgs, "copied", patch={"depends": ["x"]})
    with pc.tmpfs(tmp_path / "other") as other:
        channel = other / "channel"
        result = run_index(channel, "--from-pkgs-dir", pkgs)
        synced = result.events("pkgs dirs synced")[0]
        assert (synced["linked"], synced["copied"]) == (0, 1)
        placed = channel / "noarch" / pkg.fn
        assert placed.read_bytes() == pkg.data and os.stat(placed).st_nlink == 1
        assert os.stat(placed).st_mtime_ns == os.stat(pkgs / pkg.fn).st_mtime_ns
        assert not [f for f in os.listdir(channel / "noarch") if f.endswith(".tmp")]  # no temp files left
        assert records(channel, "noarch")[pkg.fn]["depends"] == ["x"]


def test_bad_arguments(tmp_path: Path) -> None:
    pkgs = pc.make_dir(tmp_path / "pkgs")
    for args, words in (
        (["--from-pkgs-dir", tmp_path / "missing", tmp_path / "ch"], "not a folder"),
        (["--from-pkgs-dir", pkgs, pkgs / "inside"], "outside the pkgs dir"),
        (["--from-pkgs-dir", pkgs, pkgs], "outside the pkgs dir"),
        (["--from-pkgs-dir", pkgs, tmp_path / "ch", "--db", "postgresql", "--db-url", "postgresql://x/y"], "does not combine with --db postgresql"),
    ):
        result = run_cli("index", *args)
        assert result.rc == 2 and words in result.stderr and "Traceback" not in result.stderr, result
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (pkgs / "inside").exists()


def test_watch_follows_a_pkgs_dir(tmp_path: Path) -> None:
    """conda downloads to .partial, renames, then extracts and writes repodata_record.json;
    conda clean removes it. The channel follows within debounce + 2 s each time."""
    pkgs = pc.make_dir(tmp_path / "pkgs")
    pc.add(pkgs, "first")
    pc.add(pkgs, "orphan", tarball=False)
    channel = tmp_path / "channel"
    channel.mkdir()
    staging = pc.make_dir(tmp_path / "staging")
    new = pc.add(staging, "arrives", patch={"depends": ["first"]})
    debounce = 0.3
    budget = debounce + 2.0
    before = pc.tree_hashes(pkgs)
    with DaemonProcess(channel, "--from-pkgs-dir", str(pkgs), debounce=debounce) as d:
        # written just now: held for --settle at start-up, then published
        wait_for(lambda: set(all_records(repodata(channel, "noarch"))) == {"first-1.0-0.conda"}, budget, what="first published")
        status = json.loads(d.get("/status.json")[1])
        [source] = status["pkgs_dirs"]
        assert (source["taken"], [(s["path"], s["reason"]) for s in source["skipped"]]) == (1, [("orphan-1.0-0/", "no-tarball")])
        assert source["origins"] == {pc.ORIGIN: 2}
        assert d.metric("conda_indexd_pkgs_dir_skipped", reason="no-tarball") == 1
        assert b"Package caches served" in d.get("/")[1]
        # the download: written under .partial (never published), then renamed
        partial = pkgs / (new.fn + ".partial")
        partial.write_bytes(new.data[: len(new.data) // 2])
        time.sleep(debounce + 0.5)
        assert new.fn not in all_records(repodata(channel, "noarch"))
        with open(partial, "ab") as f:
            f.write(new.data[len(new.data) // 2 :])
        started = time.monotonic()
        os.rename(partial, pkgs / new.fn)
        wait_for(lambda: new.fn in all_records(repodata(channel, "noarch")), budget, what="the new package published")
        assert time.monotonic() - started < budget
        # a copy tool writing the final name directly: nothing is published half-written
        slow = pc.add(staging, "slow", folder=False)
        with open(pkgs / slow.fn, "wb") as f:
            f.write(slow.data[: len(slow.data) // 2])
            f.flush()
            time.sleep(budget)
            assert slow.fn not in all_records(repodata(channel, "noarch")) and not (channel / "noarch" / slow.fn).exists()
            f.write(slow.data[len(slow.data) // 2 :])
        wait_for(lambda: slow.fn in all_records(repodata(channel, "noarch")), budget, what="the completed copy published")
        assert all_records(repodata(channel, "noarch"))[slow.fn]["sha256"] == slow.sha256
        # the extraction: repodata_record.json brings the origin's depends
        started = time.monotonic()
        shutil.copytree(staging / new.stem, pkgs / new.stem)
        wait_for(lambda: all_records(repodata(channel, "noarch"))[new.fn]["depends"] == ["first"], budget + 1.0,
                 what="the origin metadata published")  # fmt: skip
        # conda clean: tarball and folder go, so does the package
        started = time.monotonic()
        (pkgs / new.fn).unlink()
        shutil.rmtree(pkgs / new.stem)
        wait_for(lambda: new.fn not in all_records(repodata(channel, "noarch")), budget, what="the package unpublished")
        assert time.monotonic() - started < budget
        assert not (channel / "noarch" / new.fn).exists()
        assert d.stop() == 0
    after = pc.tree_hashes(pkgs)  # the daemon wrote nothing into the pkgs dir
    assert set(after) - set(before) == {slow.fn} and all(after[k] == v for k, v in before.items())


# ../shared next to the repository (/work/shared for a worktree in /work/wt/NAME)
CORPUS_PKGS = next((p / "shared" / "corpus" / "pkgs" for p in Path(__file__).resolve().parents if (p / "shared" / "corpus").is_dir()),
                   Path("/nonexistent/shared/corpus/pkgs"))  # fmt: skip


def test_corpus_caches_made_by_real_conda(tmp_path: Path) -> None:
    """../shared/corpus/pkgs: three caches the real conda client made. Expected, from its
    README and conda's rules: every tarball is served once, from the first dir that has
    it (small-executable from pkgs-a, not pkgs-b), other-package as .conda (its .tar.bz2
    twin dropped, its folder extracted from the .tar.bz2 still counts as origin
    metadata), tarball-only packages served, pkgs-c's three folder-only packages skipped
    with no-tarball. Each served record equals the origin channel's record in conda's own
    repodata cache (cache/*.json), key for key."""
    if not CORPUS_PKGS.is_dir():
        pytest.skip(f"{CORPUS_PKGS} is absent (optional corpus test)")
    dirs = [CORPUS_PKGS / n for n in ("pkgs-a", "pkgs-b", "pkgs-c")]
    before = {d: pc.tree_hashes(d) for d in dirs}
    channel = tmp_path / "channel"
    result = run_index(channel, *[a for d in dirs for a in ("--from-pkgs-dir", d)])
    assert {d: pc.tree_hashes(d) for d in dirs} == before
    expected_source: dict[str, Path] = {}
    for d in dirs:
        for tarball in sorted(d.iterdir()):
            if tarball.name.endswith((".conda", ".tar.bz2")) and tarball.name != "other-package-0.2-0.tar.bz2":
                expected_source.setdefault(tarball.name, d)
    assert len(expected_source) == 23 and expected_source["small-executable-1.0.0-1.conda"] == dirs[0]
    origin_records: dict[str, dict[str, Any]] = {}
    for key in ("28064032", "cb39d64b"):  # linux-64, noarch (the plain keys, not use_only_tar_bz2's)
        origin_records.update(all_records(json.loads((dirs[0] / "cache" / f"{key}.json").read_bytes())))
    served = {**records(channel, "noarch"), **records(channel, "linux-64")}
    assert set(served) == set(expected_source)
    for fn, source in expected_source.items():
        # this channel's own CEP-47 indexed_timestamp (when the file entered it), never the origin's
        assert isinstance(served[fn].pop("indexed_timestamp"), int), fn
        assert served[fn] == origin_records[fn], fn
        assert (
            os.path.samefile(channel / served[fn]["subdir"] / fn, source / fn)
            or (channel / served[fn]["subdir"] / fn).read_bytes() == (source / fn).read_bytes()
        )
    synced = result.events("pkgs dirs synced")[0]
    assert [(d["taken"], d["duplicates_dropped"], d["skipped"]) for d in synced["dirs"]] == [(16, 1, 0), (6, 1, 0), (1, 0, 3)]
    skipped = sorted((s["path"], s["reason"]) for s in result.events("pkgs-dir entry skipped"))
    assert skipped == [(f"{n}/", "no-tarball") for n in ("dummy-d-0.1.0-hb0f4dca_0", "dummy-x-0.1.0-hb0f4dca_0", "package-unix-0.1.0-hb0f4dca_0")]
    assert not result.events("origin metadata kept") and not result.events("extracted folder does not match its tarball; using index.json")


def test_channel_patches_apply_over_origin_metadata(caches: Any, tmp_path: Path) -> None:
    gen = tmp_path / "gen.py"
    patched = caches["p"]["patched"].fn
    gen.write_text(f"def _patch_repodata(repodata, subdir):\n    return {{'packages.conda': {{'{patched}': {{'license': 'Apache-2.0'}}}}}}\n")
    channel = tmp_path / "patched-channel"
    run_index(channel, "--from-pkgs-dir", caches["rw"], "--patch-generator", gen)
    record = records(channel, "noarch")[patched]
    assert (record["depends"], record["license"]) == (["taronly >=1.0"], "Apache-2.0")  # origin depends, the channel's license
    stored = json.loads((channel / "noarch" / "patch_instructions.json").read_bytes())
    assert stored["packages.conda"] == {patched: {"license": "Apache-2.0"}}  # the overlay is not in it


def test_layer_equals_overlay_then_channel_patches() -> None:
    from conda_indexd.formats import patches

    def doc() -> dict[str, Any]:
        rec = {"name": "a", "depends": ["x"], "license": "BSD", "extra": {"k": 1}}
        return {"packages": {"b-1-0.tar.bz2": dict(rec, name="b")}, "packages.conda": {"a-1-0.conda": rec}}

    overlay = origin.instructions({"a-1-0.conda": {"depends": ["x >=2"], "license": "MIT"}, "b-1-0.tar.bz2": {"license": "GPL"}})
    channel = {"packages": {"a-1-0.tar.bz2": {"license": "Apache"}, "b-1-0.tar.bz2": {"depends": ["y"]}},
               "packages.conda": {"a-1-0.conda": {"extra": {"j": 2}}}, "revoke": ["b-1-0.tar.bz2"]}  # fmt: skip
    sequential = patches.apply(patches.apply(doc(), overlay), channel)
    assert patches.apply(doc(), origin.layer(overlay, channel)) == sequential
    assert sequential["packages.conda"]["a-1-0.conda"] == {"name": "a", "depends": ["x >=2"], "license": "Apache", "extra": {"k": 1, "j": 2}}
    assert origin.layer(None, channel) is channel and origin.layer(origin.instructions({}), channel) is channel


def test_differences_ignore_what_conda_adds() -> None:
    served = {"name": "a", "depends": [], "noarch": True, "md5": "m", "size": 1, "timestamp": 5}
    record = {"name": "a", "depends": [], "constrains": [], "noarch": "generic", "package_type": "noarch_generic", "md5": "z",
              "url": "u", "channel": "c", "fn": "a-1-0.conda", "timestamp": 5000, "track_features": "", "arch": "x86_64"}  # fmt: skip
    assert origin.differences(record, served) == {}
    assert origin.differences({**record, "depends": ["b"], "constrains": ["c <2"]}, served) == {"depends": ["b"], "constrains": ["c <2"]}
    assert origin.matches({"md5": "m"}, "m", "s") and origin.matches({"md5": "m", "sha256": "s"}, "m", "s")
    assert not origin.matches({"md5": "m", "sha256": "t"}, "m", "s") and not origin.matches({}, "m", "s")


def test_disk_full_leaves_no_partial_file(tmp_path: Path) -> None:
    pkgs = pc.make_dir(tmp_path / "pkgs")
    big = pc.add(pkgs, "big", payload=os.urandom(400_000).hex())  # incompressible, > the tmpfs
    with pc.tmpfs(tmp_path / "small", size="256k") as small:
        channel = small / "channel"
        result = run_cli("index", channel, "--from-pkgs-dir", pkgs, "--threads", "2")
        assert result.rc == 1 and "could not be placed" in result.stderr and "Traceback" not in result.stderr + result.stdout, result
        assert len(result.stderr.strip().splitlines()) == 1
        assert [r["path"] for r in result.events("cannot place package")] == [f"noarch/{big.fn}"]
        assert not [f for f in os.listdir(channel / "noarch") if big.stem in f]  # nor a temporary copy


def test_watch_polling_a_pkgs_dir(tmp_path: Path) -> None:
    """--polling (NFS shares): the pkgs dir is polled too."""
    pkgs = pc.make_dir(tmp_path / "pkgs")
    staging = pc.make_dir(tmp_path / "staging")
    new = pc.add(staging, "polled", folder=False)
    channel = tmp_path / "channel"
    channel.mkdir()
    debounce, poll = 0.3, 0.5
    budget = debounce + 2.0 + 2 * poll  # a change is seen up to one poll interval late (on a busy machine, two)
    with DaemonProcess(channel, "--from-pkgs-dir", str(pkgs), "--polling", "--poll-interval", str(poll), debounce=debounce) as d:
        os.rename(staging / new.fn, pkgs / new.fn)
        wait_for(lambda: new.fn in all_records(repodata(channel, "noarch")), budget, what="the package published")
        (pkgs / new.fn).unlink()
        wait_for(lambda: new.fn not in all_records(repodata(channel, "noarch")), budget, what="the package unpublished")
        assert d.stop() == 0
