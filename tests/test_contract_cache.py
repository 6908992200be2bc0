"""The cache contract (src/conda_indexd/caches/base.py), run against every cache.

A new cache (PostgreSQL, ...) joins by adding a fixture case to `caches`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conda_indexd.archive.reader import PackageMetadata
from conda_indexd.caches.base import Caches, FileState, MetadataRejected, SubdirCache
from conda_indexd.caches.sqlite.cache import SqliteCaches
from conda_indexd.model import Listing


@pytest.fixture(params=["sqlite", "sqlite-state-folder", "postgresql"])
def caches(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Caches]:
    (tmp_path / "noarch").mkdir()
    if request.param == "sqlite":
        yield SqliteCaches(tmp_path)
    elif request.param == "sqlite-state-folder":  # an S3 channel's caches, in a local state folder
        yield SqliteCaches(tmp_path, folder="")
    else:
        from conda_indexd.caches.pg.cache import PostgresCaches

        server = request.getfixturevalue("pg_server")
        pg = PostgresCaches(tmp_path, server.createdb("contract"))
        try:
            yield pg
        finally:
            pg.close()


@pytest.fixture
def cache(caches: Caches) -> Iterator[SubdirCache]:
    with caches.open("noarch") as c:
        yield c


def meta(fn: str, name: str, sha: str, *, about: str | None = '{"license": "MIT"}', run_exports: str | None = None) -> PackageMetadata:
    index = {"name": name, "version": "1", "build": "0", "build_number": 0, "depends": [], "md5": "0" * 32, "sha256": sha, "size": 10}
    return PackageMetadata(fn, index, about, None, run_exports, '{"paths": []}', None)


def test_a_new_cache_is_empty(cache: SubdirCache) -> None:
    assert cache.fs_state() == {} and cache.changed_packages() == [] and cache.failures() == []
    assert list(cache.published_keys()) == [] and cache.published_digests() == {}


def test_listing_then_store_publishes(cache: SubdirCache) -> None:
    a, b = FileState("a-1-0.conda", 1.0, 10), FileState("b-1-0.conda", 2.0, 10)
    cache.replace_fs_state([a, b])
    assert [f.path for f in cache.changed_packages()] == ["a-1-0.conda", "b-1-0.conda"]
    assert [f.path for f in cache.changed_packages(["b-1-0.conda"])] == ["b-1-0.conda"]
    with cache.transaction():
        cache.store(meta(a.path, "a", "1" * 64, run_exports='{"weak": ["a"]}'), a)
    assert [f.path for f in cache.changed_packages()] == ["b-1-0.conda"]
    assert cache.published_digests() == {"a-1-0.conda": "1" * 64}
    (row,) = cache.records_for(["a-1-0.conda"])
    assert row.path == "a-1-0.conda" and row.name == "a" and row.run_exports is not None
    assert '"sha256"' in row.index_json
    assert [tuple(k) for k in cache.shard_keys()] == [("a", "a-1-0.conda", "1" * 64)]
    texts = cache.metadata_texts("a-1-0.conda")
    assert texts[0] is not None and texts[1] is not None and "MIT" in texts[1]
    assert dict(cache.run_exports()).keys() == {"a-1-0.conda", "b-1-0.conda"}


def test_a_changed_file_is_changed_again_and_unpublished(cache: SubdirCache) -> None:
    a = FileState("a-1-0.conda", 1.0, 10)
    cache.replace_fs_state([a])
    cache.store(meta(a.path, "a", "1" * 64), a)
    cache.update_fs_state([FileState(a.path, 5.0, 10)], [])
    assert [f.path for f in cache.changed_packages()] == [a.path]
    assert cache.published_digests() == {}  # stale metadata is never published
    cache.update_fs_state([], [a.path])
    assert cache.fs_state() == {} and cache.changed_packages() == []


def test_failures_are_remembered_until_the_file_changes(cache: SubdirCache) -> None:
    a = FileState("a-1-0.conda", 1.0, 10)
    cache.replace_fs_state([a])
    cache.store(meta(a.path, "a", "1" * 64), a)
    broken = FileState(a.path, 2.0, 10)
    cache.update_fs_state([broken], [])
    cache.store_failure(broken, "truncated", "archive ends early")
    assert [(f.path, f.reason, f.message) for f in cache.failures()] == [(a.path, "truncated", "archive ends early")]
    assert cache.changed_packages() == [] and cache.published_digests() == {}
    assert cache.metadata_texts(a.path)[0] is None  # stale metadata dropped
    cache.update_fs_state([FileState(a.path, 3.0, 10)], [])
    assert [f.path for f in cache.changed_packages()] == [a.path] and cache.failures() == []


def test_metadata_the_cache_cannot_hold_is_rejected(cache: SubdirCache) -> None:
    a = FileState("a-1-0.conda", 1.0, 10)
    cache.replace_fs_state([a])
    with pytest.raises(MetadataRejected):
        cache.store(meta(a.path, "a", "1" * 64, about="{not json"), a)


def test_full_listing_replaces_and_ignores_identity(cache: SubdirCache) -> None:
    cache.replace_fs_state([FileState("a-1-0.conda", 1.0, 10, "x"), FileState("b-1-0.conda", 1.0, 10)])
    cache.replace_fs_state([FileState("a-1-0.conda", 1.0, 10, "y")])
    assert {p: tuple(f)[:3] for p, f in cache.fs_state().items()} == {"a-1-0.conda": ("a-1-0.conda", 1.0, 10)}


def test_rows_and_state_persist_across_opens(caches: Caches) -> None:
    a = FileState("a-1-0.conda", 1.0, 10)
    with caches.open("noarch") as c:
        c.replace_fs_state([a])
        c.store(meta(a.path, "a", "1" * 64), a)
        assert c.load_state("shards-state.json") is None
        c.save_state("shards-state.json", b'{"version":1}')
    with caches.open("noarch") as c:
        assert c.published_digests() == {"a-1-0.conda": "1" * 64}
        assert c.load_state("shards-state.json") == b'{"version":1}'


def test_a_state_is_appended_to_only_as_it_was_last_seen(cache: SubdirCache) -> None:
    assert not cache.append_state("shards-state.json", b"x", 0)  # none saved: saved whole by the caller
    cache.save_state("shards-state.json", b"ab\n")
    assert cache.append_state("shards-state.json", b"cd\n", 3)
    assert cache.append_state("shards-state.json", b"", 6)  # appending nothing: it is still as seen
    assert not cache.append_state("shards-state.json", b"ef\n", 3)  # someone else's since
    assert cache.load_state("shards-state.json") == b"ab\ncd\n"


def test_a_rolled_back_transaction_keeps_nothing(cache: SubdirCache) -> None:
    a = FileState("a-1-0.conda", 1.0, 10)
    with pytest.raises(RuntimeError), cache.transaction():
        cache.replace_fs_state([a])
        raise RuntimeError("boom")
    assert cache.fs_state() == {}


def test_an_identity_change_alone_is_a_change(cache: SubdirCache) -> None:
    """Same size, same LastModified second, new ETag (an S3 re-upload): read again, and
    the old record is not served for the new bytes."""
    a = FileState("a-1-0.conda", 5.0, 10, "etag-1")
    cache.replace_fs_state([a])
    cache.store(meta(a.path, "a", "1" * 64), a)
    assert cache.changed_packages() == []
    b = a._replace(identity="etag-2")
    cache.replace_fs_state([b])
    assert [f.path for f in cache.changed_packages()] == ["a-1-0.conda"]
    assert cache.published_digests() == {}
    cache.store_failure(b, "not-a-zip", "broken")
    assert [f.path for f in cache.failures()] == ["a-1-0.conda"] and cache.changed_packages() == []
    cache.update_fs_state([b._replace(identity="etag-3")], [])
    assert [f.path for f in cache.changed_packages()] == ["a-1-0.conda"]


def test_pieces_persist_only_for_the_text_they_were_made_from(caches: Caches) -> None:
    with caches.open("noarch") as c:
        pieces = c.pieces()
        if pieces is None:
            pytest.skip("this cache keeps no pieces")
        assert list(pieces.lookup([("a-1-0.conda", "a", '{"x": 1}')])) == [("a-1-0.conda", "a", '{"x": 1}', None)]
        pieces.save([("a-1-0.conda", '{"x": 1}', b'"a-1-0.conda":{"x":1}'), ("b-1-0.conda", "{}", b'"b-1-0.conda":{}')])
    with caches.open("noarch") as c:
        pieces = c.pieces()
        assert pieces is not None
        rows = [("a-1-0.conda", "a", '{"x": 1}'), ("b-1-0.conda", "b", '{"y": 2}')]  # b's row was re-indexed
        assert [r[3] for r in pieces.lookup(rows)] == [b'"a-1-0.conda":{"x":1}', None]
        pieces.save([], keep=["b-1-0.conda"])  # a left the cache
        assert [r[3] for r in pieces.lookup(rows[:1])] == [None]


def test_a_listing_and_a_list_of_the_same_files_change_the_same_rows(cache: SubdirCache) -> None:
    """replace_fs_state takes a store's column-wise Listing (merged with the rows in path
    order) or any list of FileStates: both say which rows changed, the same way."""
    rows = [FileState(f"p{i:03d}-1-0.conda", float(i), i, f"id{i}") for i in range(0, 60, 2)]
    assert cache.replace_fs_state(Listing(rows)) == {f.path for f in rows}
    assert cache.replace_fs_state(Listing(rows)) == set()
    new = [f._replace(size=99) if i % 7 == 0 else f for i, f in enumerate(rows) if i % 5]  # some gone, some changed
    new += [FileState("a-1-0.conda", 1.0, 1, "x"), FileState("p031-1-0.conda", 1.0, 1, "y"), FileState("z-1-0.conda", 1.0, 1, "z")]
    expected = {f.path for f in rows if rows.index(f) % 5 == 0} | {f.path for f in new if f not in rows}
    assert cache.replace_fs_state(Listing(sorted(new))) == expected
    assert {p: tuple(f)[:4] for p, f in cache.fs_state().items()} == {f.path: tuple(f)[:4] for f in new}
    cache.replace_fs_state(rows)
    assert cache.replace_fs_state(list(reversed(new))) == expected
