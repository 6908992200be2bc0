"""The record memo: each published package's serialised repodata record, kept between
runs so a one-package change costs one record, not the whole subdir.

What the memo may assume (docs/architecture.md): an entry is valid while the package's
archive sha256 is unchanged, because the sha256 fixes every byte of the metadata the
record is built from. Pieces are also kept between processes (cache.pieces(), valid
for the exact cached index_json text; and the whole memo, pipeline/memofile.py), so a restart or
a one-shot run does not serialise unchanged records again. A memo is only ever
refreshed against the cache it was filled from: the owner drops it (starts the next run
without one) whenever a run fails, is cancelled, or rebuilds a damaged cache. That rule
lives in the daemon's SubdirState.

Memory: the pieces live in a heap file (pipeline/pieceheap.py); per record the memo keeps its
filename and four array slots, so a million records cost about 150 MB, not gigabytes.
"""

from __future__ import annotations

import bisect
import itertools
import json
import sys
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

from conda_indexd.caches.base import Pieces, RecordReader, RecordRow, ShardKey, SubdirCache
from conda_indexd.formats import repodata, revisions, timestamps
from conda_indexd.names import section_of
from conda_indexd.pipeline import forked
from conda_indexd.pipeline.attestations import Sidecars
from conda_indexd.pipeline.pieceheap import PieceHeap, Section, SectionView
from conda_indexd.pipeline.quiet import Quiet
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

RESORT = 256  # more changes than this in one refresh: merge the sections in one pass
BATCH = 2000  # pieces appended to the heap (and saved) at once
LOOKUP = 64  # more records to read than this: look for their kept pieces first
SECTIONS = ("packages", "packages.conda")
NO_SHA = bytes(32)  # a published row without a sha256 (always read again)


def _sha_bytes(sha: str | None) -> bytes:
    try:
        raw = bytes.fromhex(sha or "")
    except ValueError:
        return NO_SHA
    return raw if len(raw) == 32 and raw != NO_SHA else NO_SHA


