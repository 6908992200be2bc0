"""The one indexing path for a subdir, shared by `conda-indexd index` and the daemon.

fs state -> changed packages -> extract (parallel readers, one sqlite writer) -> build
outputs (pure) -> publish (atomic, changed files only).
"""

from __future__ import annotations

import bz2
import itertools
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable
import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from . import channeldata, current, patches, publish, repodata, shards
from .archive import ArchiveError, PackageMetadata, read_package
from .cache import Failure, FileState, SubdirCache, is_corrupt, quarantine
from .config import IndexConfig, is_package_name
from .logs import get_logger

log = get_logger(__name__)

REPODATA = "repodata.json"
REPODATA_FROM_PACKAGES = "repodata_from_packages.json"
RUN_EXPORTS = "run_exports.json"
CURRENT = "current_repodata.json"
COMPRESSED = (REPODATA, REPODATA_FROM_PACKAGES, CURRENT)  # the outputs with .zst/.bz2 copies

Progress = Callable[[str, int, int], None]
COMMIT_EVERY = 500  # archives stored per cache.db transaction
PROCESS_POOL_FROM = 200  # archives to read before a process pool pays for itself
# fork: the workers inherit the loaded modules (no re-import per worker); they only read
# files and return results, so forking from a threaded process is safe here.
_FORK = multiprocessing.get_context("fork")


@dataclass
class SubdirResult:
    subdir: str
    packages: int = 0  # records published in repodata.json
    extracted: int = 0  # archives read and stored this run
    new_failures: list[Failure] = field(default_factory=list)  # failed this run
    skipped: list[Failure] = field(default_factory=list)  # every archive currently left out
    written: list[str] = field(default_factory=list)  # output files replaced
    added: int = 0
    removed: int = 0
    changed: int = 0
    repodata_bytes: int = 0
    shards: shards.ShardsReport = field(default_factory=shards.ShardsReport)
    duration: float = 0.0

    @property
    def shards_written(self) -> int:
        return sum(1 for f in self.written if f.startswith(shards.SHARDS_DIR + "/"))

    def log_fields(self) -> dict[str, object]:
        """What the CLI and the daemon log for a run (shard files counted, not listed)."""
        return {
            "subdir": self.subdir,
            "packages": self.packages,
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "extracted": self.extracted,
            "skipped": len(self.skipped),
            "written": [f for f in self.written if not f.startswith(shards.SHARDS_DIR + "/")],
            "shards_encoded": self.shards.encoded,
            "shards_written": self.shards_written,
            "shards_deleted": len(self.shards.deleted),
            "seconds": round(self.duration, 3),
        }


# --- fs state --------------------------------------------------------------------------


def list_packages(folder: Path) -> list[FileState]:
    """Every package file directly in `folder` with its mtime and size."""
    files = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not is_package_name(entry.name):
            continue
        if not entry.name.isprintable() or _undecodable(entry.name):
            log.warning("skipped file with an unusable name", subdir=folder.name, path=repr(entry.name))
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        # Anything but a folder is listed, without following symlinks: a symlink, FIFO or
        # socket under a package name is then refused with a reason by the reader.
        if not stat.S_ISDIR(st.st_mode):
            files.append(FileState(entry.name, st.st_mtime, st.st_size))
    return files


