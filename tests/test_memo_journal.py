"""The saved memo's journal (issue 26): a +1 publish appends what changed to the saved
memo instead of rewriting it. Loading replays the journal; the result must equal the
memo the daemon held, and a torn or damaged tail, garbage or a cache written by
conda-index must never give a memo that disagrees with the cache (it is rebuilt)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from conda_indexd.backends import index_subdir
from conda_indexd.caches.sqlite.cache import SqliteCache
from conda_indexd.config import IndexConfig
from conda_indexd.formats import shards
from conda_indexd.pipeline import memofile
from conda_indexd.pipeline.memo import RecordMemo
from pkgfactory import index_json, make_package
from test_memo import channel_with, fresh_bytes


def memo_state(memo: RecordMemo) -> dict[str, Any]:
    """Everything a saved memo keeps, as comparable values."""
    return {
        "sections": {name: (list(s.fns), bytes(s.shas), list(s.ids), list(s.offs), list(s.lens), bytes(s.brk)) for name, s in memo.sections.items()},
        "names": list(memo.names),
        "name_ids": dict(memo.name_ids),
        "by_name": {n: list(fns) for n, fns in memo.by_name.items()},
        "patched": dict(memo.patched),
        "v3": set(memo.v3),
        "quiet": memo.quiet,
        "heap": memo.heap.ident,
        "pieces": memo.pieces(),
    }


def loaded(channel: Path, stamped: bool) -> RecordMemo | None:
    with SqliteCache(channel / "noarch" / ".cache" / "cache.db") as cache:
        return memofile.load(cache, stamped)


def idx(channel: Path) -> Path:
    return channel / "noarch" / ".cache" / memofile.INDEX_FILE


def write_patches(channel: Path, changes: dict[str, dict[str, Any]]) -> None:
    conda = {fn: c for fn, c in changes.items() if fn.endswith(".conda")}
    bz2 = {fn: c for fn, c in changes.items() if fn.endswith(".tar.bz2")}
    data = {"patch_instructions_version": 1, "packages": bz2, "packages.conda": conda}
    (channel / "noarch" / "patch_instructions.json").write_text(json.dumps(data))


def daemon_runs(channel: Path, config: IndexConfig) -> list[tuple[RecordMemo, int]]:
    """+1, -1, replace, a patch change and a v3 package, each as the worker runs them
    (touched names, the memo handed over); after each: (the memo, the saved file's length)."""
    memo = index_subdir(config, "noarch").memo
    noarch = channel / "noarch"
    out = []

    def run(touched: list[str]) -> None:
        nonlocal memo
        memo = index_subdir(config, "noarch", touched=touched, memo=memo).memo
        out.append((memo, idx(channel).stat().st_size))

    make_package(noarch / "new-1.0-0.conda", index_json("new", "1.0", "0"))
    run(["new-1.0-0.conda"])
    (noarch / "p1-1.1-0.conda").unlink()
    run(["p1-1.1-0.conda"])
    make_package(noarch / "p2-1.2-0.tar.bz2", index_json("p2", "1.2", "0", license="replaced"))
    run(["p2-1.2-0.tar.bz2"])
    write_patches(channel, {"p3-1.3-0.conda": {"license": "patched"}, "p4-1.4-0.conda": {"depends": ["x"]}})
    run([])
    write_patches(channel, {"p4-1.4-0.conda": {"depends": ["y"]}})
    make_package(noarch / "cond-1.0-0.conda", index_json("cond", "1.0", "0", depends=['a >=1[when="python >=3.10"]']))
    run(["cond-1.0-0.conda"])
    make_package(noarch / "new-1.1-0.conda", index_json("new", "1.1", "0"))
    (noarch / "cond-1.0-0.conda").unlink()
    run(["new-1.1-0.conda", "cond-1.0-0.conda"])
    return out


def test_replaying_the_journal_gives_the_memo_the_daemon_held(tmp_path: Path) -> None:
    channel = channel_with(tmp_path, 30)
    config = IndexConfig(channel)
    runs = daemon_runs(channel, config)
    header = idx(channel).read_bytes()[: memofile.HEADER]
    sizes = [size for _, size in runs]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)  # each run appended a frame
    for memo, _ in runs[:-1]:
        assert memo.journal.ident == header[len(memofile.MAGIC) :]  # one snapshot throughout
    memo = runs[-1][0]
    assert memo.patched and "p4-1.4-0.conda" in memo.patched  # the journal carried patched pieces
    again = loaded(channel, config.indexed_timestamp)
    assert again is not None and again.loaded
    assert memo_state(again) == memo_state(memo)
    # a restart after the +1s publishes what a fresh index does, and writes nothing
    restart = index_subdir(config, "noarch")
    assert restart.memo.loaded and restart.written == []
    (channel / "noarch" / "patch_instructions.json").unlink()
    index_subdir(config, "noarch")
    assert (channel / "noarch" / "repodata.json").read_bytes() == fresh_bytes(channel, tmp_path)


