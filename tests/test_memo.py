"""The compact record memo (issue 13): pieces in a heap file, the memo kept between
processes, and what makes a saved memo unusable (conda-index writing the cache, a damaged
file). Every case checks the published bytes against a run that starts from nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from conda_indexd.backends import index_subdir
from conda_indexd.caches.sqlite.cache import SqliteCache
from conda_indexd.config import IndexConfig
from conda_indexd.pipeline import memofile
from conda_indexd.pipeline.memo import RecordMemo
from conda_indexd.pipeline.pieceheap import HEAP_FILE, PieceHeap, Section, SectionView
from pkgfactory import index_json, make_package


def channel_with(tmp_path: Path, count: int) -> Path:
    channel = tmp_path / "channel"
    for i in range(count):
        make_package(channel / "noarch" / f"p{i % 7}-1.{i}-0.{'conda' if i % 3 else 'tar.bz2'}", index_json(f"p{i % 7}", f"1.{i}", "0"))
    return channel


def fresh_bytes(channel: Path, tmp_path: Path) -> bytes:
    """repodata.json as a run from an empty cache writes it (another copy of the packages)."""
    other = tmp_path / "fresh"
    (other / "noarch").mkdir(parents=True)
    for f in (channel / "noarch").iterdir():
        if f.name.endswith((".conda", ".tar.bz2")):
            (other / "noarch" / f.name).write_bytes(f.read_bytes())
    # the same CEP-47 indexed_timestamps (kept beside cache.db), so the bytes can be equal
    stamps = channel / "noarch" / ".cache" / "conda-indexd-timestamps.db"
    if stamps.exists():
        (other / "noarch" / ".cache").mkdir()
        (other / "noarch" / ".cache" / stamps.name).write_bytes(stamps.read_bytes())
    index_subdir(IndexConfig(other), "noarch")
    return (other / "noarch" / "repodata.json").read_bytes()


def test_a_restart_uses_the_saved_memo_and_rewrites_nothing(tmp_path: Path) -> None:
    channel = channel_with(tmp_path, 30)
    config = IndexConfig(channel)
    first = index_subdir(config, "noarch")
    assert not first.memo.loaded and first.packages == 30
    again = index_subdir(config, "noarch")  # a new process would do the same: no memo handed over
    assert again.memo.loaded and again.written == [] and again.added == again.removed == again.changed == []
    make_package(channel / "noarch" / "new-1.0-0.conda", index_json("new", "1.0", "0"))
    plus = index_subdir(config, "noarch")
    assert plus.memo.loaded and plus.added == ["new-1.0-0.conda"] and plus.extracted == 1
    assert (channel / "noarch" / "repodata.json").read_bytes() == fresh_bytes(channel, tmp_path)


def test_conda_index_writing_the_cache_makes_the_saved_memo_unusable(tmp_path: Path) -> None:
    channel = channel_with(tmp_path, 10)
    config = IndexConfig(channel)
    index_subdir(config, "noarch")
    db = channel / "noarch" / ".cache" / "cache.db"
    with sqlite3.connect(db) as conn:  # as conda-index stores a record: INSERT OR REPLACE, same archive
        path, text = conn.execute("SELECT path, index_json FROM index_json ORDER BY path LIMIT 1").fetchone()
        record = json.loads(text)
        record["license"] = "rewritten-by-conda-index"
        conn.execute("INSERT OR REPLACE INTO index_json (path, index_json) VALUES (?, json(?))", (path, json.dumps(record)))
    result = index_subdir(config, "noarch")
    assert not result.memo.loaded
    published = json.loads((channel / "noarch" / "repodata.json").read_bytes())
    section = "packages.conda" if path.endswith(".conda") else "packages"
    assert published[section][path]["license"] == "rewritten-by-conda-index"


def test_the_cache_generation_moves_with_every_write_by_anyone_and_only_then(tmp_path: Path) -> None:
    """sqlite's generation is the header's file change counter (rollback journal): reads
    leave it, a write in place by another connection moves it, and so does one that sets
    a row to what it was (the counter counts commits that changed the file, not values).
    In WAL mode the row totals stand in for it and still move with an in-place write."""
    channel = channel_with(tmp_path, 10)
    index_subdir(IndexConfig(channel), "noarch")
    db = channel / "noarch" / ".cache" / "cache.db"
    with SqliteCache(db) as cache:
        first = cache.generation()
        assert first.startswith("counter:")
        cache.published_digests()
        assert cache.generation() == first
        with sqlite3.connect(db) as conn:  # another process: an fs row updated in place
            conn.execute("UPDATE stat SET mtime = mtime + 1 WHERE rowid = (SELECT min(rowid) FROM stat)")
        second = cache.generation()
        assert second != first
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE stat SET mtime = mtime - 1 WHERE rowid = (SELECT min(rowid) FROM stat)")
        assert cache.generation() not in (first, second)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode = WAL").fetchone() == ("wal",)
    with SqliteCache(db) as cache:
        wal = cache.generation()
        assert not wal.startswith("counter:")
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE stat SET mtime = mtime + 1 WHERE rowid = (SELECT min(rowid) FROM stat)")
        assert cache.generation() != wal


def test_damaged_memo_files_only_cost_a_rebuild(tmp_path: Path) -> None:
    channel = channel_with(tmp_path, 12)
    config = IndexConfig(channel)
    index_subdir(config, "noarch")
    expected = (channel / "noarch" / "repodata.json").read_bytes()
    cache_dir = channel / "noarch" / ".cache"
    for damage in (
        lambda: (cache_dir / HEAP_FILE).write_bytes((cache_dir / HEAP_FILE).read_bytes()[:100]),
        lambda: (cache_dir / memofile.INDEX_FILE).write_bytes(b"\x93not msgpack"),
        lambda: (cache_dir / HEAP_FILE).unlink(),
    ):
        damage()
        (channel / "noarch" / "repodata.json").unlink()  # so the run must publish again
        result = index_subdir(config, "noarch")
        assert not result.memo.loaded
        assert (channel / "noarch" / "repodata.json").read_bytes() == expected


def test_heap_compaction_keeps_every_piece(tmp_path: Path) -> None:
    channel = channel_with(tmp_path, 40)
    config = IndexConfig(channel)
    memo = index_subdir(config, "noarch").memo
    with SqliteCache(channel / "noarch" / ".cache" / "cache.db") as cache:
        before = memo.pieces()
        memo.compact(force=True)
        assert memo.pieces() == before
        conda = memo.sections["packages.conda"]
        assert conda.brk.count(1) == 1  # sorted: one run per section
        assert b"".join(memo.heap.runs(conda, 0, len(conda)))[:-1] == b",".join(p.encode() for fn, p in before if fn.endswith(".conda"))
        reloaded = RecordMemo(cache.memo_folder(), stamped=config.indexed_timestamp)
        reloaded.refresh(cache)
        assert reloaded.pieces() == before


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 30), st.integers(1, 40)), max_size=60), st.integers(0, 4))
def test_a_section_streams_its_pieces_in_order_whatever_the_edits(ops: list[tuple[bool, int, int]], compact_every: int) -> None:
    heap = PieceHeap(None)
    section = Section()
    expected: dict[str, bytes] = {}
    for k, (add, n, size) in enumerate(ops):
        fn = f"f{n:03d}.conda"
        if fn in expected:
            section.delete(section.find(fn))
            del expected[fn]
        if add:
            piece = f'"{fn}":{{"x":"{"y" * size}"}}'.encode()
            (off,) = heap.append([piece])
            section.insert(fn, bytes(32), 0, off, len(piece))
            expected[fn] = piece
        if compact_every and k % compact_every == 0:  # what RecordMemo.compact does
            new = PieceHeap(None)
            at = new.size
            for chunk in heap.runs(section, 0, len(section)):
                new.append_raw(chunk)
            section.placed(at)
            heap = new
    assert section.fns == sorted(expected)
    assert section.brk == bytearray(section._follows(i) for i in range(len(section)))
    joined = b"".join(SectionView(heap, section).chunks())
    assert joined == b",".join(expected[fn] for fn in sorted(expected))
