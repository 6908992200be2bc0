"""The ChannelStore contract (src/conda_indexd/stores/base.py), run against every store.

A new store (S3, ...) joins by adding a fixture case to `store`: the same tests must
pass. Package files are put in place with `write`, the store's own atomic put.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conda_indexd.stores.base import ChannelStore, FileState
from conda_indexd.stores.local import LocalStore


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChannelStore]:
    if request.param == "local":
        root = tmp_path / "channel"
        root.mkdir()
        yield LocalStore(root)
    else:  # a prefix in a fresh bucket on the session's Ceph RGW (skips without it)
        from conda_indexd.stores.s3.store import S3Store

        # a writer above 1 MiB goes through a file and a multipart upload (5 MiB parts)
        yield S3Store(f"s3://{request.getfixturevalue('bucket')}/some/channel", multipart_threshold=1 << 20, part_size=5 << 20)


def test_a_usable_store_passes_its_check(store: ChannelStore) -> None:
    store.check()  # raises StoreError when it cannot be used (a bucket: test_s3's bad credentials)


def test_missing_subdir_lists_nothing(store: ChannelStore) -> None:
    assert store.list_packages("linux-64") == []
    assert store.list_files("linux-64") == {}
    assert store.stat_packages("linux-64", ["a-1-0.conda"]) == ([], ["a-1-0.conda"])
    assert store.stat_files("linux-64", ["repodata.json"]) == ([], ["repodata.json"])
    assert store.stat_files("linux-64") == ([], [])


def test_write_read_exists_remove(store: ChannelStore) -> None:
    store.prepare("noarch", recover=False)
    assert store.read("noarch/repodata.json") is None and not store.exists("noarch/repodata.json")
    assert store.write("noarch/repodata.json", b"{}") is True
    assert store.read("noarch/repodata.json") == b"{}" and store.exists("noarch/repodata.json")
    assert store.write("noarch/repodata.json", b"{}") is False  # same bytes: nothing written
    assert store.write("noarch/repodata.json", b'{"a":1}') is True
    assert store.read("noarch/repodata.json") == b'{"a":1}'
    assert store.remove("noarch/repodata.json") is True
    assert store.remove("noarch/repodata.json") is False
    assert store.read("noarch/repodata.json") is None


def test_folders_below_a_subdir_are_made_on_write(store: ChannelStore) -> None:
    store.prepare("noarch", recover=False)
    assert store.write("noarch/shards/ab.msgpack.zst", b"x" * 10, sync=False)
    store.sync("noarch/shards")
    assert store.list_files("noarch/shards") == {"ab.msgpack.zst": 10}
    assert "shards" not in store.list_files("noarch")  # folders are not files


def test_sync_is_the_barrier_for_unsynced_writes(store: ChannelStore) -> None:
    store.prepare("noarch", recover=False)
    for i in range(20):
        store.write(f"noarch/shards/{i:064x}.msgpack.zst", bytes([i]) * 50, sync=False)
    store.sync("noarch/shards")
    files = store.list_files("noarch/shards")
    assert len(files) == 20 and set(files.values()) == {50}
    assert store.read(f"noarch/shards/{7:064x}.msgpack.zst") == bytes([7]) * 50


def test_listing_holds_packages_only_with_their_state(store: ChannelStore) -> None:
    store.prepare("noarch", recover=False)
    store.write("noarch/a-1-0.conda", b"a" * 5)
    store.write("noarch/b-1-0.tar.bz2", b"b" * 7)
    store.write("noarch/repodata.json", b"{}")
    store.write("noarch/.hidden-1-0.conda", b"h")
    listed = {f.path: f for f in store.list_packages("noarch")}
    assert sorted(listed) == ["a-1-0.conda", "b-1-0.tar.bz2"]
    assert listed["a-1-0.conda"].size == 5 and listed["b-1-0.tar.bz2"].size == 7
    assert all(isinstance(f, FileState) and f.mtime > 0 and f.identity for f in listed.values())
    assert store.subdirs() == ["noarch"]


def test_the_same_listing_holds_the_attestation_sidecars(store: ChannelStore) -> None:
    """`.sidecars`: the `.sigs` files and their immutable copies the package listing saw,
    with the state `stat_files` gives them; never among the packages."""
    store.prepare("noarch", recover=False)
    store.write("noarch/a-1-0.conda", b"a")
    store.write("noarch/a-1-0.conda.sigs", b"[{}]")
    store.write("noarch/a-1-0.conda.sigs." + "0" * 64, b"[{}]")
    store.write("noarch/a-1-0.conda.sigs.notahash", b"x")
    listing = store.list_packages("noarch")
    assert [f.path for f in listing] == ["a-1-0.conda"]
    assert [f.path for f in listing.sidecars] == ["a-1-0.conda.sigs", "a-1-0.conda.sigs." + "0" * 64]
    stated, _ = store.stat_files("noarch", [f.path for f in listing.sidecars])
    assert listing.sidecars == stated


def test_identity_changes_when_the_file_is_replaced(store: ChannelStore) -> None:
    store.prepare("noarch", recover=False)
    store.write("noarch/a-1-0.conda", b"first")
    (before,) = store.list_packages("noarch")
    time.sleep(0.01)
    store.write("noarch/a-1-0.conda", b"other")  # same size
    (after,) = store.list_packages("noarch")
    assert after.size == before.size and after.identity != before.identity


def test_stat_splits_present_and_gone(store: ChannelStore) -> None:
    store.prepare("noarch", recover=False)
    store.write("noarch/a-1-0.conda", b"aaa")
    present, gone = store.stat_packages("noarch", ["a-1-0.conda", "z-1-0.conda"])
    assert [f.path for f in present] == ["a-1-0.conda"] and present[0].size == 3
    assert gone == ["z-1-0.conda"]
    assert present[0][:3] == next(f for f in store.list_packages("noarch"))[:3]


OUTPUTS = ["current_repodata.json", "repodata.json", "repodata.json.zst", "repodata_from_packages.json",
           "repodata_shards.msgpack.zst", "run_exports.json"]  # fmt: skip


def test_stat_files_sees_outputs_with_their_state(store: ChannelStore) -> None:
    """Outputs are stat'ed like packages: a size and an identity, or reported missing."""
    store.prepare("noarch", recover=False)
    for i, name in enumerate(OUTPUTS):
        store.write(f"noarch/{name}", b"x" * (i + 1))
    store.write("noarch/a-1-0.conda", b"aaaa")  # a package beside them
    store.write("noarch/shards/ab.msgpack.zst", b"s")  # not directly in the folder
    present, missing = store.stat_files("noarch", [*OUTPUTS, "repodata.json.bz2", "patch_instructions.json"])
    assert [f.path for f in present] == OUTPUTS and missing == ["patch_instructions.json", "repodata.json.bz2"]
    assert [f.size for f in present] == [OUTPUTS.index(f.path) + 1 for f in present]
    assert all(isinstance(f, FileState) and f.mtime > 0 and f.identity for f in present)
    assert len({f.identity for f in present}) == len(present)
    # without names: every plain file directly in the folder, packages too
    everything, none = store.stat_files("noarch")
    assert [f.path for f in everything] == sorted([*OUTPUTS, "a-1-0.conda"]) and none == []
    assert [f[:4] for f in everything if f.path in OUTPUTS] == [f[:4] for f in present]
    assert store.stat_files("noarch/shards") == (store.stat_files("noarch/shards", ["ab.msgpack.zst"])[0], [])


