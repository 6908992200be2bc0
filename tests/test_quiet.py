"""quiet.listing_digest: equal for the same listing in any order, different when any
field a change shows in (path, mtime, size, identity) differs."""

from __future__ import annotations

from conda_indexd.pipeline.quiet import listing_digest
from conda_indexd.stores.base import FileState


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