def _undecodable(name: str) -> bool:
    """A name that is not valid UTF-8 on disk (surrogate escapes): it cannot go in JSON."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def stat_packages(folder: Path, names: Iterable[str]) -> tuple[list[FileState], list[str]]:
    """The touched names split into (still present with their state, gone)."""
    present, gone = [], []
    for name in names:
        if _undecodable(name):
            continue
        try:
            st = os.lstat(folder / name)
        except FileNotFoundError:
            gone.append(name)
            continue
        if stat.S_ISDIR(st.st_mode):
            gone.append(name)
        else:
            present.append(FileState(name, st.st_mtime, st.st_size))
    return present, gone


# --- extraction --------------------------------------------------------------------------


def _read(folder: Path, state: FileState) -> PackageMetadata | ArchiveError:
    try:
        return read_package(folder / state.path, subdir=folder.name)
    except ArchiveError as exc:
        return exc


def extract(
    cache: SubdirCache,
    folder: Path,
    changed: list[FileState],
    threads: int,
    on_progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[int, list[Failure]]:
    """Read changed archives on `threads` workers; all sqlite writes happen here.

    When `cancel` is set, reading stops early; what was stored so far is kept and the
    rest stays "changed" for the next run.
    """
    stored, failures = 0, []
    workers = max(1, threads)
    # Reading is CPU-bound Python (zip, tar, JSON): a big batch goes to processes, one per
    # worker, so it uses every core; a few files (the daemon's usual event) stay in
    # threads, which start at no cost.
    big = workers > 1 and len(changed) >= PROCESS_POOL_FROM
    executor: Executor = ProcessPoolExecutor(workers, mp_context=_FORK) if big else ThreadPoolExecutor(workers)
    with executor as pool:
        results = pool.map(_read, itertools.repeat(folder), changed, chunksize=32 if big else 1)
        done = 0
        pairs = iter(zip(changed, results))
        while done < len(changed):
            if cancel is not None and cancel.is_set():
                pool.shutdown(wait=True, cancel_futures=True)
                break
            # one commit per batch: a commit syncs the journal, which would otherwise
            # cost more than reading the archive; a crash only loses the batch's work
            with cache.transaction():
                for state, result in itertools.islice(pairs, COMMIT_EVERY):
                    done += 1
                    failure = _store(cache, state, result)
                    if failure is None:
                        stored += 1
                    elif failure.reason != "vanished":
                        failures.append(failure)
                    if on_progress:
                        on_progress(done, len(changed))
                    if cancel is not None and cancel.is_set():
                        break
    return stored, failures


def _store(cache: SubdirCache, state: FileState, result: PackageMetadata | ArchiveError) -> Failure | None:
    """Record one read in the cache; the failure (if any) for the caller to report."""
    if isinstance(result, ArchiveError):
        if result.reason == "vanished":
            cache.update_fs_state((), (state.path,))
        else:
            cache.store_failure(state, result.reason, result.message)
        return Failure(state.path, result.reason, result.message)
    if result.index_json["size"] != state.size:
        # the file changed between the listing and the read (an upload in progress):
        # keep nothing; it is looked at again on the next change.
        cache.update_fs_state((), (state.path,))
        return Failure(state.path, "vanished", "changed while being read")
    try:
        cache.store(result, state)
    except sqlite3.OperationalError as exc:
        if "malformed JSON" not in str(exc):
            raise
        message = f"metadata rejected by cache.db ({exc})"
        cache.store_failure(state, "bad-metadata", message)
        return Failure(state.path, "bad-metadata", message)
    return None
    return stored, failures


# --- outputs -------------------------------------------------------------------------------


def compress_zst(data: bytes, level: int) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


class RecordMemo:
    """The serialised repodata record of every published package of one subdir, kept by
    the daemon between runs: {filename: (sha256, '"filename":{record}', name)}.

    A record is re-read from cache.db and re-serialised only when its archive sha256
    changed, so a one-package change costs one record, not the whole subdir. The sha256
    of a file fixes its metadata, which is what makes the entry safe to reuse.
    """

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, str, str]] = {}
        self.warm = False  # filled by a previous run
        self.dirty: set[str] | None = None  # names whose files changed in the last refresh (None: all)

    def refresh(self, cache: SubdirCache, paths: Collection[str] | None = None) -> None:
        """Bring the entries in line with the cache. `paths` (with a warm memo): only
        those files can have changed since the last refresh, so only they are looked at."""
        if paths is None or not self.warm:
            keys = dict(cache.published_keys())
            gone = self.entries.keys() - keys.keys()
        else:
            keys = dict(cache.published_keys(paths))
            gone = {fn for fn in paths if fn in self.entries and fn not in keys}
        dirty: set[str] = set()
        for fn in gone:
            dirty.add(self.entries.pop(fn)[2])
        misses = [fn for fn, sha in keys.items() if not sha or self.entries.get(fn, ("",))[0] != sha]
        for fn, text, name, _ in cache.records_for(misses):
            if fn in self.entries:
                dirty.add(self.entries[fn][2])
            self.entries[fn] = (keys[fn] or "", repodata.record_piece(fn, text), name)
            dirty.add(name)
        self.dirty = dirty if self.warm else None
        self.warm = True

    def reset(self) -> None:
        self.entries.clear()
        self.warm, self.dirty = False, None

    def digests(self) -> dict[str, str]:
        return {fn: entry[0] for fn, entry in self.entries.items()}

    def shard_keys(self) -> list[tuple[str, str, str]]:
        """(name, filename, sha256) ordered by name then filename, for shards."""
        return sorted((name, fn, sha) for fn, (sha, _, name) in self.entries.items())


def build_outputs(
    config: IndexConfig, subdir: str, cache: SubdirCache, memo: RecordMemo, scope: Collection[str] | None = None
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Every output file of a subdir as {filename: bytes} in publish order, and the patch
    instructions applied (also to the shards). `scope`: the only files that changed since
    the memo's last refresh (None: any may have). Raises PatchError before anything is
    published when the patch source fails."""
    memo.refresh(cache, scope)
    pieces = memo.entries
    from_packages = repodata.build_repodata(
        subdir, sorted((fn, entry[1]) for fn, entry in pieces.items()), base_url=config.base_url
    )
    outputs: dict[str, bytes] = {REPODATA_FROM_PACKAGES: from_packages}
    patched, instructions = from_packages, {}
    doc: dict[str, Any] | None = None  # the parsed (then patched) document, parsed once
    generator = patches.generator_path(config.channel, config.patch_generator)
    existing = config.output_dir(subdir) / patches.INSTRUCTIONS
    if generator is not None or existing.exists():
        doc = json.loads(from_packages)
        instructions, fresh = patches.instructions_for(subdir, doc, generator, existing)
        if fresh:
            outputs[patches.INSTRUCTIONS] = patches.serialize(instructions)
        if instructions:
            patched = repodata.dumps(patches.apply(doc, instructions)).encode("ascii")
    outputs[REPODATA] = patched
    if config.current_repodata:  # derived files after repodata.json (§8.2)
        doc = json.loads(patched) if doc is None else doc
        outputs[CURRENT] = repodata.dumps(current.build(doc, config.current_pins())).encode("ascii")
    if config.run_exports:  # never patched (CEP-12)
        outputs[RUN_EXPORTS] = repodata.build_run_exports(subdir, cache.run_exports())
    return outputs, instructions


