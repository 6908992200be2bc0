"""Pure functions from cache rows to the bytes of repodata.json and friends (docs/spec §2, §6.2).

The output equals conda-index 0.13's `json.dumps(repodata, sort_keys=True,
separators=(",", ":"))`. It is assembled from per-record pieces: `json.dumps` with
sorted keys is compositional, so the document can be streamed from records serialised
one at a time (and, later, kept serialised between runs).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from conda_indexd.formats import timestamps
from conda_indexd.names import compact_json, section_of


def serialize_record(index_json_text: str) -> str:
    """One cached index_json row as it appears inside repodata.json; a record source
    (timestamps.source: the text and its indexed_timestamp) gets that too."""
    if "\0" in index_json_text:
        return compact_json(timestamps.record(index_json_text))
    return compact_json(json.loads(index_json_text))


def subdir_base_url(base_url: str, subdir: str) -> str:
    """CEP-15: where a subdir's packages are served from."""
    return f"{base_url.rstrip('/')}/{subdir}/"


def subdir_info(subdir: str, base_url: str | None) -> dict[str, str]:
    info = {"subdir": subdir}
    if base_url:
        info["base_url"] = subdir_base_url(base_url, subdir)
    return info


def record_piece(filename: str, index_json_text: str) -> str:
    """One `"filename":{record}` member of a repodata.json section."""
    return f"{json.dumps(filename)}:{serialize_record(index_json_text)}"


def piece_bytes(filename: str, index_json_text: str) -> bytes:
    """record_piece as the ASCII bytes the memo keeps."""
    return record_piece(filename, index_json_text).encode("ascii")


CHUNK = 2000  # pieces per streamed chunk (about 1 MB)


class Pieces(Protocol):
    """One section's records, streamed: `size` bytes of pieces joined by commas."""

    size: int

    def __len__(self) -> int: ...
    def chunks(self) -> Iterator[bytes]: ...


class PieceList:
    """Pieces held as a list of bytes (small documents, tests)."""

    def __init__(self, pieces: Sequence[bytes]):
        self.pieces = pieces
        self.size = sum(map(len, pieces)) + max(len(pieces) - 1, 0)

    def __len__(self) -> int:
        return len(self.pieces)

    def chunks(self) -> Iterator[bytes]:
        for start in range(0, len(self.pieces), CHUNK):
            chunk = b",".join(self.pieces[start : start + CHUNK])
            yield b"," + chunk if start else chunk


class Document:
    """repodata.json as a stream of chunks: the skeleton around the record pieces of each
    section, never joined into one string. `size` is known before streaming (a zstd
    frame header carries it). The same bytes as build_repodata."""

    def __init__(
        self,
        subdir: str,
        tar: Sequence[bytes] | Pieces,
        conda: Sequence[bytes] | Pieces,
        *,
        base_url: str | None = None,
        removed: Iterable[str] = (),
        v3: tuple[Sequence[bytes], Sequence[bytes]] | None = None,
        revisions: dict[str, Any] | None = None,
        relations: dict[str, str] | None = None,
    ):
        """`v3`: the (conda, tar.bz2) pieces of CEP-48's top-level `v3` map, keyed by
        filename without extension (None: no v3 map); `revisions`: info.repodata_revisions;
        `relations`: CEP-42 info.channel_relations."""
        version = 2 if base_url else 1
        self.revisions = revisions
        info: dict[str, Any] = subdir_info(subdir, base_url)
        if revisions is not None:
            info["repodata_revisions"] = revisions
        if relations:
            info["channel_relations"] = relations
        self.head = b'{"info":' + compact_json(info).encode("ascii") + b',"packages":{'
        self.middle = b'},"packages.conda":{'
        tail = ',"removed":' + compact_json(sorted(removed)) + ',"repodata_version":' + str(version)
        self.sections: tuple[Pieces, Pieces] = tuple(p if hasattr(p, "chunks") else PieceList(p) for p in (tar, conda))  # type: ignore[assignment,arg-type]
        self.v3: tuple[Pieces, ...] = ()
        if v3 is not None:  # sorted keys: conda, tar.bz2, whl (empty, as conda-index writes it)
            self.v3 = (PieceList(v3[0]), PieceList(v3[1]))
            self.v3_parts = (tail.encode("ascii") + b',"v3":{"conda":{', b'},"tar.bz2":{', b'},"whl":{}}}')
            self.tail = b""
        else:
            self.tail = (tail + "}").encode("ascii")
        self.size = len(self.head) + len(self.middle) + 1 + len(self.tail) + sum(p.size for p in self.sections)
        if self.v3:
            self.size += sum(map(len, self.v3_parts)) + sum(p.size for p in self.v3)

    def chunks(self) -> Iterator[bytes]:
        yield self.head
        for i, pieces in enumerate(self.sections):
            if i:
                yield self.middle
            yield from pieces.chunks()
        yield b"}" + self.tail
        if self.v3:
            for part, v3_pieces in zip(self.v3_parts, (*self.v3, None), strict=True):
                yield part
                if v3_pieces is not None:
                    yield from v3_pieces.chunks()

    def to_bytes(self) -> bytes:
        return b"".join(self.chunks())


def build_repodata(subdir: str, pieces: Iterable[tuple[str, str]], *, base_url: str | None = None, removed: Iterable[str] = ()) -> bytes:
    """repodata.json bytes from (filename, record_piece) pairs sorted by filename.

    The document equals `compact_json(repodata)`: `json.dumps` with sorted keys composes, so it
    can be assembled from records serialised one at a time (and kept between runs).
    """
    tar: list[str] = []
    conda: list[str] = []
    for fn, piece in pieces:
        section = section_of(fn)
        if section == "packages":
            tar.append(piece)
        elif section == "packages.conda":
            conda.append(piece)
    version = 2 if base_url else 1
    text = "".join(
        (
            '{"info":', compact_json(subdir_info(subdir, base_url)),
            ',"packages":{', ",".join(tar),
            '},"packages.conda":{', ",".join(conda),
            '},"removed":', compact_json(sorted(removed)),
            ',"repodata_version":', str(version), "}",
        )
    )  # fmt: skip
    return text.encode("ascii")


def build_run_exports(subdir: str, rows: Iterable[tuple[str, str | None]]) -> bytes:
    """run_exports.json (CEP-12) from (filename, run_exports text or None) pairs."""
    packages: dict[str, Any] = {}
    packages_conda: dict[str, Any] = {}
    for fn, text in rows:
        entry = {"run_exports": (json.loads(text) if text else None) or {}}
        section = section_of(fn)
        if section == "packages":
            packages[fn] = entry
        elif section == "packages.conda":
            packages_conda[fn] = entry
    doc = {"info": {"subdir": subdir, "version": 1}, "packages": packages, "packages.conda": packages_conda}
    return compact_json(doc).encode("ascii")