def test_a_listing_of_the_subdir_holds_everything_once(store: ChannelStore) -> None:
    """`list_subdir`: the packages and sidecars as `list_packages` gives them, and in the
    same look the other plain files directly in the subdir (as `stat_files` gives them) and
    the shard folder's files (as `list_files`): a full run lists nothing else."""
    store.prepare("noarch", recover=False)
    for i, name in enumerate(OUTPUTS):
        store.write(f"noarch/{name}", b"x" * (i + 1))
    store.write("noarch/a-1-0.conda", b"aaaa")
    store.write("noarch/a-1-0.conda.sigs", b"[{}]")
    store.write("noarch/shards/ab.msgpack.zst", b"s")
    store.write("noarch/shards/cd.msgpack.zst", b"ss")
    store.write("noarch/.cache/cache.json", b"{}")  # below the subdir, not a shard: in neither
    listing = store.list_subdir("noarch")
    assert list(listing) == list(store.list_packages("noarch"))
    assert listing.sidecars == store.list_packages("noarch").sidecars
    assert [f.path for f in listing] == ["a-1-0.conda"]
    everything, _ = store.stat_files("noarch")
    assert listing.files == [f for f in everything if f.path in OUTPUTS]
    assert listing.shards == store.list_files("noarch/shards") == {"ab.msgpack.zst": 1, "cd.msgpack.zst": 2}
    assert store.list_packages("noarch").files is None and store.list_packages("noarch").shards is None  # not looked at
    empty = store.list_subdir("linux-64")
    assert (list(empty), empty.files, empty.shards) == ([], [], {})


