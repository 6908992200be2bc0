"""Stage 4a: publish a subdir's built files through the channel store, in order, each
followed by its compressed copies (.zst one frame, .bz2), only where bytes changed.

A `repodata.Document` is streamed: its chunks go to the JSON's writer and, in the same
pass, through one zstd compressor (ONE frame with the content size: rattler's decoder
stops at the end of the first frame; ZSTD_THREADS workers compress it, which gives the
same bytes whatever their number) and the bz2 compressor into their writers
(ChannelStore.writer). A document published under a second name (repodata.json without
patches is the same object as repodata_from_packages.json) is not streamed again: when
its turn in the publish order comes, the first name's JSON and compressed copies are
given the second name too (ChannelStore.copy: one inode locally, a server-side copy in a
bucket). Every writer compares as it writes, so an unchanged file is not replaced and a
stale or corrupt compressed copy is repaired; a copy is skipped when the name already
holds those bytes.
"""

from __future__ import annotations

import bz2
from collections.abc import Callable
from contextlib import ExitStack

import zstandard

from conda_indexd.config import IndexConfig
from conda_indexd.formats.repodata import Document
from conda_indexd.names import COMPRESSED, CURRENT
from conda_indexd.stores.base import ChannelStore, StreamWriter, key

# worker threads compressing a streamed .zst: still ONE frame, and the same bytes for any
# count >= 1 (zstd's multithreaded format does not depend on it); they overlap building
# and writing the JSON
ZSTD_THREADS = 2


def compress_zst(data: bytes, level: int) -> bytes:
    """One zstd frame with the content size (rattler stops at the first frame)."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def holds(blob: bytes | None, suffix: str, data: bytes) -> bool:
    """Whether an existing compressed copy decompresses to `data`."""
    if blob is None:
        return False
    try:
        if suffix == ".zst":
            return bool(zstandard.ZstdDecompressor().decompress(blob, max_output_size=len(data) + 1) == data)
        return bz2.decompress(blob) == data
    except (OSError, ValueError, zstandard.ZstdError):
        return False


def publish_outputs(config: IndexConfig, store: ChannelStore, subdir: str, outputs: dict[str, bytes | Document]) -> list[str]:
    """Publish in order; compressed copies follow their JSON. Returns the names written."""
    written: list[str] = []
    streamed: list[tuple[bytes | Document, str]] = []  # (document, the name it was streamed to)
    for name, data in outputs.items():
        if name not in COMPRESSED:
            blob = data.to_bytes() if isinstance(data, Document) else data
            if store.write(key(subdir, name), blob):
                written.append(name)
            continue
        files = [name] + [name + suffix for suffix, enabled in _suffixes(config) if enabled]
        for suffix, enabled in _suffixes(config):
            if not enabled:
                store.remove(key(subdir, name + suffix))
        first = next((n for doc, n in streamed if doc is data), None)
        if first is None:
            streamed.append((data, name))
            with ExitStack() as stack:
                for label, writer in zip(files, _open_stream(config, store, subdir, name, data, stack), strict=True):
                    if writer.commit():
                        written.append(label)
        else:  # the same bytes as `first`'s files, committed before the names between
            for label in files:
                if store.copy(key(subdir, first + label[len(name) :]), key(subdir, label)):
                    written.append(label)
    return written


def _suffixes(config: IndexConfig) -> tuple[tuple[str, bool], ...]:
    return ((".zst", config.zst), (".bz2", config.bz2))


class _Sink:
    """One compressed copy being written: its compressor's calls and its writer."""

    def __init__(self, compress: Callable[[bytes], bytes], flush: Callable[[], bytes], writer: StreamWriter):
        self.compress, self.flush, self.writer = compress, flush, writer

    def write(self, chunk: bytes) -> None:
        if out := self.compress(chunk):
            self.writer.write(out)

    def close(self) -> None:
        if out := self.flush():
            self.writer.write(out)


def _open_stream(config: IndexConfig, store: ChannelStore, subdir: str, name: str, data: bytes | Document, stack: ExitStack) -> list[StreamWriter]:
    """Stream `data` into uncommitted writers of `name` and its enabled compressed copies;
    returns them in commit order (JSON first, then .zst, .bz2)."""
    size = data.size if isinstance(data, Document) else len(data)
    plain = stack.enter_context(store.writer(key(subdir, name), size=size))
    sinks: list[_Sink] = []
    for suffix, enabled in _suffixes(config):
        if not enabled:
            continue
        writer = stack.enter_context(store.writer(key(subdir, name + suffix)))
        if suffix == ".zst":
            zst = zstandard.ZstdCompressor(level=config.zst_level, write_content_size=True, threads=ZSTD_THREADS).compressobj(size=size)
            sinks.append(_Sink(zst.compress, zst.flush, writer))
        else:
            bz = bz2.BZ2Compressor()
            sinks.append(_Sink(bz.compress, bz.flush, writer))
    for chunk in data.chunks() if isinstance(data, Document) else (data,):
        if chunk:
            plain.write(chunk)
            for sink in sinks:
                sink.write(chunk)
    for sink in sinks:
        sink.close()
    return [plain, *(sink.writer for sink in sinks)]


def withdraw_current(store: ChannelStore, subdir: str) -> list[str]:
    """Without --current-repodata: a stale subset would mislead conda's classic solver."""
    return [name for name in (CURRENT, CURRENT + ".zst", CURRENT + ".bz2") if store.remove(key(subdir, name))]