def _holds(variant: Path, suffix: str, data: bytes) -> bool:
    """Whether an existing compressed copy decompresses to `data` (repairs stale copies
    left by an interrupted run; zstd decompression is cheap next to compression)."""
    try:
        blob = variant.read_bytes()
        if suffix == ".zst":
            return zstandard.ZstdDecompressor().decompress(blob, max_output_size=len(data) + 1) == data
        return bz2.decompress(blob) == data
    except (OSError, ValueError, zstandard.ZstdError):
        return False


def publish_outputs(config: IndexConfig, outdir: Path, outputs: dict[str, bytes]) -> list[str]:
    """Publish in order; compressed copies follow their JSON. Returns the names written.

    A compressed copy is rebuilt when its JSON changed or it does not decompress to the
    JSON (missing, stale, corrupt); identical JSON documents (repodata.json without patches) share one compression.
    """
    outdir.mkdir(exist_ok=True)  # never parents: a vanished channel must not be recreated
    written: list[str] = []
    memo: dict[tuple[str, bytes], bytes] = {}

    def compressed(suffix: str, data: bytes) -> bytes:
        if (suffix, data) not in memo:
            memo[suffix, data] = compress_zst(data, config.zst_level) if suffix == ".zst" else bz2.compress(data)
        return memo[suffix, data]

    for name, data in outputs.items():
        path = outdir / name
        changed = publish.publish(path, data)
        if changed:
            written.append(name)
        if name not in COMPRESSED:
            continue
        for suffix, enabled in ((".zst", config.zst), (".bz2", config.bz2)):
            variant = path.with_name(name + suffix)
            if not enabled:
                publish.remove(variant)
            elif (changed or not _holds(variant, suffix, data)) and publish.publish(variant, compressed(suffix, data)):
                written.append(variant.name)
    return written


