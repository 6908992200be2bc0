"""Stage 4a: publish a subdir's built files through the channel store, in order, each
followed by its compressed copies (.zst one frame, .bz2), only where bytes changed."""

from __future__ import annotations

import bz2

import zstandard

from .config import IndexConfig
from .names import COMPRESSED, CURRENT
from .store import ChannelStore, key


def compress_zst(data: bytes, level: int) -> bytes:
    """One zstd frame with the content size (rattler stops at the first frame)."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def holds(blob: bytes | None, suffix: str, data: bytes) -> bool:
    """Whether an existing compressed copy decompresses to `data` (repairs stale copies
    left by an interrupted run; decompression is cheap next to compression)."""
    if blob is None:
        return False
    try:
        if suffix == ".zst":
            return bool(zstandard.ZstdDecompressor().decompress(blob, max_output_size=len(data) + 1) == data)
        return bz2.decompress(blob) == data
    except (OSError, ValueError, zstandard.ZstdError):
        return False


def publish_outputs(config: IndexConfig, store: ChannelStore, subdir: str, outputs: dict[str, bytes]) -> list[str]:
    """Publish in order; compressed copies follow their JSON. Returns the names written.

    A compressed copy is rebuilt when its JSON changed or it does not decompress to the
    JSON (missing, stale, corrupt); identical JSON documents (repodata.json without
    patches) share one compression.
    """
    written: list[str] = []
    made: dict[tuple[str, bytes], bytes] = {}

    def compressed(suffix: str, data: bytes) -> bytes:
        if (suffix, data) not in made:
            made[suffix, data] = compress_zst(data, config.zst_level) if suffix == ".zst" else bz2.compress(data)
        return made[suffix, data]

    for name, data in outputs.items():
        changed = store.write(key(subdir, name), data)
        if changed:
            written.append(name)
        if name not in COMPRESSED:
            continue
        for suffix, enabled in ((".zst", config.zst), (".bz2", config.bz2)):
            variant = key(subdir, name + suffix)
            if not enabled:
                store.remove(variant)
            elif (changed or not holds(store.read(variant), suffix, data)) and store.write(variant, compressed(suffix, data)):
                written.append(name + suffix)
    return written


def withdraw_current(store: ChannelStore, subdir: str) -> list[str]:
    """Without --current-repodata: a stale subset would mislead conda's classic solver."""
    return [name for name in (CURRENT, CURRENT + ".zst", CURRENT + ".bz2") if store.remove(key(subdir, name))]
