"""The record memo: each published package's serialised repodata record, kept between
runs so a one-package change costs one record, not the whole subdir.

What the memo may assume (docs/architecture.md): an entry is valid while the package's
archive sha256 is unchanged, because the sha256 fixes every byte of the metadata the
record is built from. A memo is only ever refreshed against the cache it was filled
from: the owner drops it (starts the next run without one) whenever a run fails, is
cancelled, or rebuilds a damaged cache. That rule lives in the daemon's SubdirState.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

from . import repodata
from .cache import ShardKey, SubdirCache


class MemoEntry(NamedTuple):
    sha256: str
    piece: str  # '"filename":{record}' as it appears in repodata.json
    name: str  # the package name (which shard it belongs to)


class RecordMemo:
    """{filename: MemoEntry} of every published package of one subdir."""

    def __init__(self) -> None:
        self.entries: dict[str, MemoEntry] = {}

    def refresh(self, cache: SubdirCache, paths: Collection[str] | None = None) -> set[str]:
        """Bring the entries in line with the cache; returns the names whose records
        were added, replaced or removed. `paths`: the only files that can have changed
        since the last refresh (None: look at every published package)."""
        if paths is None:
            keys = dict(cache.published_keys())
            gone = self.entries.keys() - keys.keys()
        else:
            keys = dict(cache.published_keys(paths))
            gone = {fn for fn in paths if fn in self.entries and fn not in keys}
        changed: set[str] = set()
        for fn in gone:
            changed.add(self.entries.pop(fn).name)
        misses = [fn for fn, sha in keys.items() if not sha or fn not in self.entries or self.entries[fn].sha256 != sha]
        for row in cache.records_for(misses):
            if row.path in self.entries:
                changed.add(self.entries[row.path].name)
            self.entries[row.path] = MemoEntry(keys[row.path] or "", repodata.record_piece(row.path, row.index_json), row.name)
            changed.add(row.name)
        return changed

    def digests(self) -> dict[str, str]:
        return {fn: entry.sha256 for fn, entry in self.entries.items()}

    def pieces(self) -> list[tuple[str, str]]:
        """(filename, record piece) sorted by filename: the input of build_repodata."""
        return sorted((fn, entry.piece) for fn, entry in self.entries.items())

    def shard_keys(self) -> list[ShardKey]:
        """Ordered by name then filename, for shards."""
        return sorted(ShardKey(entry.name, fn, entry.sha256) for fn, entry in self.entries.items())
