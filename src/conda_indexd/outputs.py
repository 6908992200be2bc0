"""Stage 4a: publish a subdir's built files through the channel store, in order, each
followed by its compressed copies (.zst one frame, .bz2), only where bytes changed.

A `repodata.Document` is streamed: its chunks go to the JSON's writer and, in the same
pass, through one zstd compressor (ONE frame with the content size: rattler's decoder
stops at the end of the first frame) and the bz2 compressor into their writers
(ChannelStore.writer). Documents that are the same object (repodata.json without
patches is repodata_from_packages.json) are built and compressed once and written to
both names. Every writer compares as it writes, so an unchanged file is not replaced
and a stale or corrupt compressed copy is repaired. Commits keep the publish order.
"""

from __future__ import annotations

import bz2
from collections.abc import Callable
from contextlib import ExitStack

import zstandard

from .config import IndexConfig
from .names import COMPRESSED, CURRENT
from .repodata import Document
from .store import ChannelStore, StreamWriter, key


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


class _Fanout:
    """Chunks of one stream written to several writers."""

    def __init__(self, writers: list[StreamWriter]):
        self.writers = writers

    def write(self, data: bytes) -> None:
        if data:
            for w in self.writers:
                w.write(data)


def publish_outputs(config: IndexConfig, store: ChannelStore, subdir: str, outputs: dict[str, bytes | Document]) -> list[str]:
    """Publish in order; compressed copies follow their JSON. Returns the names written."""
    written: list[str] = []
    done: set[str] = set()
    names = list(outputs)
    for i, name in enumerate(names):
        if name in done:
            continue
        data = outputs[name]
        if name not in COMPRESSED:
            if isinstance(data, Document):
                data = data.to_bytes()
            if store.write(key(subdir, name), data):
                written.append(name)
            continue
        # the same document under later names (repodata.json without patches): one pass,
        # committed in publish order (the names between them are plain files, written
        # after the first's commits and before the next's)
        group = [n for n in names[i:] if n in COMPRESSED and outputs[n] is data]
        for suffix, enabled in ((".zst", config.zst), (".bz2", config.bz2)):
            if not enabled:
                for n in group:
                    store.remove(key(subdir, n + suffix))
        with ExitStack() as stack:
            commits = _open_stream(config, store, subdir, group, data, stack)
            for n in group:
                if n != name:  # plain files between the group's names go first (§8.2)
                    for between in names[names.index(name) + 1 : names.index(n)]:
                        if between not in COMPRESSED and between not in done:
                            blob = outputs[between]
                            blob = blob.to_bytes() if isinstance(blob, Document) else blob
                            if store.write(key(subdir, between), blob):
                                written.append(between)
                            done.add(between)
                for label, writer in commits[n]:
                    if writer.commit():
                        written.append(label)
                done.add(n)
    return written


def _open_stream(
    config: IndexConfig, store: ChannelStore, subdir: str, group: list[str], data: bytes | Document, stack: ExitStack
) -> dict[str, list[tuple[str, StreamWriter]]]:
    """Stream `data` into uncommitted writers of every name in `group` and their
    compressed copies; returns {name: [(file, writer)]} (JSON first, then .zst, .bz2)."""
    commits: dict[str, list[tuple[str, StreamWriter]]] = {n: [] for n in group}
    sinks: list[tuple[Callable[[bytes], bytes], Callable[[], bytes], _Fanout]] = []
    plain: list[StreamWriter] = []
    for n in group:
        w = stack.enter_context(store.writer(key(subdir, n)))
        commits[n].append((n, w))
        plain.append(w)
    size = data.size if isinstance(data, Document) else len(data)
    for suffix, enabled in ((".zst", config.zst), (".bz2", config.bz2)):
        if not enabled:
            continue
        writers = []
        for n in group:
            w = stack.enter_context(store.writer(key(subdir, n + suffix)))
            commits[n].append((n + suffix, w))
            writers.append(w)
        if suffix == ".zst":
            # one worker thread: compression overlaps building and writing, still ONE frame
            # (and the same bytes whatever the core count)
            zst = zstandard.ZstdCompressor(level=config.zst_level, write_content_size=True, threads=1).compressobj(size=size)
            sinks.append((zst.compress, zst.flush, _Fanout(writers)))
        else:
            bz = bz2.BZ2Compressor()
            sinks.append((bz.compress, bz.flush, _Fanout(writers)))
    out = _Fanout(plain)
    for chunk in data.chunks() if isinstance(data, Document) else (data,):
        out.write(chunk)
        for compress, _, fan in sinks:
            fan.write(compress(chunk))
    for _, flush, fan in sinks:
        fan.write(flush())
    return commits


def withdraw_current(store: ChannelStore, subdir: str) -> list[str]:
    """Without --current-repodata: a stale subset would mislead conda's classic solver."""
    return [name for name in (CURRENT, CURRENT + ".zst", CURRENT + ".bz2") if store.remove(key(subdir, name))]
