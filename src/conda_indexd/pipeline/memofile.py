"""The record memo kept between processes (a restart or a one-shot re-run does
not read and serialise every record again).

`.cache/conda-indexd-memo.idx` beside cache.db holds the memo's arrays, its quiet
state and patched pieces, the identity of the heap file its offsets point into, and
the cache's `generation()` when it was saved. It is used only while that generation is
unchanged: conda-index writes records with INSERT OR REPLACE, so any record it (or
anything else) wrote since moves the generation, and the memo is rebuilt from the cache
rows as before (conda-index's rows win). It is a cache of a cache: unreadable or
foreign means "start again", never an error. Nothing here is fsynced: a file lost in a
crash only costs the slow start.

The file is a snapshot followed by a journal: a header (MAGIC, a random id of this
snapshot), then frames of (length, crc32, msgpack). The first frame is the whole memo;
each later one is what one save changed since the save before it (the entries set or
removed with their array slots, the new package names, the patched pieces and v3
filenames that changed, the quiet state) and the cache generation it was saved at. A
save appends one frame (the memo tracks what changed: RecordMemo.since_saved) when the
file is still the one this memo last wrote (same id, same length) and the journal stays
small against the snapshot; a bulk change, a heap compaction, or anything else writes
a new snapshot. Loading replays the frames in order and uses the result only when the
last frame's generation is the cache's. A frame that is short or fails its crc ends
the journal there: the frames before it are whole, and its own generation was newer,
so the memo is then older than the cache and is rebuilt.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from conda_indexd.caches.base import CacheError, SubdirCache
from conda_indexd.names import temp_file_name
from conda_indexd.pipeline.memo import SECTIONS, RecordMemo
from conda_indexd.pipeline.pieceheap import PieceHeap, Section
from conda_indexd.pipeline.quiet import Quiet
from conda_indexd.stores.base import FileState
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

INDEX_FILE = "conda-indexd-memo.idx"
VERSION = 5  # 3: `stamped` (CEP-47 indexed_timestamp in the pieces); 4: `v3` (CEP-48); 5: snapshot + journal
MAGIC = b"CIDXMEMO"
HEADER = len(MAGIC) + 16  # MAGIC and the snapshot's id
FRAME = struct.Struct("<II")  # payload length, crc32 of the payload
JOURNAL_SHARE = 4  # a new snapshot once the journal is over 1/JOURNAL_SHARE of it ...
JOURNAL_MIN = 1 << 20  # ... and over this many bytes


@dataclass
class Journal:
    """What the saved file holds, as this memo last wrote or read it."""

    ident: bytes  # the snapshot's id (in the header)
    end: int  # the file's length after the last frame
    snapshot: int  # bytes of the snapshot frame
    names: int  # package names saved
    patched: dict[str, tuple[str, bytes | None]] = field(default_factory=dict)  # memo.patched as saved
    v3: set[str] = field(default_factory=set)  # memo.v3 as saved


def frame(payload: bytes) -> bytes:
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def frames(data: bytes, start: int) -> Iterator[tuple[bytes, int]]:
    """(payload, offset after it) of each whole frame from `start`; stops at the first
    one that is short or fails its crc (a torn tail)."""
    at = start
    while at + FRAME.size <= len(data):
        length, crc = FRAME.unpack_from(data, at)
        end = at + FRAME.size + length
        if end > len(data):
            return
        payload = data[at + FRAME.size : end]
        if zlib.crc32(payload) != crc:
            return
        yield payload, end
        at = end


def _quiet(quiet: Quiet) -> list[Any]:
    outputs = [quiet.outputs[0], [list(f) for f in quiet.outputs[1]]] if quiet.outputs is not None else None
    instructions = [list(quiet.instructions[0]) if quiet.instructions[0] is not None else None, quiet.instructions[1]] if quiet.instructions else None
    return [quiet.listing, outputs, quiet.collect_at, instructions]


def _snapshot(memo: RecordMemo, generation: str) -> bytes:
    sections = {name: [s.fns, bytes(s.shas), s.ids.tobytes(), s.offs.tobytes(), s.lens.tobytes(), bytes(s.brk)] for name, s in memo.sections.items()}
    return msgpack.packb(
        {
            "version": VERSION,
            "stamped": memo.stamped,
            "v3": sorted(memo.v3),
            "generation": generation,
            "heap": memo.heap.ident,
            "names": memo.names,
            "sections": sections,
            "patched": {fn: list(v) for fn, v in memo.patched.items()},
            "quiet": _quiet(memo.quiet),
        }
    )


def _change(memo: RecordMemo, journal: Journal, changed: set[str], generation: str) -> bytes:
    """One journal frame's payload: what changed since `journal` was written."""
    entries = {fn: (list(e) if (e := memo.entry(fn)) is not None else None) for fn in sorted(changed)}
    patched, saved = memo.patched, journal.patched
    return msgpack.packb(
        {
            "generation": generation,
            "heap": memo.heap.ident,
            "names": [journal.names, memo.names[journal.names :]],
            "entries": entries,
            "patched": [{fn: list(v) for fn, v in patched.items() if saved.get(fn) != v}, sorted(saved.keys() - patched.keys())],
            "v3": [sorted(memo.v3 - journal.v3), sorted(journal.v3 - memo.v3)],
            "quiet": _quiet(memo.quiet),
        }
    )


