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
- `instructions`: patch_instructions.json's state as the listing of the run that last
  read it saw it (None: not there) and the sha256 of the bytes read (`ABSENT`: none). A
  full run whose listing shows the same state takes that digest instead of reading the
  file again (`known_instructions`); the bytes are read only when the outputs are built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

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
    instructions: tuple[FileState | None, str] | None = None  # (listed state, sha256 or ABSENT) of the last read


ABSENT = "-"  # the digest of patch instructions that are not there (inputs_token's)


def instructions_digest(instructions: bytes | None) -> str:
    return hashlib.sha256(instructions).hexdigest() if instructions is not None else ABSENT


def listed_instructions(listed: Listing | None) -> FileState | None | Literal[False]:
    """patch_instructions.json's state in a listing of the whole subdir (None: not there;
    False: the listing did not look)."""
    if listed is None or listed.files is None:
        return False
    return next((f for f in listed.files if f.path == PATCH_INSTRUCTIONS), None)


def known_instructions(quiet: Quiet, listed: FileState | None | Literal[False]) -> str | None:
    """The sha256 of patch_instructions.json without reading it, when the listing shows it
    as the run that last read it listed it (a rewrite changes its identity: the ETag, the
    inode and ctime); None: it must be read. A file not listed is taken as absent only when
    it was absent (not merely unlisted: a symlink in a folder) when last read."""
    if listed is False or quiet.instructions is None:
        return None
    state, digest = quiet.instructions
    if listed != state or (listed is None and digest != ABSENT):
        return None
    return digest


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
OUTPUT_SET = frozenset(OUTPUT_NAMES)


def inputs_token(config: IndexConfig, instructions: bytes | str | None, overlay: bytes | None = None, attested: Mapping[str, str] | None = None) -> str:
    """What the outputs depend on besides the records: the patch instructions (their bytes,
    or their `instructions_digest`), the pkgs-dir
    origin records (`overlay`), the advertised attestation sidecars (`attested`), the patch
    generator and pins files as they are now, and every setting that shapes the outputs
    (IndexConfig.output_shape)."""
    generator = patchsource.generator_path(config.channel, config.patch_generator)
    parts = [
        instructions if isinstance(instructions, str) else instructions_digest(instructions),
        hashlib.sha256(overlay).hexdigest() if overlay is not None else "-",
        str(generator), repr(patchsource.identity(generator)),
        str(config.current_index_versions), repr(patchsource.identity(config.current_index_versions)),
        repr(config.output_shape()),
    ]  # fmt: skip
    if attested:  # absent without sidecars: the token is what it was before them
        parts.append(hashlib.sha256(repr(sorted(attested.items())).encode()).hexdigest())
    return "\n".join(parts)


def outputs_state(store: ChannelStore, subdir: str, cache: SubdirCache, shard_files: dict[str, int] | None = None,
                  listed: Listing | None = None) -> tuple[FileState, ...]:  # fmt: skip
    """Every output file's (size, mtime, identity), plus the shard files' names and sizes
    and the shard upkeep's saved state (a truncated or deleted shard, or a lost state,
    is then noticed by a restart too). The outputs are stat'ed with `stat_files` (a
    bucket answers `stat_packages` for packages only), so one deleted, truncated or
    rewritten by someone else, even to the same size (the identity: inode+ctime, the
    ETag), makes the state differ and the run rebuild and restore it. `shard_files`:
    {digest: size} the caller knows to be in the store (the shard upkeep's, right after
    its publish), else the folder is listed. `listed`: this run's listing of the whole
    subdir in `store` (ChannelStore.list_subdir), which saw both already: nothing is
    listed again."""
    if listed is not None and listed.files is not None:
        present = [f for f in listed.files if f.path in OUTPUT_SET]
    else:
        present, _ = store.stat_files(subdir, OUTPUT_NAMES)
    if shard_files is None:
        on_disk = listed.shards if listed is not None and listed.shards is not None else store.list_files(key(subdir, SHARDS_DIR))
        shard_files = shards.shard_digests(on_disk)
    files = hashlib.sha256(repr(sorted(shard_files.items())).encode()).hexdigest()
    state = cache.load_state(SHARD_STATE)
    shard_state = hashlib.sha256(state).hexdigest() if state is not None else "-"
    return (*sorted(present), FileState(SHARDS_DIR + "/", 0.0, 0, files), FileState(SHARD_STATE, 0.0, 0, shard_state))
