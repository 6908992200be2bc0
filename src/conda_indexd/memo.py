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
import sys
from collections.abc import Collection
from typing import Any, NamedTuple

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
        self._sections: dict[str, tuple[list[str], list[bytes]]] | None = None  # see sections()
        # {filename: (sha256 + its patch operations' digest, patched piece or None: removed)}
        self.patched: dict[str, tuple[str, bytes | None]] = {}
        self.quiet = Quiet()  # what the run that filled it saw and published (quiet.py)
        self.last: tuple[list[str], list[str], list[str]] = ([], [], [])  # the last refresh's (added, removed, replaced)
        self._shard_keys: list[ShardKey] | None = None
        self.shards: Any = None  # shardstore.Carried: what the last run's shard upkeep ended with

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
        before: dict[str, MemoEntry | None] = {}  # every filename touched, with its old entry
        for fn in gone:
            before[fn] = self.entries.pop(fn)
            changed.add(before[fn].name)  # type: ignore[union-attr]
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
            old = before[path] = self.entries.get(path)
            if old is not None:
                changed.add(old.name)
                if old.sha256 != (keys[path] or ""):
                    replaced.append(path)
            else:
                added.append(path)
            self.entries[path] = MemoEntry(keys[path] or "", piece, sys.intern(name))
            changed.add(name)
        if store is not None and (fresh or (paths is None and gone)):
            store.save(fresh, keep=self.entries.keys() if paths is None and (gone or len(misses) > LOOKUP) else None)
        self._update(before)
        self.last = (added, sorted(gone), replaced)
        return changed

    def _update(self, before: dict[str, MemoEntry | None]) -> None:
        """Keep the sorted sections and shard keys in step (a few changes: bisect; many:
        sorted again when next asked for)."""
        if len(before) > RESORT:
            self._sections = self._shard_keys = None
            return
        for fn, old in before.items():
            new = self.entries.get(fn)
            if self._sections is not None:
                names, pieces = self._sections[section_of(fn) or ""]
                i = bisect.bisect_left(names, fn)
                present = i < len(names) and names[i] == fn
                if new is None and present:
                    del names[i], pieces[i]
                elif new is not None and present:
                    pieces[i] = new.piece
                elif new is not None:
                    names.insert(i, fn)
                    pieces.insert(i, new.piece)
            if self._shard_keys is not None:
                keys = self._shard_keys
                if old is not None:
                    i = bisect.bisect_left(keys, ShardKey(old.name, fn, old.sha256))
                    if i < len(keys) and keys[i] == (old.name, fn, old.sha256):
                        del keys[i]
                if new is not None:
                    bisect.insort(keys, ShardKey(new.name, fn, new.sha256))

    def sections(self) -> dict[str, tuple[list[str], list[bytes]]]:
        """{section: (sorted filenames, their pieces)} for "packages" and "packages.conda"."""
        if self._sections is None:
            names: dict[str, list[str]] = {"packages": [], "packages.conda": [], "": []}
            for fn in self.entries:
                names[section_of(fn) or ""].append(fn)
            self._sections = {}
            for section, fns in names.items():
                fns.sort()
                self._sections[section] = (fns, [self.entries[fn].piece for fn in fns])
        return self._sections

    def order(self) -> dict[str, list[str]]:
        """{"packages": [...], "packages.conda": [...]}: each section's filenames, sorted."""
        return {section: names for section, (names, _) in self.sections().items()}

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
