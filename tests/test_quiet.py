"""quiet.listing_digest: equal for the same listing in any order, different when any
field a change shows in (path, mtime, size, identity) differs."""

from __future__ import annotations

from conda_indexd.pipeline.quiet import listing_digest
from conda_indexd.stores.base import FileState, Listing


def test_listing_digest_sees_every_field_and_ignores_order() -> None:
    a = FileState("a-1-0.conda", 1.5, 10, "1:2", 1.5)
    b = FileState("b-1-0.tar.bz2", 2.0, 20, "3:4", 2.0)
    base = listing_digest([a, b])
    assert listing_digest([b, a]) == base
    variants = [
        [a], [a, b, FileState("c-1-0.conda", 2.0, 20, "3:4")],
        [a._replace(path="a-1-1.conda"), b], [a._replace(mtime=1.5000001), b],
        [a._replace(size=11), b], [a._replace(identity="1:3"), b],
        [a._replace(identity=""), b],
        [FileState("a-1-0.conda\0b", 1.5, 10, "1:2")],  # separators are not ambiguous with paths
    ]  # fmt: skip
    digests = {listing_digest(v) for v in variants}
    assert base not in digests and len(digests) == len(variants)
    assert listing_digest([]) != base and listing_digest([]) == listing_digest(iter([]))


def test_a_folder_listing_is_kept_in_columns_and_reads_as_file_states(tmp_path) -> None:
    """LocalStore's Listing: inode identities in integer arrays, FileStates on demand,
    sorted by path; its digest sees a rewrite of one file (new inode:ctime) and nothing
    else changes it."""
    import os

    from conda_indexd.stores.local import LocalStore

    (tmp_path / "linux-64").mkdir()
    for name in ("b-1-0.conda", "a-1-0.tar.bz2", "c-1-0.conda", "notes.txt", ".hidden-1-0.conda"):
        (tmp_path / "linux-64" / name).write_bytes(b"x" * len(name))
    store = LocalStore(tmp_path)
    listing = store.list_packages("linux-64")
    assert [f.path for f in listing] == ["a-1-0.tar.bz2", "b-1-0.conda", "c-1-0.conda"] == listing.paths
    st = os.lstat(tmp_path / "linux-64" / "b-1-0.conda")
    assert listing[1] == FileState("b-1-0.conda", st.st_mtime, 11, f"{st.st_ino}:{st.st_ctime_ns}", st.st_ctime)
    assert listing[-1].path == "c-1-0.conda" and [f.path for f in listing[1:]] == ["b-1-0.conda", "c-1-0.conda"]
    assert list(listing.rows())[1] == tuple(listing[1])[:4]
    digest = listing_digest(listing)
    assert listing_digest(store.list_packages("linux-64")) == digest
    os.utime(tmp_path / "linux-64" / "c-1-0.conda", (5, 5))  # the same bytes, a new mtime and ctime
    assert listing_digest(store.list_packages("linux-64")) != digest


def test_a_listing_of_strings_sorts_all_its_columns_together() -> None:
    files = [FileState(p, float(i), i, f"etag-{p}", float(i)) for i, p in enumerate(["c-1-0.conda", "a-1-0.conda", "b-1-0.conda"])]
    listing = Listing(files)
    listing.sort()
    assert list(listing) == sorted(files) and listing == sorted(files)
    assert listing_digest(listing) == listing_digest(files) == listing_digest(reversed(files))


def test_a_big_folder_listing_stats_half_in_a_forked_process_and_lists_the_same(tmp_path, monkeypatch) -> None:
    """From FORK_FROM package files on, a forked process stats the second half of the
    names: the listing is the same as one process's, folders and vanished names are left
    out on either side of the split, and a message cut short is refused (the parent then
    stats that half itself)."""
    import os

    from conda_indexd.stores import local

    folder = tmp_path / "linux-64"
    folder.mkdir()
    for i in range(400):
        (folder / f"p{i:03d}-1-0.conda").write_bytes(b"x" * i)
    (folder / "p010-1-0.conda").unlink()
    (folder / "p350-1-0.conda").unlink()
    (folder / "p010-1-0.conda").mkdir()  # a folder under a package name, in the first half
    (folder / "p350-1-0.conda").mkdir()  # and in the second
    os.symlink("p001-1-0.conda", folder / "p999-1-0.conda")  # listed (the reader refuses it)
    store = local.LocalStore(tmp_path)
    alone = store.list_packages("linux-64")
    monkeypatch.setattr(local, "FORK_FROM", 2)
    forked = store.list_packages("linux-64")
    assert list(forked) == list(alone) and len(forked) == 399
    assert "p010-1-0.conda" not in forked.paths and "p350-1-0.conda" not in forked.paths and forked.paths[-1] == "p999-1-0.conda"
    assert listing_digest(forked) == listing_digest(alone)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = sorted(os.listdir(fd))
        message = local._stat_range(fd, names, 0, len(names)).to_bytes()
    finally:
        os.close(fd)
    assert local._Stats.from_bytes(message, len(names)) is not None
    assert local._Stats.from_bytes(message[:-1], len(names)) is None
    assert local._Stats.from_bytes(message, len(names) + 1) is None