# --- the whole path --------------------------------------------------------------------------


def index_subdir(
    config: IndexConfig,
    subdir: str,
    *,
    touched: Iterable[str] | None = None,
    hold: Collection[str] = (),
    on_progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    listing: list[FileState] | None = None,
    memo: RecordMemo | None = None,
) -> SubdirResult:
    """Bring one subdir's cache and outputs up to date.

    touched=None lists the whole folder (start-up, rescans, the one-shot command);
    otherwise only the fs rows of the named files are updated (the daemon's events).
    Names in `hold` (uploads still in progress) keep their previous fs row this time.
    A caller that has just listed the folder may pass that `listing` to avoid a second one.
    The daemon passes the subdir's `memo` from its previous run (see RecordMemo).
    """
    memo = RecordMemo() if memo is None else memo
    try:
        return _index_subdir(config, subdir, touched, hold, on_progress, cancel, listing, memo)
    except sqlite3.DatabaseError as exc:
        if not is_corrupt(exc):
            raise
        # damage found mid-run: move the file aside and rebuild it from the packages
        moved = quarantine(config.cache_db(subdir))
        log.warning("cache.db is damaged; moved aside and rebuilding from the packages", subdir=subdir, moved_to=moved.name, error=str(exc))
        memo.reset()
        return _index_subdir(config, subdir, None, hold, on_progress, cancel, None, memo)


def _index_subdir(
    config: IndexConfig,
    subdir: str,
    touched: Iterable[str] | None,
    hold: Collection[str],
    on_progress: Callable[[int, int], None] | None,
    cancel: threading.Event | None,
    listing: list[FileState] | None,
    memo: RecordMemo,
) -> SubdirResult:
    started = time.monotonic()
    result = SubdirResult(subdir)
    folder = config.subdir_path(subdir)
    # The channel folder itself is never created here: if it vanished (an unmounted
    # share), this fails and the caller retries instead of writing into the mount point.
    folder.mkdir(exist_ok=True)
    with SubdirCache(config.cache_db(subdir)) as cache:
        before = memo.digests() if memo.warm else cache.published_digests()
        if touched is None:
            publish.clean_stale_temps(config.output_dir(subdir))
            listing = [f for f in (list_packages(folder) if listing is None else listing) if f.path not in hold]
            if hold:
                old = cache.fs_state()
                listing += [old[name] for name in hold if name in old]
            cache.replace_fs_state(listing)
        else:
            names = {n for n in touched if is_package_name(n) and n not in hold}
            present, gone = stat_packages(folder, names)
            cache.update_fs_state(present, gone)
        # With touched names and a memo from the previous run, nothing else can have
        # changed (a failed or cancelled run drops the memo, so the next run is full).
        scope = names if touched is not None and memo.warm else None
        changed = cache.changed_packages(scope)
        if changed:
            log.debug("extracting", subdir=subdir, count=len(changed))
        result.extracted, result.new_failures = extract(cache, folder, changed, config.threads, on_progress, cancel)
        for failure in result.new_failures:
            log.warning("skipped archive", subdir=subdir, path=failure.path, reason=failure.reason, detail=failure.message)
        outputs, instructions = build_outputs(config, subdir, cache, memo, scope)
        after = memo.digests()
        result.skipped = cache.failures()
        outdir = config.output_dir(subdir)
        outdir.mkdir(exist_ok=True)
        # §8.2: shard files, then the shard index, then repodata.json and the rest.
        store = None
        if config.write_shards:
            store = shards.ShardStore(outdir, config.shard_state(subdir))
            store.publish(
                cache, subdir, config.base_url, result.shards, keys=memo.shard_keys(), dirty=memo.dirty, instructions=instructions
            )
        elif shards.withdraw(outdir):
            result.shards.written.append(shards.SHARD_INDEX)
    result.packages = len(after)
    result.added = len(after.keys() - before.keys())
    result.removed = len(before.keys() - after.keys())
    result.changed = sum(1 for fn in after.keys() & before.keys() if after[fn] != before[fn])
    result.written = result.shards.written + publish_outputs(config, outdir, outputs)
    if not config.current_repodata:  # a stale subset would mislead conda's classic solver
        for name in (CURRENT, CURRENT + ".zst", CURRENT + ".bz2"):
            if publish.remove(outdir / name):
                result.written.append(name)
    if store is not None:
        store.collect(config.shard_retention, result.shards)
        store.save()
    result.repodata_bytes = len(outputs[REPODATA])
    result.duration = time.monotonic() - started
    return result


