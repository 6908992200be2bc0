"""The record memo: each published package's serialised repodata record, kept between
runs so a one-package change costs one record, not the whole subdir.

What the memo may assume (docs/architecture.md): an entry is valid while the package's
archive sha256 is unchanged, because the sha256 fixes every byte of the metadata the
record is built from. Pieces are also kept between processes (cache.pieces(), valid
for the exact cached index_json text), so a restart or a one-shot run does not serialise
unchanged records again. A memo is only ever refreshed against the cache it was filled
from: the owner drops it (starts the next run without one) whenever a run fails, is
cancelled, or rebuilds a damaged cache. That rule lives in the daemon's SubdirState.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection
from typing import NamedTuple

from . import repodata
from .cache import ShardKey, SubdirCache
from .names import section_of
from .quiet import Quiet

RESORT = 256  # more changes than this in one refresh: sort the sections again
LOOKUP = 64  # more records to read than this: look for their kept pieces first


class MemoEntry(NamedTuple):
    sha256: str
    piece: bytes  # b'"filename":{record}' as it appears in repodata.json (ASCII)
    name: str  # the package name (which shard it belongs to)


class RecordMemo:
    """{filename: MemoEntry} of every published package of one subdir, with each
    section's filenames kept sorted (a one-package change is one insort, not a sort of
    the subdir), and the patched pieces of the last build (`patched`, filled by build)."""

    def __init__(self) -> None:
        self.entries: dict[str, MemoEntry] = {}
        self._order: dict[str, list[str]] | None = None  # {section: sorted filenames}
        # {filename: (sha256 + its patch operations' digest, patched piece or None: removed)}
        self.patched: dict[str, tuple[str, bytes | None]] = {}
        self.quiet = Quiet()  # what the run that filled it saw and published (quiet.py)
        self.last: tuple[list[str], list[str], list[str]] = ([], [], [])  # the last refresh's (added, removed, replaced)
        self._shard_keys: list[ShardKey] | None = None

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
        added, replaced = [], []
        store = cache.pieces()
        rows = ((r.path, r.name, r.index_json) for r in cache.records_for(misses))
        found = store.lookup(rows) if store is not None and len(misses) > LOOKUP else ((*r, None) for r in rows)
        fresh = []
        for path, name, text, piece in found:
            if piece is None:
                piece = repodata.piece_bytes(path, text)
                fresh.append((path, text, piece))
            if path in self.entries:
                changed.add(self.entries[path].name)
                if self.entries[path].sha256 != (keys[path] or ""):
                    replaced.append(path)
            else:
                added.append(path)
            self.entries[path] = MemoEntry(keys[path] or "", piece, name)
            changed.add(name)
        if store is not None and (fresh or (paths is None and gone)):
            store.save(fresh, keep=self.entries.keys() if paths is None and (gone or len(misses) > LOOKUP) else None)
        self._reorder(gone, added)
        self.last = (added, sorted(gone), replaced)
        if changed:
            self._shard_keys = None
        return changed

    def _reorder(self, gone: Collection[str], added: list[str]) -> None:
        if self._order is None or len(gone) + len(added) > RESORT:
            self._order = None
            return
        for fn in gone:
            order = self._order[section_of(fn) or ""]
            i = bisect.bisect_left(order, fn)
            if i < len(order) and order[i] == fn:
                del order[i]
        for fn in added:
            bisect.insort(self._order[section_of(fn) or ""], fn)

    def order(self) -> dict[str, list[str]]:
        """{"packages": [...], "packages.conda": [...]}: each section's filenames, sorted."""
        if self._order is None:
            order: dict[str, list[str]] = {"packages": [], "packages.conda": [], "": []}
            for fn in self.entries:
                order[section_of(fn) or ""].append(fn)
            for names in order.values():
                names.sort()
            self._order = order
        return self._order

    def digests(self) -> dict[str, str]:
        return {fn: entry.sha256 for fn, entry in self.entries.items()}

    def pieces(self) -> list[tuple[str, str]]:
        """(filename, record piece) sorted by filename: the input of build_repodata."""
        return sorted((fn, entry.piece.decode("ascii")) for fn, entry in self.entries.items())

    def shard_keys(self) -> list[ShardKey]:
        """Ordered by name then filename, for shards."""
        if self._shard_keys is None:
            self._shard_keys = sorted(ShardKey(entry.name, fn, entry.sha256) for fn, entry in self.entries.items())
        return self._shard_keys
