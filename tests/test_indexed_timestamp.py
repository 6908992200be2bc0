"""CEP-47 `indexed_timestamp` (docs/indexed-timestamp.md): on every record of every
output, set once per (subdir, filename, sha256), kept across re-runs, restarts, conda-index
runs in between and cache migrations, never patched; future build timestamps flagged or
rejected; and the real client (py-rattler 0.28) using it for a cooldown."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import peers
import pkgfactory as f
import spec
from conftest import run_index
from daemonproc import DaemonProcess, all_records, repodata, shard_records, wait_for

YEAR_MS = 365 * 24 * 3600 * 1000
OLD_BUILD = 1_500_000_000_000  # July 2017, in ms


def records(folder: Path, name: str = "repodata.json") -> dict[str, dict[str, Any]]:
    doc = json.loads((folder / name).read_bytes())
    return {**doc["packages"], **doc["packages.conda"]}


def stamps(folder: Path, name: str = "repodata.json") -> dict[str, int]:
    return {fn: r["indexed_timestamp"] for fn, r in records(folder, name).items()}


def make(folder: Path, name: str, version: str = "1.0", ext: str = ".conda", **index: Any) -> Path:
    subdir = folder.name
    path = folder / f"{name}-{version}-0{ext}"
    maker = f.make_conda if ext == ".conda" else f.make_tar_bz2
    maker(path, f.index_json(name, version, "0", subdir, **index), {f"share/{name}/{version}": os.urandom(16)})
    return path


def test_every_record_of_every_output_carries_it(channel: Path) -> None:
    noarch = channel / "noarch"
    for i, ext in enumerate((".conda", ".tar.bz2", ".conda")):
        make(noarch, f"p{i}", ext=ext, timestamp=OLD_BUILD)
    make(noarch, "nots")  # no build timestamp at all
    before = int(time.time() * 1000)
    run_index(channel, "--current-repodata")
    after = int(time.time() * 1000)
    published = stamps(noarch)
    assert len(published) == 4
    # a channel never indexed before: every file entered it with this run
    assert all(before - 1000 <= v <= after for v in published.values()), (before, published, after)
    assert len(set(published.values())) == 1  # one run, one time (conda-index PR #342)
    assert stamps(noarch, "repodata_from_packages.json") == published
    assert stamps(noarch, "current_repodata.json") == published
    assert {fn: r["indexed_timestamp"] for fn, r in shard_records(noarch).items()} == published
    # the stored value, read from the table with sqlite3 (spec.py), is the published one
    for path in spec.package_files(noarch):
        assert spec.expected_record(path, stamped=True) == records(noarch)[path.name]
    # byte layout: the key sorts in place, compact, as every other key
    assert b'"indexed_timestamp":%d,"license"' % published["p0-1.0-0.conda"] in (noarch / "repodata.json").read_bytes()


def test_kept_across_reruns_and_new_for_a_replaced_file(channel: Path) -> None:
    noarch = channel / "noarch"
    keep = make(noarch, "keep", timestamp=OLD_BUILD)
    swap = make(noarch, "swap", timestamp=OLD_BUILD)
    run_index(channel)
    first = stamps(noarch)
    time.sleep(0.05)
    again = run_index(channel)
    assert again.summary["extracted"] == 0
    assert stamps(noarch) == first
    # same bytes, new mtime and inode (rsync without --times): same artifact, same value
    data = keep.read_bytes()
    keep.unlink()
    keep.write_bytes(data)
    os.utime(keep, (time.time() + 5, time.time() + 5))
    # another file under the same name: a new artifact
    time.sleep(0.05)
    swap.unlink()
    make(noarch, "swap", timestamp=OLD_BUILD)
    before = int(time.time() * 1000)
    run_index(channel)
    now = stamps(noarch)
    assert now["keep-1.0-0.conda"] == first["keep-1.0-0.conda"]
    assert now["swap-1.0-0.conda"] > first["swap-1.0-0.conda"] and now["swap-1.0-0.conda"] >= before - 1000
    # without a saved memo or pieces (a cold start) the values are the same
    for name in ("conda-indexd-memo.idx", "conda-indexd-pieces.db"):
        (noarch / ".cache" / name).unlink()
    run_index(channel)
    assert stamps(noarch) == now


def test_seeded_once_for_a_channel_indexed_before(tmp_path: Path) -> None:
    """A channel conda-index 0.13 indexed: its packages get their build timestamp, else
    their file time, never later than now; seeded once."""
    if peers.find()[0] is None:
        pytest.skip(peers.find()[1])
    channel = tmp_path / "channel"
    noarch = channel / "noarch"
    built = make(noarch, "built", timestamp=OLD_BUILD)
    seconds = make(noarch, "seconds", timestamp=OLD_BUILD // 1000)  # old conda-build: seconds
    bare = make(noarch, "bare", timestamp=None)
    os.utime(bare, (1_600_000_000, 1_600_000_000))
    future = make(noarch, "future", timestamp=int(time.time() * 1000) + YEAR_MS)
    proc = peers.conda_index("--threads", "2", channel)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "indexed_timestamp" not in (noarch / "repodata.json").read_text()
    before = int(time.time() * 1000)
    result = run_index(channel)
    assert result.summary["extracted"] == 0  # conda-index's rows are used as they are
    got = stamps(noarch)
    assert got[built.name] == OLD_BUILD
    assert got[seconds.name] == OLD_BUILD
    assert got[bare.name] == 1_600_000_000_000
    assert before <= got[future.name] <= int(time.time() * 1000)  # never later than now
    # ... and flagged: the build timestamp is a year later than that
    warned = [r for r in result.records if r.get("path") == future.name and "later than" in r.get("event", "")]
    assert warned, result
    # seeded once: a later file time does not move it
    os.utime(bare, None)
    run_index(channel)
    assert stamps(noarch) == got


def test_conda_index_run_in_between_changes_nothing(tmp_path: Path) -> None:
    if peers.find()[0] is None:
        pytest.skip(peers.find()[1])
    channel = tmp_path / "channel"
    noarch = channel / "noarch"
    make(noarch, "one", timestamp=OLD_BUILD)
    make(noarch, "two", ext=".tar.bz2", timestamp=OLD_BUILD)
    run_index(channel)
    first = stamps(noarch)
    time.sleep(0.05)
    added = make(noarch, "three", timestamp=OLD_BUILD)  # conda-index indexes it first
    proc = peers.conda_index("--threads", "2", channel)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "indexed_timestamp" not in (noarch / "repodata.json").read_text()  # its own bytes
    before = int(time.time() * 1000)
    run_index(channel)
    got = stamps(noarch)
    assert {k: got[k] for k in first} == first
    # the file conda-index added is new to us: this run's time, not its build time
    assert got[added.name] >= before - 1000


def test_cache_moved_to_postgresql_and_back_keeps_values(tmp_path: Path, pg_server) -> None:
    channel = tmp_path / "channel"
    noarch = channel / "noarch"
    make(noarch, "one", timestamp=OLD_BUILD)
    make(noarch, "two", ext=".tar.bz2")
    run_index(channel)
    first = stamps(noarch)
    url = pg_server.createdb("tsmove")
    time.sleep(0.05)
    moved = run_index(channel, "--db", "postgresql", "--db-url", url)
    assert moved.summary["extracted"] == 2  # a new cache
    assert stamps(noarch) == first
    rows = pg_server.execute(url, "SELECT path, indexed_timestamp FROM conda_indexd_indexed_timestamp")
    assert sorted(v for _, v in rows) == sorted(first.values())
    # and back: a new sqlite cache (the old one removed)
    shutil.rmtree(noarch / ".cache")
    run_index(channel)
    assert stamps(noarch) == first
    # a new file in PostgreSQL later gets a value of its own, kept on the next run
    new = make(noarch, "three")
    run_index(channel, "--db", "postgresql", "--db-url", url)
    pg_first = stamps(noarch)
    assert pg_first[new.name] > max(first.values())
    run_index(channel, "--db", "postgresql", "--db-url", url)
    assert stamps(noarch) == pg_first


def test_a_patch_cannot_change_it(channel: Path, tmp_path: Path) -> None:
    noarch = channel / "noarch"
    pkg = make(noarch, "pat", timestamp=OLD_BUILD)
    run_index(channel)
    value = stamps(noarch)[pkg.name]
    gen = tmp_path / "gen.py"
    gen.write_text(f"def _patch_repodata(repodata, subdir):\n    return {{'packages.conda': {{'{pkg.name}': {{'indexed_timestamp': 1, 'license': 'MIT'}}}}}}\n")
    result = run_index(channel, "--patch-generator", gen)
    record = records(noarch)[pkg.name]
    assert record["license"] == "MIT"  # the rest of the instruction applies
    assert record["indexed_timestamp"] == value
    assert shard_records(noarch)[pkg.name]["indexed_timestamp"] == value
    assert any("indexed_timestamp" in r.get("event", "") and r.get("level") == "warning" for r in result.records), result
    # a null (delete) is ignored too
    gen.write_text(f"def _patch_repodata(repodata, subdir):\n    return {{'packages.conda': {{'{pkg.name}': {{'indexed_timestamp': None}}}}}}\n")
    run_index(channel, "--patch-generator", gen)
    assert records(noarch)[pkg.name]["indexed_timestamp"] == value


def test_future_build_timestamp_flagged_or_rejected(channel: Path) -> None:
    noarch = channel / "noarch"
    good = make(noarch, "good", timestamp=OLD_BUILD)
    future_ms = int(time.time() * 1000) + 3600 * 1000
    bad = make(noarch, "bad", timestamp=future_ms)
    flagged = run_index(channel)
    assert bad.name in records(noarch)  # flagged, still published
    assert [r for r in flagged.records if r.get("path") == bad.name and r.get("level") == "warning"], flagged
    value = stamps(noarch)[bad.name]

    rejected = run_index(channel, "--reject-future-timestamps")
    assert set(records(noarch)) == {good.name}
    assert [(s["path"], s["reason"]) for s in rejected.skipped] == [(bad.name, "future-timestamp")]
    assert rejected.summary["skipped_by_reason"] == {"future-timestamp": 1}
    # still left out on the next run, without reading it again
    again = run_index(channel, "--reject-future-timestamps")
    assert again.summary["extracted"] == 0 and set(records(noarch)) == {good.name}
    # flag off: it is read again and published with the value it was first given
    back = run_index(channel)
    assert back.summary["extracted"] == 1
    assert stamps(noarch)[bad.name] == value


def test_no_indexed_timestamp_gives_conda_index_bytes_and_keeps_the_table(channel: Path) -> None:
    noarch = channel / "noarch"
    make(noarch, "one", timestamp=OLD_BUILD, indexed_timestamp=5)  # a builder's value is never published
    run_index(channel)
    value = stamps(noarch)["one-1.0-0.conda"]
    assert value != 5
    run_index(channel, "--no-indexed-timestamp")
    raw = (noarch / "repodata.json").read_bytes()
    assert raw == spec.expected_repodata_bytes("noarch", spec.package_files(noarch), stamped=False)
    # conda-index's records: index.json as the builder wrote it, the builder's value included
    assert [r["indexed_timestamp"] for r in shard_records(noarch).values()] == [5]
    run_index(channel)
    assert stamps(noarch)["one-1.0-0.conda"] == value


@pytest.mark.timeout(120)
def test_daemon_sets_it_on_arrival_and_keeps_it_across_a_restart(channel: Path) -> None:
    noarch = channel / "noarch"
    make(noarch, "base", timestamp=OLD_BUILD)
    with DaemonProcess(channel, debounce=0.2, settle=0) as d:
        wait_for(lambda: "base-1.0-0.conda" in all_records(repodata(channel, "noarch")), 20)
        time.sleep(0.5)
        arrived = time.time()
        new = make(noarch, "fresh", timestamp=OLD_BUILD)
        record = wait_for(lambda: all_records(repodata(channel, "noarch")).get(new.name), 20, what="fresh published")
        assert abs(record["indexed_timestamp"] / 1000 - arrived) < 1.0, (record["indexed_timestamp"], arrived)
        first = stamps(noarch)
        assert d.metric("conda_indexd_future_timestamps", subdir="noarch") == 0
    time.sleep(0.1)
    with DaemonProcess(channel, debounce=0.2, settle=0) as d:
        assert d.get("/readyz")[0] == 200  # the start-up reconcile has published every subdir
        assert stamps(noarch) == first
        assert {fn: r["indexed_timestamp"] for fn, r in shard_records(noarch).items()} == first


@pytest.mark.timeout(120)
def test_daemon_flags_a_future_timestamp_on_metrics_and_status_page(channel: Path) -> None:
    noarch = channel / "noarch"
    make(noarch, "base")
    with DaemonProcess(channel, debounce=0.2, settle=0) as d:
        wait_for(lambda: "base-1.0-0.conda" in all_records(repodata(channel, "noarch")), 20)
        bad = make(noarch, "ahead", timestamp=int(time.time() * 1000) + YEAR_MS)
        wait_for(lambda: bad.name in all_records(repodata(channel, "noarch")), 20)
        wait_for(lambda: d.metric("conda_indexd_future_timestamps", subdir="noarch") == 1, 10, what="the metric")
        page = d.get("/")[1].decode()
        assert bad.name in page and "indexed_timestamp" in page


def _solve(channel: Path, cache: Path, **kw: Any) -> list[Any]:
    import rattler

    gateway = rattler.Gateway(cache_dir=cache)
    return asyncio.run(rattler.solve([channel.as_uri()], ["cool"], gateway=gateway, platforms=["noarch"], **kw))


def test_rattler_cooldown_uses_the_published_indexed_timestamp(channel: Path, tmp_path: Path) -> None:
    """py-rattler 0.28: exclude_newer with timestamp_policy="require-indexed-timestamp"
    leaves out a package that entered the channel a moment ago although its build
    timestamp is years old, and takes it with a later cutoff."""
    pytest.importorskip("rattler")
    noarch = channel / "noarch"
    make(noarch, "cool", "1.0", timestamp=OLD_BUILD - YEAR_MS)
    run_index(channel)
    # 1.0 has been in the channel for two hours (its value, as a long-running channel would have it)
    db = sqlite3.connect(noarch / ".cache/conda-indexd-timestamps.db")
    two_hours_ago = int(time.time() * 1000) - 2 * 3600 * 1000
    with db:
        db.execute("UPDATE indexed_timestamp SET indexed_timestamp = ?", (two_hours_ago,))
    db.close()
    (noarch / ".cache" / "conda-indexd-memo.idx").unlink(missing_ok=True)
    (noarch / ".cache" / "conda-indexd-pieces.db").unlink(missing_ok=True)
    make(noarch, "cool", "2.0", timestamp=OLD_BUILD)  # backdated by its builder, added now
    run_index(channel)
    published = stamps(noarch)
    assert published["cool-1.0-0.conda"] == two_hours_ago

    hour = datetime.timedelta(hours=1)
    cooled = _solve(channel, tmp_path / "c1", exclude_newer=hour, timestamp_policy="require-indexed-timestamp")
    assert [str(r.version) for r in cooled] == ["1.0"]
    record = cooled[0]
    got = record.indexed_timestamp
    got_ms = int(got.timestamp() * 1000) if isinstance(got, datetime.datetime) else int(got)
    assert got_ms == two_hours_ago
    # a later cutoff takes it
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
    later = _solve(channel, tmp_path / "c3", exclude_newer=soon, timestamp_policy="require-indexed-timestamp")
    assert [str(r.version) for r in later] == ["2.0"]

    # without indexed_timestamp (conda-index 0.13's repodata) the build timestamp alone
    # lets the backdated 2.0 through the same cooldown
    run_index(channel, "--no-indexed-timestamp")
    naive = _solve(channel, tmp_path / "c2", exclude_newer=hour)
    assert [str(r.version) for r in naive] == ["2.0"]


def test_the_quiet_inputs_token_covers_the_new_flags(tmp_path: Path) -> None:
    from conda_indexd.config import IndexConfig
    from conda_indexd.pipeline.quiet import inputs_token

    base = IndexConfig(tmp_path)
    tokens = {
        inputs_token(base, None),
        inputs_token(IndexConfig(tmp_path, indexed_timestamp=False), None),
        inputs_token(IndexConfig(tmp_path, reject_future_timestamps=True), None),
    }
    assert len(tokens) == 3


def test_the_pure_rules() -> None:
    from conda_indexd.formats import timestamps

    assert timestamps.to_ms(1_500_000_000) == 1_500_000_000_000  # seconds, as conda reads them
    assert timestamps.to_ms(1_500_000_000_123) == 1_500_000_000_123
    assert timestamps.to_ms(None) is None and timestamps.to_ms("x") is None and timestamps.to_ms(True) is None
    now = 1_800_000_000_000
    assert timestamps.seed(1_500_000_000_000, 1_600_000_000.0, now) == 1_500_000_000_000
    assert timestamps.seed(None, 1_600_000_000.5, now) == 1_600_000_000_500
    assert timestamps.seed(now + 10, None, now) == now  # never later than now
    assert timestamps.seed(None, None, now) == now
    assert timestamps.flag(now + 300_000, now, 300_000) is None
    assert "later than" in (timestamps.flag(now + 300_001, now, 300_000) or "")
    src = timestamps.source('{"a":1,"indexed_timestamp":5}', 7)
    assert timestamps.record(src) == {"a": 1, "indexed_timestamp": 7}
    assert timestamps.record(timestamps.source('{"indexed_timestamp":5}', None)) == {}  # a builder's is never published
    assert timestamps.source('{"a":1}', 7, stamped=False) == '{"a":1}'
    clean, touched = timestamps.strip_patches({"packages": {"x.tar.bz2": {"indexed_timestamp": 1, "depends": []}}, "revoke": ["y.conda"]})
    assert clean == {"packages": {"x.tar.bz2": {"depends": []}}, "revoke": ["y.conda"]} and touched == ["x.tar.bz2"]


def test_conda_index_run_in_between_on_postgresql(tmp_path: Path, pg_server) -> None:
    """The same with the PostgreSQL cache: conda-index 0.13 on the shared tables in
    between changes no value (ours are in conda_indexd_indexed_timestamp)."""
    from test_pgcache import _conda_index_pg

    url = pg_server.createdb("tsci")
    channel = tmp_path / "channel"
    noarch = channel / "noarch"
    make(noarch, "one", timestamp=OLD_BUILD)
    make(noarch, "two", ext=".tar.bz2")
    run_index(channel, "--db", "postgresql", "--db-url", url)
    first = stamps(noarch)
    time.sleep(0.05)
    added = make(noarch, "three")
    _conda_index_pg(channel, url)
    assert "indexed_timestamp" not in (noarch / "repodata.json").read_text()
    before = int(time.time() * 1000)
    again = run_index(channel, "--db", "postgresql", "--db-url", url)
    assert again.summary["extracted"] == 0  # conda-index's rows for the new file are used as they are
    got = stamps(noarch)
    assert {k: got[k] for k in first} == first
    assert got[added.name] >= before - 1000
