"""Serialised record pieces on disk, so a subdir's records never sit in the Python heap
as ~100,000 bytes objects (bounded memory at a million records).

A heap file holds pieces each followed by a comma, appended as records change; the
memo (pipeline/memo.py) keeps only (offset, length) per record. A section of repodata.json is
then a few large reads: runs of consecutive records that are also consecutive in the
file (the heap is rewritten in sorted order when it has grown to twice what is live,
so runs are long). Reads use pread into bytes of at most READ bytes: nothing is mapped,
so the pieces count against the page cache, not the process.

The file lives beside the cache when there is a folder for it (then the memo can be
kept between processes, pipeline/memofile.py), else it is an anonymous temporary file.
"""

from __future__ import annotations

import bisect
import os
import secrets
import tempfile
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from conda_indexd.names import temp_file_name

HEAP_FILE = "conda-indexd-memo.heap"
READ = 4 << 20  # bytes read (and yielded) at once
HEAD = 32  # a random identity, written first: a saved index names the heap it points into


class PieceHeap:
    """An append-only file of pieces (each + b","), with `ident` to pair it with a saved index."""

    def __init__(self, folder: Path | None, *, reuse: str | None = None):
        """`folder`: where the file lives (None: an anonymous temporary file);
        `reuse`: the identity of an existing heap in `folder` to open instead of a new one."""
        self.folder = folder
        self.path = folder / HEAP_FILE if folder is not None else None
        if reuse is not None and self.path is not None:
            self.file: BinaryIO = open(self.path, "r+b", buffering=0)  # noqa: SIM115 - closed with the memo
            if self.file.read(HEAD).decode("ascii", "replace") != reuse:
                self.file.close()
                raise ValueError("another heap")
            self.ident = reuse
        else:
            self.ident = secrets.token_hex(HEAD // 2)
            self.file = self._new_file()
        self.size = os.fstat(self.file.fileno()).st_size

    def _new_file(self) -> BinaryIO:
        f: BinaryIO
        if self.path is None:
            f = tempfile.TemporaryFile()  # noqa: SIM115
        else:
            tmp = self.path.with_name(temp_file_name(HEAP_FILE))
            f = open(tmp, "w+b", buffering=0)  # noqa: SIM115
            os.replace(tmp, self.path)  # other memos keep their own open file (and offsets)
        f.write(self.ident.encode("ascii"))
        return f

    def append(self, pieces: Sequence[bytes]) -> list[int]:
        """Write pieces at the end of the file in one write; returns their offsets."""
        self.size = at = os.fstat(self.file.fileno()).st_size  # another memo may have appended
        offsets = []
        for piece in pieces:
            offsets.append(at)
            at += len(piece) + 1
        if pieces:
            data = b",".join(pieces) + b","
            os.pwrite(self.file.fileno(), data, self.size)
            self.size += len(data)
        return offsets

    def append_raw(self, chunk: bytes) -> None:
        """Append bytes that are already pieces each followed by a comma."""
        self.size = os.fstat(self.file.fileno()).st_size
        os.pwrite(self.file.fileno(), chunk, self.size)
        self.size += len(chunk)

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.file.fileno(), length, offset)
        if len(data) != length:
            raise OSError(f"record pieces file {self.path or '(temporary)'} is short")
        return data

    def runs(self, section: Section, start: int, stop: int) -> Iterator[bytes]:
        """The pieces [start, stop) of `section` joined by commas, with a trailing comma,
        in chunks of at most READ bytes (a chunk may end inside a piece)."""
        fd = self.file.fileno()
        offs, lens, brk = section.offs, section.lens, section.brk
        i = start
        while i < stop:
            j = brk.find(1, i + 1, stop)  # the next record that does not follow in the file
            j = stop if j < 0 else j
            at, end = offs[i], offs[j - 1] + lens[j - 1] + 1
            while at < end:
                data = os.pread(fd, min(READ, end - at), at)
                if not data:
                    raise OSError(f"record pieces file {self.path or '(temporary)'} is short")
                yield data
                at += len(data)
            i = j

    def close(self) -> None:
        self.file.close()