def _appendable(path: Path, journal: Journal) -> bool:
    """The file is still the one `journal` describes (no other process or memo wrote it since)."""
    try:
        with open(path, "rb") as f:
            return os.fstat(f.fileno()).st_size == journal.end and f.read(HEADER) == MAGIC + journal.ident
    except OSError:
        return False


def save(cache: SubdirCache, memo: RecordMemo) -> None:
    folder = cache.memo_folder()
    generation = cache.generation()
    if folder is None or generation is None or memo.heap.folder != folder:
        return
    path = folder / INDEX_FILE
    journal, changed = memo.journal, memo.since_saved
    try:
        if isinstance(journal, Journal) and changed is not None and _appendable(path, journal):
            data = frame(_change(memo, journal, changed, generation))
            if journal.end + len(data) - HEADER - journal.snapshot <= max(journal.snapshot // JOURNAL_SHARE, JOURNAL_MIN):
                with open(path, "ab") as f:
                    f.write(data)
                journal.end += len(data)
                _saved(memo, journal, generation)
                return
        _write_snapshot(path, memo, generation)
    except OSError as exc:
        log.warning("record memo not saved", path=str(path), error=str(exc))
        memo.journal = None  # the next save writes a snapshot


def _write_snapshot(path: Path, memo: RecordMemo, generation: str) -> None:
    ident = secrets.token_bytes(16)
    snapshot = frame(_snapshot(memo, generation))
    tmp = path.with_name(temp_file_name(INDEX_FILE))
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + ident)
            f.write(snapshot)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _saved(memo, Journal(ident, HEADER + len(snapshot), len(snapshot), 0), generation)


def _saved(memo: RecordMemo, journal: Journal, generation: str) -> None:
    """The memo is now what the file says: later changes go into the journal."""
    journal.names = len(memo.names)
    journal.patched = dict(memo.patched)
    journal.v3 = set(memo.v3)
    memo.journal = journal
    memo.since_saved = set()
    memo.saved = (generation, memo.quiet.listing)


def forget(cache: SubdirCache) -> None:
    """Remove the saved memo (the next process builds one from the cache rows)."""
    folder = cache.memo_folder()
    if folder is not None:
        with contextlib.suppress(OSError):
            (folder / INDEX_FILE).unlink()