def test_stat_files_identity_follows_every_rewrite(store: ChannelStore) -> None:
    """Other bytes of the same size, a truncation, a removal: each is seen."""
    store.prepare("noarch", recover=False)
    store.write("noarch/repodata.json.zst", b"0123456789")
    ((before,), _) = store.stat_files("noarch", ["repodata.json.zst"])
    assert before.size == 10
    time.sleep(0.01)
    store.write("noarch/repodata.json.zst", b"9876543210")  # same size, other bytes
    ((after,), _) = store.stat_files("noarch", ["repodata.json.zst"])
    assert after.size == 10 and after.identity != before.identity
    with store.writer("noarch/repodata.json.zst") as w:  # truncated, streamed
        w.write(b"01234")
        w.commit()
    ((short,), _) = store.stat_files("noarch", ["repodata.json.zst"])
    assert short.size == 5 and short.identity not in (before.identity, after.identity)
    assert store.remove("noarch/repodata.json.zst")
    assert store.stat_files("noarch", ["repodata.json.zst"]) == ([], ["repodata.json.zst"])


def test_stat_packages_is_for_packages(store: ChannelStore) -> None:
    """Outputs are not packages: `stat_packages` never reports one as present with a
    state other than `stat_files`'s (a bucket store leaves them out; use stat_files)."""
    store.prepare("noarch", recover=False)
    store.write("noarch/repodata.json", b"{}")
    present, gone = store.stat_packages("noarch", ["repodata.json"])
    assert present in ([], store.stat_files("noarch", ["repodata.json"])[0]) and gone in ([], ["repodata.json"])


def test_open_package_is_a_seekable_stream(store: ChannelStore) -> None:
    store.prepare("noarch", recover=False)
    store.write("noarch/a-1-0.conda", b"0123456789")
    with store.open_package("noarch", "a-1-0.conda") as f:
        assert f.read(3) == b"012"
        f.seek(0)
        assert f.read() == b"0123456789"
        assert f.seek(0, 2) == 10
    with pytest.raises(FileNotFoundError):
        store.open_package("noarch", "gone-1-0.conda").__enter__()


def test_channel_level_files(store: ChannelStore) -> None:
    assert store.write("channeldata.json", b"{}")
    assert store.read("channeldata.json") == b"{}"


def test_writer_publishes_on_commit_only_when_bytes_differ(store: ChannelStore) -> None:
    store.prepare("noarch", recover=False)
    with store.writer("noarch/repodata.json") as w:
        w.write(b'{"a":')
        w.write(b"1}")
        assert store.read("noarch/repodata.json") is None  # nothing visible before commit
        assert w.commit() is True
    assert store.read("noarch/repodata.json") == b'{"a":1}'
    with store.writer("noarch/repodata.json") as w:  # same bytes in other pieces
        for piece in (b"{", b'"a":1', b"}"):
            w.write(piece)
        assert w.commit() is False
    for longer in (b'{"a":1}x', b'{"a":'):  # a prefix or an extension of the old bytes
        with store.writer("noarch/repodata.json") as w:
            w.write(longer)
            assert w.commit() is True
        assert store.read("noarch/repodata.json") == longer
    assert store.list_files("noarch") == {"repodata.json": 5}  # no temporaries left


def test_writer_without_commit_or_failing_leaves_the_old_file(store: ChannelStore) -> None:
    store.prepare("noarch", recover=False)
    store.write("noarch/repodata.json", b"old")
    with store.writer("noarch/repodata.json") as w:
        w.write(b"new, never committed")
    with pytest.raises(RuntimeError), store.writer("noarch/repodata.json") as w:
        w.write(b"new")
        raise RuntimeError("the build failed half way")
    assert store.read("noarch/repodata.json") == b"old"
    with store.writer("noarch/shards/x.msgpack.zst") as w:  # folders below a subdir are made
        w.write(b"x")
        assert w.commit(sync=False)
    store.sync("noarch/shards")  # an unsynced write may still be on its way (S3's queued PUTs)
    assert store.list_files("noarch") == {"repodata.json": 3}
    assert store.list_files("noarch/shards") == {"x.msgpack.zst": 1}