class RecordMemo:
    """Every published package of one subdir: per section, sorted filenames with their
    sha256, package name and piece (in `heap`); the patched pieces of the last build
    (`patched`, filled by build); what the last run saw (`quiet`, `shards`, `last`)."""

    def __init__(self, folder: Path | None = None, *, heap: PieceHeap | None = None, stamped: bool = False) -> None:
        """`folder`: where the heap file lives (None: a temporary file); `stamped`: the
        pieces carry each record's indexed_timestamp (CEP-47)."""
        self.heap = heap if heap is not None else PieceHeap(folder)
        self.stamped = stamped
        self.v3: set[str] = set()  # CEP-48: filenames whose record needs the v3 map (revisions.required)
        self.flagged: Any = None  # CEP-47: the last run's timestamps.Flagged list (not saved: None after a load)
        self.sections = {s: Section() for s in SECTIONS}
        self.names: list[str] = []  # name ids -> package names
        self.name_ids: dict[str, int] = {}
        self._by_name: dict[str, list[str]] | None = {}  # see by_name (None: made on first use)
        # {filename: (sha256 + its patch operations' digest, patched piece or None: removed)}
        self.patched: dict[str, tuple[str, bytes | None]] = {}
        self.quiet = Quiet()  # what the run that filled it saw and published (pipeline/quiet.py)
        self.last: tuple[list[str], list[str], list[str]] = ([], [], [])  # the last refresh's (added, removed, replaced)
        self.shards: Any = None  # pipeline/shardstore.Carried: what the last run's shard upkeep ended with
        self.sidecars = Sidecars()  # the last look at the attestation sidecars (not saved: a new memo looks at all)
        self.loaded = False  # filled from a saved memo (pipeline/memofile.load)
        self.saved: tuple[str, str | None] | None = None  # (cache generation, quiet listing) when last saved (memofile)
        # the filenames whose entry was set or removed since the memo was last saved or
        # loaded (None: not known, or a bulk change or compaction: memofile writes it whole)
        self.since_saved: set[str] | None = None
        self.journal: Any = None  # pipeline/memofile.Journal: where the saved file ends, what it holds

    # --- reading -------------------------------------------------------------------

    def __len__(self) -> int:
        return sum(len(s) for s in self.sections.values())

    @property
    def by_name(self) -> dict[str, list[str]]:
        """Package name -> its filenames, sorted. A memo loaded from its file makes it
        from the sections on first use: a restart that finds nothing changed never does."""
        if self._by_name is None:
            by: dict[str, list[str]] = {}
            for s in self.sections.values():
                for fn, i in zip(s.fns, s.ids, strict=True):
                    by.setdefault(self.names[i], []).append(fn)
            for fns in by.values():
                fns.sort()
            self._by_name = by
        return self._by_name

    def _find(self, fn: str) -> tuple[Section, int] | None:
        section = section_of(fn)
        if section is None:
            return None
        s = self.sections[section]
        i = s.find(fn)
        return (s, i) if i >= 0 else None

    def __contains__(self, fn: object) -> bool:
        return isinstance(fn, str) and self._find(fn) is not None

    def filenames(self) -> Iterator[str]:
        for s in self.sections.values():
            yield from s.fns

    def sha256(self, fn: str) -> str:
        """The archive sha256 (hex; "" when the cache had none), KeyError when absent."""
        found = self._find(fn)
        if found is None:
            raise KeyError(fn)
        sha = found[0].sha(found[1])
        return "" if sha == NO_SHA else sha.hex()

    def entry(self, fn: str) -> tuple[bytes, int, int, int] | None:
        """(sha256 bytes, name id, heap offset, length) of `fn`, None when absent (memofile's journal)."""
        found = self._find(fn)
        if found is None:
            return None
        s, i = found
        return s.sha(i), s.ids[i], s.offs[i], s.lens[i]

    def piece(self, fn: str) -> bytes:
        found = self._find(fn)
        if found is None:
            raise KeyError(fn)
        s, i = found
        return self.heap.read(s.offs[i], s.lens[i])

    def items(self) -> Iterator[tuple[str, str]]:
        """(filename, sha256 hex or "") of every record, section by section."""
        for s in self.sections.values():
            shas = s.shas
            for i, fn in enumerate(s.fns):
                sha = shas[i * 32 : i * 32 + 32]
                yield fn, "" if sha == NO_SHA else sha.hex()

    def digests(self) -> dict[str, str]:
        return dict(self.items())

    def view(self, section: str, replace: dict[str, bytes | None] | None = None) -> SectionView:
        """One section of repodata.json as a stream (`replace`: patched pieces, None: left out)."""
        return SectionView(self.heap, self.sections[section], replace)

    def document(
        self,
        subdir: str,
        base_url: str | None,
        replace: dict[str, bytes | None] | None = None,
        *,
        all_v3: bool = False,
        message: str | None = None,
        v3_always: bool = False,
        relations: dict[str, str] | None = None,
    ) -> repodata.Document:
        """repodata.json; the records that need CEP-48's v3 map (all of them with
        `all_v3`: conda-index's --repodata-next) are only there, keyed by filename
        without extension, with info.repodata_revisions."""
        replace = replace or {}
        removed = sorted(fn for fn, p in replace.items() if p is None and fn in self)
        in_v3 = set(self.filenames()) if all_v3 else self.v3
        if not in_v3 and not v3_always:
            views = [self.view(s, {fn: p for fn, p in replace.items() if section_of(fn) == s}) for s in SECTIONS]
            return repodata.Document(subdir, views[0], views[1], base_url=base_url, removed=removed, relations=relations)
        legacy = {**replace, **dict.fromkeys(in_v3)}  # left out of packages / packages.conda
        views = [self.view(s, {fn: p for fn, p in legacy.items() if section_of(fn) == s}) for s in SECTIONS]
        pieces: dict[str, list[tuple[str, bytes]]] = {"conda": [], "tar.bz2": []}
        stamps: list[int] = []
        for fn in in_v3:
            piece = replace[fn] if fn in replace else self.piece(fn)
            where = revisions.v3_key(fn)
            if piece is None or where is None:
                continue
            section, stem = where
            body = piece[len(json.dumps(fn)) + 1 :]
            record = json.loads(body)
            value = record.get(timestamps.FIELD) if self.stamped else record.get("timestamp")  # CEP-48 / conda-index 0.13
            if isinstance(value, int) and not isinstance(value, bool):
                stamps.append(value)
            pieces[section].append((stem, json.dumps(stem).encode("ascii") + b":" + body))
        v3 = tuple([p for _, p in sorted(pieces[s])] for s in ("conda", "tar.bz2"))
        oldest, newest = timestamps.bounds(stamps)
        info = revisions.revision_info(sum(map(len, v3)), oldest, newest, message)
        return repodata.Document(subdir, views[0], views[1], base_url=base_url, removed=removed, v3=(v3[0], v3[1]), revisions=info, relations=relations)

    def pieces(self) -> list[tuple[str, str]]:
        """(filename, record piece) sorted by filename (small subdirs and tests)."""
        return sorted((fn, self.piece(fn).decode("ascii")) for fn in self.filenames())

    def name_of(self, fn: str) -> str | None:
        found = self._find(fn)
        return self.names[found[0].ids[found[1]]] if found is not None else None

    def shard_names(self) -> list[str]:
        return sorted(self.by_name)

    def shard_keys(self, names: Iterable[str] | None = None) -> Iterator[ShardKey]:
        """(name, filename, sha256) ordered by name then filename, of `names` (None: all)."""
        wanted = None if names is None else set(names)
        if wanted is None or len(wanted) > len(self.by_name) // 8:  # many: one pass over the arrays
            keys = []
            for s in self.sections.values():
                shas, ids, names_ = s.shas, s.ids, self.names
                for i, fn in enumerate(s.fns):
                    name = names_[ids[i]]
                    if wanted is None or name in wanted:
                        sha = shas[i * 32 : i * 32 + 32]
                        keys.append(ShardKey(name, fn, "" if sha == NO_SHA else sha.hex()))
            keys.sort()
            yield from keys
            return
        for name in sorted(wanted):
            for fn in self.by_name.get(name, ()):
                yield ShardKey(name, fn, self.sha256(fn))

    # --- updating ------------------------------------------------------------------

    def refresh(self, cache: SubdirCache, paths: Collection[str] | None = None, *, workers: int = 1) -> set[str]:
        """Bring the entries in line with the cache; returns the names whose records
        were added, replaced or removed. `paths`: the only files that can have changed
        since the last refresh (None: look at every published package). A new memo of a
        big subdir is filled by `workers` forked processes (pipeline/forked.py)."""
        if paths is None and not len(self) and workers > 1 and (opener := cache.fork_reader()) is not None:
            filled = self._fill(cache, opener, workers)
            if filled is not None:
                return filled
        seen = {s: bytearray(len(sec) if paths is None else 0) for s, sec in self.sections.items()}
        returned: set[str] = set()
        cursor = dict.fromkeys(SECTIONS, 0)
        misses: dict[str, str] = {}  # filename -> its sha256 (hex, "" for none)
        for fn, sha in cache.published_keys(paths):
            section = section_of(fn)
            if section is None:
                continue
            if paths is not None:
                returned.add(fn)
            s = self.sections[section]
            i = cursor[section]
            if not (i < len(s.fns) and s.fns[i] == fn):
                i = s.find(fn)
            if i >= 0:
                cursor[section] = i + 1
                if paths is None:
                    seen[section][i] = 1
                raw = _sha_bytes(sha)
                if raw != NO_SHA and s.shas[i * 32 : i * 32 + 32] == raw:
                    continue
            misses[fn] = sha or ""
        gone: list[str] = []
        if paths is None:
            for section, flags in seen.items():
                fns = self.sections[section].fns
                i = flags.find(0)
                while i >= 0:
                    gone.append(fns[i])
                    i = flags.find(0, i + 1)
        else:
            gone = [fn for fn in paths if fn not in returned and fn in self]
        del seen, returned
        changed: set[str] = set()
        bulk = len(misses) + len(gone) > RESORT
        if len(self):
            added = [fn for fn in misses if fn not in self]
            replaced = [fn for fn in misses if fn in self and self.sha256(fn) != (misses[fn] if _sha_bytes(misses[fn]) != NO_SHA else "")]
        else:  # a new memo (start-up): everything is added
            added, replaced = list(misses), []
        drop = set(gone) | (set(misses) - set(added))
        for fn in sorted(drop):
            entry = self._find(fn)
            if entry is not None:
                changed.add(self.names[entry[0].ids[entry[1]]])
        self.v3.difference_update(drop)
        self._drop(drop, bulk)
        pending = {s: Section() for s in SECTIONS}
        fresh: list[tuple[str, str, bytes]] = []
        store = cache.pieces()
        # a piece is made from, and kept for, its source: the index_json text and, stamped,
        # the record's indexed_timestamp (fixed for the archive's sha256, like the text)
        batch: list[tuple[str, str, bytes]] = []
        for path, name, piece, v3, made in serialise(cache.records_for(list(misses)), store, self.stamped, lookup=len(misses) > LOOKUP):
            if made is not None:
                fresh.append((path, made, piece))
            if v3:
                self.v3.add(path)
            else:
                self.v3.discard(path)
            batch.append((path, name, piece))
            if len(batch) >= BATCH:
                self._add(batch, misses, changed, pending if bulk else None)
                batch = []
            if len(fresh) >= BATCH and store is not None:
                store.save(fresh)
                fresh = []
        self._add(batch, misses, changed, pending if bulk else None)
        if bulk:
            for section, new in pending.items():
                self.sections[section] = self.sections[section].merged(new)
            for fns in (self._by_name or {}).values():
                fns.sort()
        if store is not None and (fresh or (paths is None and gone)):
            store.save(fresh, keep=self.filenames() if paths is None and (gone or len(misses) > LOOKUP) else None)
        self.last = (added, sorted(gone), replaced)
        self.compact(force=len(misses) > RESORT)  # pieces arrive in the cache's order: sort them once
        return changed

    def _fill(self, cache: SubdirCache, opener: Callable[[], RecordReader], workers: int) -> set[str] | None:
        """A new memo from every published record, serialised in forked workers a batch at
        a time (None: too few records, refresh them here). Never holds more than a few
        batches: the keys are streamed from the cache, the pieces go to the heap."""
        keys = cache.published_keys()
        head = list(itertools.islice(keys, forked.POOL_FROM))
        if len(head) < forked.POOL_FROM:
            return None
        store = cache.pieces()
        changed: set[str] = set()
        added: list[str] = []
        pending = {s: Section() for s in SECTIONS}
        wanted = ((fn, sha or "") for fn, sha in itertools.chain(head, keys) if section_of(fn) is not None)
        del head
        failed = made_any = False
        with forked.Pool(opener, workers, self.stamped) as pool:
            for batch, result in pool.map(_serialise_batch, forked.batches(wanted, BATCH)):
                paths = [fn for fn, _ in batch]
                if isinstance(result, BaseException):
                    if not failed:
                        log.warning("a record worker failed; serialising its records in this process", error=repr(result))
                        failed = True
                    result = list(serialise(cache.records_for(paths), store, self.stamped, lookup=store is not None))
                added += paths
                for path, _, _, v3, _ in result:
                    if v3:
                        self.v3.add(path)
                self._add([(path, name, piece) for path, name, piece, _, _ in result], dict(batch), changed, pending)
                fresh = [(path, made, piece) for path, _, piece, _, made in result if made is not None]
                if store is not None and fresh:
                    store.save(fresh)
                    made_any = True
        for section, new in pending.items():
            self.sections[section] = self.sections[section].merged(new)
        for fns in (self._by_name or {}).values():
            fns.sort()
        if store is not None and made_any:
            store.save((), keep=self.filenames())
        self.last = (added, [], [])
        self.compact(force=True)  # pieces arrive in the cache's order: sort them once
        return changed

    def _add(self, batch: list[tuple[str, str, bytes]], misses: dict[str, str], changed: set[str], pending: dict[str, Section] | None) -> None:
        offsets = self.heap.append([piece for _, _, piece in batch])
        for (path, name, piece), off in zip(batch, offsets, strict=True):
            section = section_of(path)
            if section is None:
                continue
            name = sys.intern(name)
            changed.add(name)
            name_id = self.name_ids.get(name)
            if name_id is None:
                name_id = self.name_ids[name] = len(self.names)
                self.names.append(name)
            sha = _sha_bytes(misses.get(path))
            if pending is None:
                self.sections[section].insert(path, sha, name_id, off, len(piece))
                if self._by_name is not None:
                    bisect.insort(self._by_name.setdefault(name, []), path)
                if self.since_saved is not None:
                    self.since_saved.add(path)
            else:
                self.since_saved = None
                pending[section].append(path, sha, name_id, off, len(piece))
                if self._by_name is not None:
                    self._by_name.setdefault(name, []).append(path)  # sorted once the bulk refresh has merged

    def _remove(self, fn: str) -> None:
        found = self._find(fn)
        if found is None:
            return
        s, i = found
        name = self.names[s.ids[i]]
        s.delete(i)
        self._unname(name, fn)
        if self.since_saved is not None:
            self.since_saved.add(fn)

    def _unname(self, name: str, fn: str) -> None:
        if self._by_name is None:
            return  # made from the sections when first used
        fns = self._by_name[name]
        fns.remove(fn)
        if not fns:
            del self._by_name[name]

    def _drop(self, drop: set[str], bulk: bool) -> None:
        """Remove these filenames' entries: one by one, or (`bulk`) each section rebuilt once."""
        if bulk:
            self._drop_bulk(drop)
        else:
            for fn in drop:
                self._remove(fn)

    def _drop_bulk(self, drop: set[str]) -> None:
        if drop:
            self.since_saved = None
        for section, s in self.sections.items():
            mine = {fn for fn in drop if section_of(fn) == section}
            if not mine:
                continue
            for fn in mine:
                i = s.find(fn)
                if i >= 0:
                    self._unname(self.names[s.ids[i]], fn)
            self.sections[section] = s.without(mine)

    def live_bytes(self) -> int:
        return sum(sum(s.lens) + len(s) for s in self.sections.values())

    def compact(self, force: bool = False) -> None:
        """Rewrite the heap in sorted order once it holds twice what is live (and more
        than 16 MB of dead pieces): sections are then read in a few long runs."""
        live = self.live_bytes()
        if not force and self.heap.size <= max(2 * live, live + (16 << 20)):
            return
        old = self.heap
        new = PieceHeap(old.folder)
        for s in self.sections.values():
            at = new.size
            for chunk in old.runs(s, 0, len(s)):
                new.append_raw(chunk)
            s.placed(at)
        self.heap = new
        old.close()
        self.since_saved = None  # every offset moved

    def restore(self, entries: dict[str, tuple[bytes, int, int, int] | None]) -> None:
        """Set these filenames' entries as a saved journal recorded them (pipeline/memofile.py):
        (sha256, name id, heap offset, length), None: removed. Relies on the name ids
        being known and the pieces lying in this memo's heap; raises ValueError otherwise."""
        size, names = self.heap.size, len(self.names)
        for fn, entry in entries.items():
            if section_of(fn) is None or (entry is not None and (len(entry[0]) != 32 or entry[1] >= names or entry[2] + entry[3] > size)):
                raise ValueError(f"journal entry out of range: {fn}")
        drop = {fn for fn in entries if fn in self}
        bulk = len(entries) > RESORT
        self._drop(drop, bulk)
        pending = {s: Section() for s in SECTIONS}
        for fn, entry in entries.items():
            if entry is None:
                continue
            sha, name_id, off, length = entry
            section = section_of(fn) or ""
            if bulk:
                pending[section].append(fn, sha, name_id, off, length)
                if self._by_name is not None:
                    self._by_name.setdefault(self.names[name_id], []).append(fn)
            else:
                self.sections[section].insert(fn, sha, name_id, off, length)
                if self._by_name is not None:
                    bisect.insort(self._by_name.setdefault(self.names[name_id], []), fn)
        if bulk:
            for name, new in pending.items():
                self.sections[name] = self.sections[name].merged(new)
            for fns in (self._by_name or {}).values():
                fns.sort()


