"""No-op rescans do almost nothing: what a memo remembers about the run that
filled it, so the next full rescan can tell that nothing changed without rewriting the
fs rows, rebuilding repodata.json and comparing it byte by byte.

- `listing`: a digest of the last full listing (None after a run over touched names
  only: events updated fs rows since). An equal listing means every fs row is as that
  run left it, so no package can have changed.
- `outputs`: the inputs the outputs were built from (patch instructions' bytes, the
  patch generator's and pins file's identity, the output settings) and the state
  (size, mtime, identity) of every output file right after publishing. When both are
  unchanged and no record changed, the outputs are what a rebuild would write.
- `collect_at`: a quiet run is not quiet from then on, so unreferenced shards are still
  deleted once their retention has passed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from conda_indexd.caches.base import SubdirCache
from conda_indexd.config import IndexConfig
from conda_indexd.formats import shards
from conda_indexd.names import (
    COMPRESSED,
    COMPRESSED_SUFFIXES,
    CURRENT,
    PATCH_INSTRUCTIONS,
    REPODATA,
    REPODATA_FROM_PACKAGES,
    RUN_EXPORTS,
    SHARD_INDEX,
    SHARD_STATE,
    SHARDS_DIR,
)
from conda_indexd.pipeline import patchsource
from conda_indexd.stores.base import ChannelStore, FileState, Listing, key


@dataclass
class Quiet:
    listing: str | None = None
    outputs: tuple[str, tuple[FileState, ...]] | None = None
    collect_at: float = float("inf")  # when the first unreferenced shard's retention ends


def listing_digest(listing: Iterable[FileState]) -> str:
    """A digest of the listing's (path, mtime, size, identity) rows in path order
    (Listing.digest: column by column, no formatted string per file). A store's listing
    is a Listing already; anything else is put into one first."""
    if not isinstance(listing, Listing):
        listing = Listing(sorted(listing))
    return listing.digest()


OUTPUT_NAMES = sorted(
    {REPODATA_FROM_PACKAGES, PATCH_INSTRUCTIONS, REPODATA, CURRENT, RUN_EXPORTS, SHARD_INDEX}
    | {name + suffix for name in COMPRESSED for suffix in COMPRESSED_SUFFIXES}
)  # every file a publish may write, withdraw or leave alone


def inputs_token(config: IndexConfig, instructions: bytes | None, overlay: bytes | None = None, attested: Mapping[str, str] | None = None) -> str:
    """What the outputs depend on besides the records: the patch instructions, the pkgs-dir
    origin records (`overlay`), the advertised attestation sidecars (`attested`), the patch
    generator and pins files as they are now, and every setting that shapes the outputs
    (IndexConfig.output_shape)."""
    generator = patchsource.generator_path(config.channel, config.patch_generator)
    parts = [
        hashlib.sha256(instructions).hexdigest() if instructions is not None else "-",
        hashlib.sha256(overlay).hexdigest() if overlay is not None else "-",
        str(generator), repr(patchsource.identity(generator)),
        str(config.current_index_versions), repr(patchsource.identity(config.current_index_versions)),
        repr(config.output_shape()),
    ]  # fmt: skip
    if attested:  # absent without sidecars: the token is what it was before them
        parts.append(hashlib.sha256(repr(sorted(attested.items())).encode()).hexdigest())
    return "\n".join(parts)


def outputs_state(store: ChannelStore, subdir: str, cache: SubdirCache, shard_files: dict[str, int] | None = None) -> tuple[FileState, ...]:
    """Every output file's (size, mtime, identity), plus the shard files' names and sizes
    and the shard upkeep's saved state (a truncated or deleted shard, or a lost state,
    is then noticed by a restart too). The outputs are stat'ed with `stat_files` (a
    bucket answers `stat_packages` for packages only), so one deleted, truncated or
    rewritten by someone else, even to the same size (the identity: inode+ctime, the
    ETag), makes the state differ and the run rebuild and restore it. `shard_files`:
    {digest: size} the caller knows to be in the store (the shard upkeep's, right after
    its publish), else the folder is listed."""
    present, _ = store.stat_files(subdir, OUTPUT_NAMES)
    if shard_files is None:
        shard_files = shards.shard_digests(store.list_files(key(subdir, SHARDS_DIR)))
    files = hashlib.sha256(repr(sorted(shard_files.items())).encode()).hexdigest()
    state = cache.load_state(SHARD_STATE)
    shard_state = hashlib.sha256(state).hexdigest() if state is not None else "-"
    return (*sorted(present), FileState(SHARDS_DIR + "/", 0.0, 0, files), FileState(SHARD_STATE, 0.0, 0, shard_state))