def test_copy_publishes_the_same_bytes_under_a_second_key(store: ChannelStore) -> None:
    store.prepare("noarch", recover=False)
    store.write("noarch/repodata_from_packages.json", b'{"a":1}')
    assert store.copy("noarch/repodata_from_packages.json", "noarch/repodata.json") is True
    assert store.read("noarch/repodata.json") == b'{"a":1}'
    assert store.copy("noarch/repodata_from_packages.json", "noarch/repodata.json") is False  # already there
    # a later write of either name replaces only that name
    assert store.write("noarch/repodata.json", b'{"b":2}') is True
    assert store.read("noarch/repodata_from_packages.json") == b'{"a":1}'
    with store.writer("noarch/repodata_from_packages.json") as w:
        w.write(b'{"c":3}')
        assert w.commit() is True
    assert store.read("noarch/repodata.json") == b'{"b":2}'
    assert store.copy("noarch/repodata_from_packages.json", "noarch/repodata.json") is True
    assert store.read("noarch/repodata.json") == b'{"c":3}'
    assert store.list_files("noarch") == {"repodata_from_packages.json": 7, "repodata.json": 7}  # no temporaries


def test_copy_is_skipped_when_the_key_holds_those_bytes_and_needs_a_source(store: ChannelStore) -> None:
    store.prepare("noarch", recover=False)
    store.write("noarch/a.json", b"same bytes")
    store.write("noarch/b.json", b"same bytes")  # written on its own, not a copy
    assert store.copy("noarch/a.json", "noarch/b.json") is False
    store.write("noarch/b.json", b"other byte")  # the same size
    assert store.copy("noarch/a.json", "noarch/b.json") is True and store.read("noarch/b.json") == b"same bytes"
    with pytest.raises(FileNotFoundError):
        store.copy("noarch/gone.json", "noarch/b.json")
    assert store.read("noarch/b.json") == b"same bytes"
    assert store.copy("noarch/a.json", "noarch/shards/a.json") is True  # folders below a subdir are made
    assert store.read("noarch/shards/a.json") == b"same bytes"


def test_writer_size_hint_is_only_a_shortcut(store: ChannelStore) -> None:
    store.prepare("noarch", recover=False)
    store.write("noarch/repodata.json", b'{"a":1}')
    with store.writer("noarch/repodata.json", size=7) as w:  # right: still compared, equal
        w.write(b'{"a":1}')
        assert w.commit() is False
    with store.writer("noarch/repodata.json", size=99) as w:  # wrong: the bytes still decide
        w.write(b'{"a":1}')
        assert w.commit() is False
    assert store.read("noarch/repodata.json") == b'{"a":1}'
    with store.writer("noarch/repodata.json", size=7) as w:
        w.write(b'{"a":2}')
        assert w.commit() is True
    assert store.read("noarch/repodata.json") == b'{"a":2}'


def test_writer_of_a_file_bigger_than_memory(store: ChannelStore) -> None:
    """11 MiB in 64 KiB pieces: above the S3 fixture's threshold (three parts of at most
    5 MiB); the same rules as a small writer."""
    import os

    store.prepare("noarch", recover=False)
    pieces = [os.urandom(64 << 10) for _ in range(176)]
    big = b"".join(pieces)
    other = big[:-1] + bytes([big[-1] ^ 0xFF])  # the last byte differs (random data may end in any byte)
    store.write("noarch/repodata.json", b"old")
    with store.writer("noarch/repodata.json") as w:
        for piece in pieces:
            w.write(piece)
        assert store.read("noarch/repodata.json") == b"old"  # nothing visible before commit
        assert w.commit() is True
    assert store.read("noarch/repodata.json") == big
    with store.writer("noarch/repodata.json") as w:  # the same bytes: not written again
        w.write(big)
        assert w.commit() is False
    with pytest.raises(RuntimeError), store.writer("noarch/repodata.json") as w:
        w.write(other)
        raise RuntimeError("the build failed half way")
    assert store.read("noarch/repodata.json") == big
    with store.writer("noarch/repodata.json") as w:  # one byte differs at the end
        w.write(other)
        assert w.commit() is True
    assert store.read("noarch/repodata.json") == other
    assert store.list_files("noarch") == {"repodata.json": len(big)}  # no temporaries left