Serialised = tuple[str, str, bytes, bool, str | None]  # (path, name, piece, needs the v3 map, its source when made now)


def serialise(rows: Iterable[RecordRow], store: Pieces | None, stamped: bool, *, lookup: bool) -> Iterator[Serialised]:
    """Each published record's piece: the kept one (`lookup`) when it was made from the
    same source, else made now. A piece is made from, and kept for, its source: the
    index_json text and, `stamped`, the record's indexed_timestamp (fixed for the
    archive's sha256, like the text)."""
    sources = ((r.path, r.name, timestamps.source(r.index_json, r.indexed_timestamp, stamped)) for r in rows)
    found = store.lookup(sources) if store is not None and lookup else ((*r, None) for r in sources)
    for path, name, text, piece in found:
        if stamped and text.endswith("\0"):
            continue  # no indexed_timestamp yet (a standby warming while the leader stamps): not published
        made = None
        if piece is None:
            piece, made = repodata.piece_bytes(path, text), text
        v3 = revisions.may_need_v3(text) and revisions.required(json.loads(timestamps.split(text)[0])) == revisions.V3
        yield path, name, piece, v3, made


def _serialise_batch(keys: list[tuple[str, str]]) -> list[Serialised]:
    """A forked worker's batch of (path, sha256) (pipeline/forked.py): its records read and serialised there."""
    reader = forked.reader()
    return list(serialise(reader.records_for([path for path, _ in keys]), reader.kept_pieces(), forked.context(), lookup=True))


def from_pieces(pieces: Iterable[tuple[str, str]]) -> RecordMemo:
    """A memo of (filename, record piece) pairs with no cache behind it (build_outputs)."""
    memo = RecordMemo()
    items = [(fn, p.encode("ascii")) for fn, p in pieces if section_of(fn) is not None]
    memo._add([(fn, fn.rsplit("-", 2)[0], p) for fn, p in items], {}, set(), None)
    return memo