def test_the_v3_set_comes_back_from_the_journal(tmp_path: Path) -> None:
    channel = channel_with(tmp_path, 5)
    config = IndexConfig(channel)
    memo = index_subdir(config, "noarch").memo
    make_package(channel / "noarch" / "cond-1.0-0.conda", index_json("cond", "1.0", "0", depends=['a >=1[when="python >=3.10"]']))
    memo = index_subdir(config, "noarch", touched=["cond-1.0-0.conda"], memo=memo).memo
    assert memo.v3 == {"cond-1.0-0.conda"} and memo.journal.end > memo.journal.snapshot + memofile.HEADER
    again = loaded(channel, config.indexed_timestamp)
    assert again is not None and memo_state(again) == memo_state(memo)


def test_a_torn_or_damaged_journal_never_gives_a_wrong_memo(tmp_path: Path) -> None:
    channel = channel_with(tmp_path, 20)
    config = IndexConfig(channel)
    runs = daemon_runs(channel, config)
    whole = idx(channel).read_bytes()
    expected = memo_state(runs[-1][0])
    snapshot_end = memofile.HEADER + runs[0][0].journal.snapshot
    last_start = runs[-2][1]
    damages = {
        "torn in the last frame": whole[: last_start + 5],
        "torn in a frame's header": whole[: last_start + 3],
        "torn in the middle": whole[: (snapshot_end + last_start) // 2],
        "a byte of the last frame flipped": whole[:-3] + bytes([whole[-3] ^ 0xFF]) + whole[-2:],
        "a byte of the first journal frame flipped": whole[: snapshot_end + 20] + bytes([whole[snapshot_end + 20] ^ 0x01]) + whole[snapshot_end + 21 :],
        "torn in the snapshot": whole[: snapshot_end - 100],
        "not a memo file": b"\x93not msgpack",
        "only the header": whole[: memofile.HEADER],
    }
    for what, data in damages.items():
        idx(channel).write_bytes(data)
        # the frames before the damage were saved at an older generation: not used
        assert loaded(channel, config.indexed_timestamp) is None, what
    for what, tail in {"garbage appended": os.urandom(200), "a frame header promising more": b"\xff\xff\x00\x00abcd"}.items():
        idx(channel).write_bytes(whole + tail)
        again = loaded(channel, config.indexed_timestamp)
        assert again is not None and memo_state(again) == expected, what
    # the run after a damaged journal publishes what a fresh index does
    idx(channel).write_bytes(whole[: last_start + 5])
    (channel / "noarch" / "repodata.json").unlink()
    result = index_subdir(config, "noarch")
    assert not result.memo.loaded
    (channel / "noarch" / "patch_instructions.json").unlink()
    index_subdir(config, "noarch")
    assert (channel / "noarch" / "repodata.json").read_bytes() == fresh_bytes(channel, tmp_path)


def test_garbage_after_the_journal_is_not_appended_to(tmp_path: Path) -> None:
    channel = channel_with(tmp_path, 10)
    config = IndexConfig(channel)
    memo = index_subdir(config, "noarch").memo
    with open(idx(channel), "ab") as f:
        f.write(b"garbage")
    make_package(channel / "noarch" / "new-1.0-0.conda", index_json("new", "1.0", "0"))
    memo = index_subdir(config, "noarch", touched=["new-1.0-0.conda"], memo=memo).memo
    data = idx(channel).read_bytes()
    assert b"garbage" not in data and memo.journal.end == len(data)  # a new snapshot
    again = loaded(channel, config.indexed_timestamp)
    assert again is not None and memo_state(again) == memo_state(memo)


def test_conda_index_writing_the_cache_after_a_journal_makes_it_unused(tmp_path: Path) -> None:
    channel = channel_with(tmp_path, 10)
    config = IndexConfig(channel)
    daemon_runs(channel, config)
    with sqlite3.connect(channel / "noarch" / ".cache" / "cache.db") as conn:
        path, text = conn.execute("SELECT path, index_json FROM index_json WHERE path LIKE 'p0-%' LIMIT 1").fetchone()
        record = json.loads(text)
        record["license"] = "rewritten-by-conda-index"
        conn.execute("INSERT OR REPLACE INTO index_json (path, index_json) VALUES (?, json(?))", (path, json.dumps(record)))
    assert loaded(channel, config.indexed_timestamp) is None
    result = index_subdir(config, "noarch")
    assert not result.memo.loaded
    published = json.loads((channel / "noarch" / "repodata.json").read_bytes())
    section = "packages.conda" if path.endswith(".conda") else "packages"
    assert published[section][path]["license"] == "rewritten-by-conda-index"


def test_a_compaction_or_another_writer_starts_a_new_snapshot(tmp_path: Path) -> None:
    channel = channel_with(tmp_path, 12)
    config = IndexConfig(channel)
    memo = index_subdir(config, "noarch").memo
    first = memo.journal.ident
    make_package(channel / "noarch" / "new-1.0-0.conda", index_json("new", "1.0", "0"))
    memo = index_subdir(config, "noarch", touched=["new-1.0-0.conda"], memo=memo).memo
    assert memo.journal.ident == first
    memo.compact(force=True)  # every offset moves: the journal cannot say it
    make_package(channel / "noarch" / "new-1.1-0.conda", index_json("new", "1.1", "0"))
    memo = index_subdir(config, "noarch", touched=["new-1.1-0.conda"], memo=memo).memo
    assert memo.journal.ident != first
    assert memo_state(loaded(channel, config.indexed_timestamp)) == memo_state(memo)  # type: ignore[arg-type]
    # another process's run (a one-shot index) saved the memo since: this one's journal
    # position is stale, so its next save is a snapshot, not a frame after the other's
    stale = memo.journal.ident
    before = idx(channel).stat().st_size
    assert index_subdir(config, "noarch").memo.loaded
    assert idx(channel).stat().st_size > before  # it appended its quiet state
    make_package(channel / "noarch" / "new-1.2-0.conda", index_json("new", "1.2", "0"))
    memo = index_subdir(config, "noarch", touched=["new-1.2-0.conda"], memo=memo).memo
    again = loaded(channel, config.indexed_timestamp)
    assert again is not None and memo_state(again) == memo_state(memo)
    assert memo.journal.ident != stale


def test_the_shard_state_is_appended_to_and_reads_back_whole(tmp_path: Path) -> None:
    """The shard upkeep's state (formats/shards.ShardState) is a snapshot line and journal
    lines; a +1 appends one line, and reading the file gives the state the run ended with."""
    channel = channel_with(tmp_path, 14)
    config = IndexConfig(channel)
    path = channel / "noarch" / ".cache" / "shards-state.json"
    memo = index_subdir(config, "noarch").memo
    first = path.read_bytes()
    assert first.endswith(b"\n") and first.count(b"\n") == 1
    for i in range(3):
        make_package(channel / "noarch" / f"new-1.{i}-0.conda", index_json("new", f"1.{i}", "0"))
        memo = index_subdir(config, "noarch", touched=[f"new-1.{i}-0.conda"], memo=memo).memo
    gone = ["p3-1.3-0.tar.bz2", "p3-1.10-0.conda"]  # every package of p3
    for fn in gone:
        (channel / "noarch" / fn).unlink()
    memo = index_subdir(config, "noarch", touched=gone, memo=memo).memo
    data = path.read_bytes()
    assert data.startswith(first) and data.count(b"\n") == 5  # one line per publish
    held = memo.shards[0]
    assert shards.ShardState.from_bytes(data) == held and "p3" not in held.remembered and held.unreferenced
    # a torn last line: the state before it, which a run repairs (same bytes as a fresh index)
    torn = data[: data.rindex(b"\n", 0, len(data) - 1) + 10]
    older = shards.ShardState.from_bytes(torn)
    assert older == shards.ShardState.from_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 1]) and older != held
    path.write_bytes(torn)
    index_bytes = (channel / "noarch" / shards.SHARD_INDEX).read_bytes()
    again = index_subdir(config, "noarch")
    assert again.written == [] and (channel / "noarch" / shards.SHARD_INDEX).read_bytes() == index_bytes
    repaired = shards.ShardState.from_bytes(path.read_bytes())
    assert (repaired.remembered, repaired.salt, repaired.patched) == (held.remembered, held.salt, held.patched)
    # the lost line's unreferenced shard is unreferenced from now: collected later, never early
    assert repaired.unreferenced.keys() == held.unreferenced.keys()
    assert all(repaired.unreferenced[d] >= t for d, t in held.unreferenced.items())
    assert path.read_bytes().count(b"\n") == 1  # saved whole again: the torn tail is gone
    # a state saved before the journal (one JSON document, no newline) is read, then saved whole
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    make_package(channel / "noarch" / "new-2.0-0.conda", index_json("new", "2.0", "0"))
    index_subdir(config, "noarch")
    assert path.read_bytes().count(b"\n") == 1