# --- channel-level outputs ----------------------------------------------------------------

CHANNELDATA, RSS, INDEX_HTML = "channeldata.json", "rss.xml", "index.html"
SUBDIR_FILES = (REPODATA, REPODATA + ".zst", REPODATA + ".bz2", REPODATA_FROM_PACKAGES,
                REPODATA_FROM_PACKAGES + ".zst", REPODATA_FROM_PACKAGES + ".bz2", patches.INSTRUCTIONS,
                CURRENT, shards.SHARD_INDEX, RUN_EXPORTS)  # fmt: skip


def publish_channel(config: IndexConfig, subdirs: Iterable[str]) -> list[str]:
    """channeldata.json, rss.xml and the index.html pages, from every subdir's published
    repodata.json and cache (§6.3-6.5), written last (§8.2). Returns the files written."""
    if not config.channeldata:
        return []
    root = config.output_root
    repodatas: dict[str, dict[str, Any]] = {}
    for subdir in subdirs:
        try:
            repodatas[subdir] = json.loads((config.output_dir(subdir) / REPODATA).read_bytes())
        except FileNotFoundError:
            continue
    caches: dict[str, SubdirCache] = {}

    def load(subdir: str, fn: str) -> dict[str, Any]:
        if subdir not in caches:
            caches[subdir] = SubdirCache(config.cache_db(subdir))
        return channeldata.merged_metadata(*caches[subdir].metadata_texts(fn))

    try:
        data = channeldata.build(repodatas, load)
    finally:
        for cache in caches.values():
            cache.close()
    name = config.channel_name or config.channel.name
    written = []
    outputs = {CHANNELDATA: channeldata.serialize(data)}
    if config.rss:
        outputs[RSS] = channeldata.rss(name, data)
    outputs[INDEX_HTML] = channeldata.root_html(name, data)
    for file, content in outputs.items():
        if publish.publish(root / file, content):
            written.append(file)
    for subdir, doc in repodatas.items():
        outdir = config.output_dir(subdir)
        present = [f for f in SUBDIR_FILES if (outdir / f).exists()]
        page = channeldata.subdir_html(name, subdir, present, doc, config.html_dependencies)
        if publish.publish(outdir / INDEX_HTML, page):
            written.append(f"{subdir}/{INDEX_HTML}")
    return written
