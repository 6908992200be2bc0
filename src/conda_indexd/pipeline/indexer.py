"""The one indexing path for a subdir, shared by `conda-indexd index` and the daemon.

fs stage (fsstate) -> extract the changed packages (extract) -> refresh the record memo
(memo) -> build every output as bytes (build) -> publish: shards, shard index,
repodata.json and the rest (shardstore, outputs) -> collect old shards. Channel-level
files follow in channelfiles, after every subdir.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from conda_indexd.caches.base import CacheCorrupt, Failure, FileState, SubdirCache
from conda_indexd.config import IndexConfig
from conda_indexd.formats import channelmeta, origin
from conda_indexd.names import PATCH_INSTRUCTIONS, REPODATA, SHARD_INDEX, SHARDS_DIR
from conda_indexd.pipeline import attestations, memofile
from conda_indexd.pipeline.build import build_from_memo
from conda_indexd.pipeline.extract import Progress, extract
from conda_indexd.pipeline.fsstate import update_fs_stage
from conda_indexd.pipeline.memo import RecordMemo
from conda_indexd.pipeline.outputs import publish_outputs, withdraw_current
from conda_indexd.pipeline.quiet import (
    Quiet,
    inputs_token,
    instructions_digest,
    known_instructions,
    listed_instructions,
    listing_digest,
    outputs_state,
)
from conda_indexd.pipeline.seams import Backends
from conda_indexd.pipeline.shardstore import ShardsReport, ShardStore, withdraw
from conda_indexd.pipeline.timestamps import REJECTED, Flagged, KeySet, stamp
from conda_indexd.stores.base import Listing, key
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

NAMED_FILES = 20  # files named per kind in a publish log line


@dataclass
class SubdirResult:
    subdir: str
    packages: int = 0  # records published in repodata.json
    extracted: int = 0  # archives read and stored this run
    new_failures: list[Failure] = field(default_factory=list)  # failed this run
    skipped: list[Failure] = field(default_factory=list)  # every archive currently left out
    written: list[str] = field(default_factory=list)  # output files replaced
    added: list[str] = field(default_factory=list)  # package files now published, not before
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # published before and now, other sha256
    flagged: list[Flagged] = field(default_factory=list)  # CEP-47: build timestamp later than indexed_timestamp
    attested: int = 0  # records advertising an attestation sidecar
    sidecars_refused: dict[str, int] = field(default_factory=dict)  # {reason: packages whose sidecar is refused}
    repodata_bytes: int = 0
    shards: ShardsReport = field(default_factory=ShardsReport)
    duration: float = 0.0
    memo: RecordMemo = field(default_factory=RecordMemo)  # the records now published

    @property
    def shards_written(self) -> int:
        return sum(1 for f in self.written if f.startswith(SHARDS_DIR + "/"))

    def log_fields(self) -> dict[str, object]:
        """What the CLI and the daemon log for a run (shard files counted, not listed;
        package files named, the first NAMED_FILES of each kind)."""
        fields: dict[str, object] = {"subdir": self.subdir, "packages": self.packages}
        for kind, files in (("added", self.added), ("removed", self.removed), ("changed", self.changed)):
            fields[kind] = len(files)
            if files:
                more = len(files) - NAMED_FILES
                fields[f"{kind}_files"] = sorted(files)[:NAMED_FILES] + ([f"... and {more} more"] if more > 0 else [])
        fields.update(
            extracted=self.extracted,
            skipped=len(self.skipped),
            written=[f for f in self.written if not f.startswith(SHARDS_DIR + "/")],
            shards_encoded=self.shards.encoded,
            shards_written=self.shards_written,
            shards_deleted=len(self.shards.deleted),
            seconds=round(self.duration, 3),
        )
        if self.attested or self.sidecars_refused:
            fields.update(attested=self.attested, sidecars_refused=sum(self.sidecars_refused.values()))
        return fields


@dataclass
class SubdirRun:
    """One run of the indexing path over one subdir: what to look at and with what.

    touched=None lists the whole subdir (start-up, rescans, the one-shot command);
    otherwise only the named files are looked at (the daemon's events). Names in `hold`
    (uploads in progress) keep their previous fs row. `listing`: a listing the caller
    has just made. `memo`: the records the previous successful run published (the
    daemon keeps it); without one every published record is read from the cache.
    """

    config: IndexConfig
    subdir: str
    backends: Backends
    touched: Collection[str] | None = None
    hold: Collection[str] = ()
    listing: Sequence[FileState] | None = None
    memo: RecordMemo | None = None
    on_progress: Progress | None = None
    cancel: threading.Event | None = None
    verify: Collection[str] = ()  # published files someone else changed (see ShardStore.publish)
    takeover: bool = False  # a new leader's first run: every name's shard fingerprint is computed again
    seen: Mapping[str, float] = field(default_factory=dict)  # the daemon: when each touched name's change was seen (wall clock)
    seen_at: float | None = None  # when the rest was seen: the listing, or the one-shot run (None: this run's start)

    def execute(self) -> SubdirResult:
        try:
            return self._execute()
        except CacheCorrupt as exc:
            # damage found mid-run: the cache moved itself aside (and said so); rebuild
            # it from the packages
            log.debug("re-running on an empty cache", subdir=self.subdir, moved_to=exc.moved_to)
            self.touched, self.listing, self.memo = None, None, None
            return self._execute()

    def _execute(self) -> SubdirResult:
        started = time.monotonic()
        seen_at = self.seen_at if self.seen_at is not None else time.time()
        config, subdir, b = self.config, self.subdir, self.backends
        result = SubdirResult(subdir)
        full = self.touched is None
        # The channel itself is never created here: if it vanished (an unmounted share),
        # this fails and the caller retries instead of writing into the mount point.
        b.packages.prepare(subdir, recover=False)
        b.outputs.prepare(subdir, recover=full)
        with b.caches.open(subdir) as cache:
            # without the previous run's memo: the one saved by the last run (pipeline/memofile.py),
            # else a new one, and a one-shot run reports against what the cache published
            stamped = config.indexed_timestamp
            seeded = cache.timestamps_seeded()
            memo = self.memo if self.memo is not None and self.memo.stamped == stamped and seeded else None
            given = memo is not None  # the caller's memo, kept
            memo = memo or (memofile.load(cache, stamped) if seeded else None) or RecordMemo(cache.memo_folder(), stamped=stamped)
            before = cache.published_digests() if not given and not memo.loaded else {}
            # the memo was filled from this very cache, and nothing else wrote it since
            # (a recreated or rebuilt cache.db, or conda-index, moves the generation)
            trusted = memo.loaded if not given else memo.saved is not None and memo.saved[0] == cache.generation()
            if self.takeover:
                # a new leader's memo was warmed from a cache the old leader may have written
                # without publishing: what it remembers of a last run (listing, outputs) is
                # not this channel's, and the shards are planned from every name (below)
                memo.quiet = Quiet()
            listing, digest = self.listing, None
            if full and not self.hold:  # pipeline/quiet.py: an unchanged listing changes no fs row
                listing = b.packages.list_subdir(subdir) if listing is None else listing
                digest = listing_digest(listing)
            # what a listing of the whole subdir saw of the outputs and shards, when they are
            # published beside the packages: the quiet check and the shard upkeep list nothing again
            seen = None
            if isinstance(listing, Listing) and listing.files is not None and b.outputs.location == b.packages.location:
                seen = Listing((), listing.sidecars, listing.files, listing.shards)  # without the packages' columns
            if digest is not None and digest == memo.quiet.listing and (trusted or cache.memo_folder() is None):
                looked_at: set[str] | None = set()
                rows_changed: set[str] = set()
            else:
                looked_at, rows_changed = update_fs_stage(
                    cache, b.packages, subdir, touched=self.touched, hold=self.hold, listing=listing, keep_missing=config.update_only
                )
            listed = listing.sidecars if isinstance(listing, Listing) else None  # the sidecars this run's listing saw
            listing = None  # a million files' columns: not held past the fs stage (the caller may still hold them)
            # With touched names and the previous run's memo, nothing else can have changed
            # (a failed or cancelled run drops the memo, so the next run is full). A full
            # listing over a trusted memo (saved at this cache's generation) changed only
            # the rows this fs stage wrote.
            scope: set[str] | None = rows_changed if trusted else None
            if looked_at is not None and given:
                scope = looked_at
            # CEP-47: the packages published before a subdir's first run with the table
            # (seeded from their build timestamp); archives rejected for their timestamp
            # are read again once rejecting is turned off
            unseeded_before = None if seeded else KeySet((fn, sha or "") for fn, sha in cache.published_keys())
            if not config.reject_future_timestamps and (again := cache.forget_failures(REJECTED)):
                scope = None if scope is None else scope | again
            changed = cache.changed_packages(scope)
            if changed:
                log.debug("extracting", subdir=subdir, count=len(changed))
            result.extracted, result.new_failures = extract(cache, b.packages, subdir, changed, config.threads, self.on_progress, self.cancel)
            # stopped while extracting: the fs rows of what was not read say "changed", so this
            # run's memo must not be saved as covering them (a later process would trust it
            # and never read those files)
            cancelled = self.cancel is not None and self.cancel.is_set()
            for failure in result.new_failures:
                log.warning("skipped archive", subdir=subdir, path=failure.path, reason=failure.reason, detail=failure.message)
            stamps = stamp(config, cache, b.outputs, subdir, scope=scope, before=unseeded_before, seen=self.seen, seen_at=seen_at, previous=memo.flagged)
            result.flagged = memo.flagged = stamps.flagged
            if stamps.rejected and scope is not None:
                scope |= stamps.rejected
            dirty = memo.refresh(cache, scope, workers=config.threads)
            # attestation sidecars: a full look, or the touched names' packages (pipeline/attestations.py);
            # what is advertised is part of the inputs token, so a change is never quiet
            attestations.update(memo.sidecars, b.packages, subdir, memo, touched=self.touched, hold=self.hold, listed=listed)
            attested = memo.sidecars.advertised()
            memo.quiet.listing = None  # until this run has published
            result.skipped = cache.failures()
            # patch_instructions.json as the last run that read it listed it: its digest
            # without a GET (pipeline/quiet.py); read when the outputs are built
            remembered = memo.quiet.instructions
            listed_patches = listed_instructions(seen)
            patches_digest = known_instructions(memo.quiet, listed_patches)
            instructions: bytes | None = None
            read_patches = patches_digest is None
            if patches_digest is None:
                instructions = b.outputs.read(key(subdir, PATCH_INSTRUCTIONS))
                patches_digest = instructions_digest(instructions)
                if listed_patches is not False:
                    memo.quiet.instructions = (listed_patches, patches_digest)
            overlay_bytes = b.packages.read(origin.overlay_key(subdir)) if config.origin_overlay else None
            token = inputs_token(config, patches_digest, overlay_bytes, attested)
            quiet = not dirty and not self.verify and memo.quiet.outputs is not None  # verify: shards changed outside
            quiet = quiet and time.time() < memo.quiet.collect_at
            # the shard upkeep's listing, only over touched names: a full run (a rescan)
            # lists the shard folder, so a shard deleted from outside is noticed there too
            carried = memo.shards[1] if memo.shards is not None and given and not full else None
            if quiet and memo.quiet.outputs == (token, outputs_state(b.outputs, subdir, cache, carried, seen)):
                built = None  # nothing to build: the outputs are as this memo's last run left them
            else:
                memo.quiet.outputs = None
                if not read_patches:  # known by its listed state until now: the bytes are needed
                    instructions = b.outputs.read(key(subdir, PATCH_INSTRUCTIONS))
                    token = inputs_token(config, instructions, overlay_bytes, attested)
                    memo.quiet.instructions = None if listed_patches is False else (listed_patches, instructions_digest(instructions))
                built = build_from_memo(
                    config,
                    subdir,
                    memo,
                    existing_instructions=instructions,
                    run_exports=cache.run_exports() if config.run_exports else (),
                    overlay=origin.parse(overlay_bytes) if overlay_bytes is not None else None,
                    attested=attested,
                )
                # docs/spec §8.2: shard files, then the shard index, then repodata.json and the rest.
                # A takeover: records the old leader stored in the shared cache without
                # publishing them are already in the warmed memo (not dirty), and the shard
                # state is the old leader's: every name's fingerprint is computed again.
                store = self._publish_shards(cache, memo, None if self.takeover else dirty, built.instructions, result, built.revisions,
                                             seen.shards if seen is not None else None)  # fmt: skip
                result.written += publish_outputs(config, b.outputs, subdir, built.outputs)
                if not config.current_repodata:
                    result.written += withdraw_current(b.outputs, subdir)
                if store is not None:
                    store.collect(config.shard_retention, result.shards)
                    memo.quiet.collect_at = min(store.state.unreferenced.values(), default=float("inf")) + config.shard_retention
                    store.save()
                    memo.shards = store.carry
                memo.quiet.outputs = (token, outputs_state(b.outputs, subdir, cache, store.on_disk if store is not None else None))
            # --update-only keeps fs rows of files no longer listed: the listing does not
            # say what the fs rows are, so the next run compares them again
            memo.quiet.listing = digest if not config.update_only and not cancelled else None
            if cancelled:
                memofile.forget(cache)
            elif (
                memo.quiet.instructions != remembered
                or built is not None
                or dirty
                or rows_changed
                or result.extracted
                or result.new_failures
                or memo.saved is None
                or memo.saved[1] != digest
            ):
                memofile.save(cache, memo)
        result.memo = memo
        result.packages = len(memo)
        result.attested = len(attested)
        result.sidecars_refused = memo.sidecars.refused()
        if not given and not memo.loaded:
            added, differ = [], []
            for fn, sha in memo.items():
                old = before.pop(fn, None) if fn in before else False
                if old is False:
                    added.append(fn)
                elif (old or "") != sha:
                    differ.append(fn)
            result.added, result.removed, result.changed = sorted(added), sorted(before), sorted(differ)
        else:
            result.added, result.removed, result.changed = (sorted(files) for files in memo.last)
        if built is not None:
            repodata_json = built.outputs[REPODATA]
            result.repodata_bytes = len(repodata_json) if isinstance(repodata_json, bytes) else repodata_json.size
        else:
            result.repodata_bytes = next((f.size for f in memo.quiet.outputs[1] if f.path == REPODATA), 0) if memo.quiet.outputs else 0
        result.duration = time.monotonic() - started
        return result

    def _publish_shards(
        self,
        cache: SubdirCache,
        memo: RecordMemo,
        dirty: set[str] | None,
        instructions: dict[str, Any],
        result: SubdirResult,
        revisions: dict[str, Any] | None = None,
        listed: dict[str, int] | None = None,
    ) -> ShardStore | None:
        if not self.config.write_shards:
            if withdraw(self.backends.outputs, self.subdir):
                result.shards.written.append(SHARD_INDEX)
            result.written += result.shards.written
            return None
        # a run over touched names carries the last run's shard state and listing (full
        # runs read both again)
        carried = memo.shards if self.touched is not None else None
        memo.shards = None  # until this run has saved
        store = ShardStore(self.backends.outputs, cache, self.subdir, carried, listed)
        store.publish(memo, dirty, instructions, self.config.base_url, result.shards, verify=self.verify,
                      stamped=self.config.indexed_timestamp, all_v3=self.config.repodata_next, revisions=revisions,
                      relations=channelmeta.relations_info(self.config.channel_relations), workers=self.config.threads)  # fmt: skip
        result.written += result.shards.written
        return store


def index_subdir(
    config: IndexConfig,
    subdir: str,
    *,
    touched: Collection[str] | None = None,
    hold: Collection[str] = (),
    on_progress: Progress | None = None,
    cancel: threading.Event | None = None,
    listing: Sequence[FileState] | None = None,
    memo: RecordMemo | None = None,
    backends: Backends,
    verify: Collection[str] = (),
    takeover: bool = False,
    seen: Mapping[str, float] | None = None,
    seen_at: float | None = None,
) -> SubdirResult:
    """Bring one subdir's cache and outputs up to date (see SubdirRun). `takeover`: the
    first run of a new leader of a pair, which trusts no remembered shard; `seen`,
    `seen_at`: when the changes were seen (CEP-47 indexed_timestamp)."""
    run = SubdirRun(config, subdir, backends, touched, hold, listing, memo, on_progress, cancel, verify, takeover, seen or {}, seen_at)
    return run.execute()
