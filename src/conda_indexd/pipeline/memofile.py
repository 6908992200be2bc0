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
"""

from __future__ import annotations

import contextlib
import os

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
VERSION = 4  # 3: `stamped` (CEP-47 indexed_timestamp in the pieces); 4: `v3` (CEP-48)


def save(cache: SubdirCache, memo: RecordMemo) -> None:
    folder = cache.memo_folder()
    generation = cache.generation()
    if folder is None or generation is None or memo.heap.folder != folder:
        return
    sections = {name: [s.fns, bytes(s.shas), s.ids.tobytes(), s.offs.tobytes(), s.lens.tobytes(), bytes(s.brk)] for name, s in memo.sections.items()}
    quiet = memo.quiet
    outputs = [quiet.outputs[0], [list(f) for f in quiet.outputs[1]]] if quiet.outputs is not None else None
    instructions = [list(quiet.instructions[0]) if quiet.instructions[0] is not None else None, quiet.instructions[1]] if quiet.instructions else None
    data = msgpack.packb(
        {
            "version": VERSION,
            "stamped": memo.stamped,
            "v3": sorted(memo.v3),
            "generation": generation,
            "heap": memo.heap.ident,
            "names": memo.names,
            "sections": sections,
            "patched": {fn: list(v) for fn, v in memo.patched.items()},
            "quiet": [quiet.listing, outputs, quiet.collect_at, instructions],
        }
    )
    tmp = folder / temp_file_name(INDEX_FILE)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, folder / INDEX_FILE)
        memo.saved = (generation, quiet.listing)
    except OSError as exc:
        log.warning("record memo not saved", path=str(folder / INDEX_FILE), error=str(exc))
        with contextlib.suppress(OSError):
            tmp.unlink()


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
        state = msgpack.unpackb(path.read_bytes(), strict_map_key=False)
        if state.get("version") != VERSION or state.get("generation") != cache.generation() or state.get("stamped") is not stamped:
            return None
        memo = RecordMemo(folder, heap=PieceHeap(folder, reuse=state["heap"]), stamped=stamped)
        _fill(memo, state)
    except FileNotFoundError:
        return None
    except CacheError:  # damage found (and moved aside) while asking: the caller's
        raise
    except Exception as exc:  # noqa: BLE001 - a cache of a cache: anything unreadable starts again
        log.debug("saved record memo not used", path=str(path), error=f"{type(exc).__name__}: {exc}")
        return None
    memo.loaded = True
    memo.saved = (state["generation"], memo.quiet.listing)
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
        for fn, i in zip(s.fns, s.ids, strict=True):
            memo.by_name.setdefault(memo.names[i], []).append(fn)
    for fns in memo.by_name.values():
        fns.sort()
    if end > memo.heap.size:
        raise ValueError("heap file is short")
    memo.patched = {fn: (str(v[0]), v[1]) for fn, v in state["patched"].items()}
    memo.v3 = {str(fn) for fn in state["v3"]}
    listing, outputs, collect_at, *rest = state["quiet"]  # `instructions` since 2026-12: absent before
    instructions = rest[0] if rest else None
    memo.quiet = Quiet(listing, (outputs[0], tuple(FileState(*f) for f in outputs[1])) if outputs is not None else None, float(collect_at),
                       (FileState(*instructions[0]) if instructions[0] is not None else None, str(instructions[1])) if instructions else None)  # fmt: skip