def load(cache: SubdirCache, stamped: bool = False) -> RecordMemo | None:
    """The saved memo, if it is still the cache's and its pieces are `stamped` as asked
    (else None: build one from the rows)."""
    folder = cache.memo_folder()
    if folder is None:
        return None
    path = folder / INDEX_FILE
    try:
        data = path.read_bytes()
        if data[: len(MAGIC)] != MAGIC:
            return None
        found = frames(data, HEADER)
        first = next(found, None)
        if first is None:
            return None
        state = msgpack.unpackb(first[0], strict_map_key=False)
        if state.get("version") != VERSION or state.get("stamped") is not stamped:
            return None
        changes = [(msgpack.unpackb(payload, strict_map_key=False), end) for payload, end in found]
        generation = changes[-1][0]["generation"] if changes else state["generation"]
        if generation != cache.generation():
            return None
        memo = RecordMemo(folder, heap=PieceHeap(folder, reuse=state["heap"]), stamped=stamped)
        _fill(memo, state)
        _replay(memo, [c for c, _ in changes])
    except FileNotFoundError:
        return None
    except CacheError:  # damage found (and moved aside) while asking: the caller's
        raise
    except Exception as exc:  # noqa: BLE001 - a cache of a cache: anything unreadable starts again
        log.debug("saved record memo not used", path=str(path), error=f"{type(exc).__name__}: {exc}")
        return None
    memo.loaded = True
    end = changes[-1][1] if changes else first[1]
    _saved(memo, Journal(data[len(MAGIC) : HEADER], end, first[1] - HEADER, 0), generation)
    return memo


def _fill(memo: RecordMemo, state: dict) -> None:  # type: ignore[type-arg]
    memo.names = [str(n) for n in state["names"]]
    memo.name_ids = {n: i for i, n in enumerate(memo.names)}
    end = 0
    for name in SECTIONS:
        fns, shas, ids, offs, lens, brk = state["sections"][name]
        s = Section()
        s.fns, s.shas, s.brk = list(fns), bytearray(shas), bytearray(brk)
        s.ids.frombytes(ids)
        s.offs.frombytes(offs)
        s.lens.frombytes(lens)
        if not (len(s.fns) == len(s.ids) == len(s.offs) == len(s.lens) == len(s.brk) == len(s.shas) // 32):
            raise ValueError("arrays of different lengths")
        if s.fns and max(s.ids) >= len(memo.names):
            raise ValueError("unknown name id")
        if s.fns:
            end = max(end, max(o + n for o, n in zip(s.offs, s.lens, strict=True)))
        memo.sections[name] = s
    memo._by_name = None  # made from the sections when first used (RecordMemo.by_name)
    if end > memo.heap.size:
        raise ValueError("heap file is short")
    memo.patched = {fn: (str(v[0]), v[1]) for fn, v in state["patched"].items()}
    memo.v3 = {str(fn) for fn in state["v3"]}
    memo.quiet = _unquiet(state["quiet"])


def _unquiet(saved: list[Any]) -> Quiet:
    listing, outputs, collect_at, instructions = saved
    return Quiet(listing, (outputs[0], tuple(FileState(*f) for f in outputs[1])) if outputs is not None else None, float(collect_at),
                 (FileState(*instructions[0]) if instructions[0] is not None else None, str(instructions[1])) if instructions else None)  # fmt: skip


def _replay(memo: RecordMemo, changes: list[dict[str, Any]]) -> None:
    """Apply the journal's frames in order: the last one of each filename's entries wins,
    and they are set in one pass (RecordMemo.restore)."""
    entries: dict[str, tuple[bytes, int, int, int] | None] = {}
    for change in changes:
        if change["heap"] != memo.heap.ident:
            raise ValueError("a journal frame of another heap")
        start, names = change["names"]
        if start != len(memo.names):
            raise ValueError("journal names out of order")
        for name in names:
            memo.name_ids[str(name)] = len(memo.names)
            memo.names.append(str(name))
        for fn, entry in change["entries"].items():
            entries[str(fn)] = (bytes(entry[0]), int(entry[1]), int(entry[2]), int(entry[3])) if entry is not None else None
        upd, gone = change["patched"]
        for fn in gone:
            memo.patched.pop(fn, None)
        memo.patched.update({str(fn): (str(v[0]), v[1]) for fn, v in upd.items()})
        added, removed = change["v3"]
        memo.v3.difference_update(removed)
        memo.v3.update(map(str, added))
        memo.quiet = _unquiet(change["quiet"])
    memo.restore(entries)