class Section:
    """One section's records ("packages" or "packages.conda"), sorted by filename, as
    parallel compact arrays: filename, sha256 (32 bytes each), name id, piece offset and
    length in the heap, and `brk`: 1 where a record's piece does not directly follow the
    previous record's in the heap (a section is read in runs between them)."""

    def __init__(self) -> None:
        self.fns: list[str] = []
        self.shas = bytearray()
        self.ids = array("I")
        self.offs = array("Q")
        self.lens = array("I")
        self.brk = bytearray()

    def __len__(self) -> int:
        return len(self.fns)

    def find(self, fn: str) -> int:
        """The index of `fn`, or -1."""
        i = bisect.bisect_left(self.fns, fn)
        return i if i < len(self.fns) and self.fns[i] == fn else -1

    def sha(self, i: int) -> bytes:
        return bytes(self.shas[i * 32 : i * 32 + 32])

    def _follows(self, i: int) -> int:
        """brk[i]: 0 when record i's piece directly follows record i-1's."""
        return 0 if i > 0 and self.offs[i] == self.offs[i - 1] + self.lens[i - 1] + 1 else 1

    def delete(self, i: int) -> None:
        del self.fns[i], self.ids[i], self.offs[i], self.lens[i], self.brk[i]
        del self.shas[i * 32 : i * 32 + 32]
        if i < len(self.fns):
            self.brk[i] = self._follows(i)

    def insert(self, fn: str, sha: bytes, name_id: int, off: int, length: int) -> None:
        i = bisect.bisect_left(self.fns, fn)
        self.fns.insert(i, fn)
        self.shas[i * 32 : i * 32] = sha
        self.ids.insert(i, name_id)
        self.offs.insert(i, off)
        self.lens.insert(i, length)
        self.brk.insert(i, self._follows(i))
        if i + 1 < len(self.fns):
            self.brk[i + 1] = self._follows(i + 1)

    def append(self, fn: str, sha: bytes | bytearray, name_id: int, off: int, length: int) -> None:
        """Add at the end (`merged` sorts unsorted ones)."""
        self.fns.append(fn)
        self.shas += sha
        self.ids.append(name_id)
        self.offs.append(off)
        self.lens.append(length)
        self.brk.append(self._follows(len(self.fns) - 1))

    def _take(self, other: Section, i: int) -> None:
        self.append(other.fns[i], other.shas[i * 32 : i * 32 + 32], other.ids[i], other.offs[i], other.lens[i])

    def without(self, drop: set[str]) -> Section:
        out = Section()
        for i, fn in enumerate(self.fns):
            if fn not in drop:
                out._take(self, i)
        return out

    def merged(self, new: Section) -> Section:
        """This section and the unsorted `new` entries (none already here), sorted."""
        if not new.fns:
            return self
        order = sorted(range(len(new.fns)), key=new.fns.__getitem__)
        out = Section()
        i, n = 0, len(self.fns)
        for j in order:
            fn = new.fns[j]
            while i < n and self.fns[i] < fn:
                out._take(self, i)
                i += 1
            out._take(new, j)
        while i < n:
            out._take(self, i)
            i += 1
        return out

    def placed(self, start: int) -> None:
        """The pieces now lie in order from heap offset `start` (after a compaction)."""
        offs, lens, at = self.offs, self.lens, start
        for i in range(len(offs)):
            offs[i] = at
            at += lens[i] + 1
        self.brk = bytearray(len(offs))
        if offs:
            self.brk[0] = 1


class SectionView:
    """A section of repodata.json streamed from the heap (repodata.Document's `Pieces`),
    with some records' pieces replaced (patched) or left out (None)."""

    def __init__(self, heap: PieceHeap, section: Section, replace: dict[str, bytes | None] | None = None):
        self.heap = heap
        self.section = section
        self.replace = sorted((i, p) for fn, p in (replace or {}).items() if (i := section.find(fn)) >= 0)
        self.count = len(section) - sum(1 for _, p in self.replace if p is None)
        pieces = sum(section.lens) + sum((len(p) if p is not None else 0) - section.lens[i] for i, p in self.replace)
        self.size = pieces + max(self.count - 1, 0)  # and the commas between them

    def __len__(self) -> int:
        return self.count

    def chunks(self) -> Iterator[bytes]:
        """The pieces joined by commas (no trailing comma), in chunks of at most READ bytes."""
        s = self.section
        pending = b""
        at = 0
        for i, piece in [*self.replace, (len(s), None)]:
            for chunk in self.heap.runs(s, at, i):
                if pending:
                    yield pending
                pending = chunk
            if piece is not None and i < len(s):
                if pending:
                    yield pending
                pending = piece + b","
            at = i + 1
        if pending:
            yield pending[:-1]
