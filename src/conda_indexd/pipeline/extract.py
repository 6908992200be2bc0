"""Stage 2: read the changed archives and store what they hold in the cache.

Reading is CPU-bound Python (zip, tar, JSON): a big batch goes to a fork process pool,
one worker per --threads, so it uses every core; a few files (the daemon's usual event)
stay in threads, which start at no cost. A store whose reads wait on the network (a
bucket: `read_ahead` > 1) is read by that many threads in each worker, so its GETs
overlap while the worker parses; memory stays bounded by that count. All cache writes
happen in the calling thread, grouped into one transaction per COMMIT_EVERY archives.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from conda_indexd.archive.reader import ArchiveError, PackageMetadata, classify, read_package
from conda_indexd.caches.base import Failure, FileState, MetadataRejected, SubdirCache
from conda_indexd.formats import revisions
from conda_indexd.stores.base import ChannelStore, Unreadable
from conda_indexd.util.procs import die_with_parent

COMMIT_EVERY = 500  # archives stored per cache transaction
PROCESS_POOL_FROM = 200  # archives to read before a process pool pays for itself
BATCH = 32  # archives sent to a worker process at a time
# fork: the workers inherit the loaded modules (no re-import per worker); they only read
# files and return results, so forking from a threaded process is safe here.
_FORK = multiprocessing.get_context("fork")

Progress = Callable[[int, int], None]


def read_one(store: ChannelStore, subdir: str, state: FileState) -> PackageMetadata | ArchiveError:
    """One archive's metadata, or the reason it cannot be indexed. A read that fails on
    a file that changed meanwhile (an upload going on) is "vanished", not broken: it is
    looked at again on its next change."""
    try:
        with store.open_package(subdir, state.path) as stream:
            return read_package(stream, state.path, subdir=subdir)
    except ArchiveError as exc:
        return _unless_changed(store, subdir, state, exc)
    except Unreadable as exc:
        return ArchiveError(exc.reason, exc.message)
    except OSError as exc:  # gone since the listing, or an I/O error
        return classify(state.path, exc)


def read_batch(store: ChannelStore, subdir: str, states: list[FileState]) -> list[PackageMetadata | ArchiveError]:
    """`read_one` for each of `states` (in a worker process), `store.read_ahead` at a time."""
    if store.read_ahead <= 1:
        return [read_one(store, subdir, state) for state in states]
    with ThreadPoolExecutor(store.read_ahead) as threads:
        return list(threads.map(read_one, itertools.repeat(store), itertools.repeat(subdir), states))


def _unless_changed(store: ChannelStore, subdir: str, state: FileState, exc: ArchiveError) -> ArchiveError:
    if exc.reason == "vanished":
        return exc
    present, _ = store.stat_packages(subdir, [state.path])
    if not present:
        return ArchiveError("vanished", "file disappeared while reading")
    now = present[0]
    same_identity = not (now.identity and state.identity) or now.identity == state.identity
    if (now.size, now.mtime) != (state.size, state.mtime) or not same_identity:
        return ArchiveError("vanished", f"changed while being read ({exc.reason})")
    return exc


def extract(
    cache: SubdirCache,
    store: ChannelStore,
    subdir: str,
    changed: list[FileState],
    threads: int,
    on_progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> tuple[int, list[Failure]]:
    """Read `changed` and store the results: (archives stored, failures to report).

    When `cancel` is set, reading stops early; what was stored so far is kept and the
    rest stays "changed" for the next run.
    """
    stored, failures = 0, []
    workers = max(1, threads)
    big = workers > 1 and len(changed) >= PROCESS_POOL_FROM
    ahead = max(1, store.read_ahead)
    executor: Executor = (
        ProcessPoolExecutor(workers, mp_context=_FORK, initializer=die_with_parent, initargs=(os.getpid(),)) if big else ThreadPoolExecutor(workers * ahead)
    )
    with executor as pool:
        if big:
            batches = (changed[i : i + BATCH] for i in range(0, len(changed), BATCH))
            results: Iterator[PackageMetadata | ArchiveError] = itertools.chain.from_iterable(
                pool.map(read_batch, itertools.repeat(store), itertools.repeat(subdir), batches)
            )
        else:
            results = pool.map(read_one, itertools.repeat(store), itertools.repeat(subdir), changed)
        done = 0
        pairs = iter(zip(changed, results, strict=True))
        while done < len(changed):
            if cancel is not None and cancel.is_set():
                pool.shutdown(wait=True, cancel_futures=True)
                break
            # one commit per batch: a commit syncs the journal, which would otherwise
            # cost more than reading the archive; a crash only loses the batch's work
            with cache.transaction():
                for state, result in itertools.islice(pairs, COMMIT_EVERY):
                    done += 1
                    failure = store_result(cache, state, result)
                    if failure is None:
                        stored += 1
                    elif failure.reason != "vanished":
                        failures.append(failure)
                    if on_progress:
                        on_progress(done, len(changed))
                    if cancel is not None and cancel.is_set():
                        break
    return stored, failures


def store_result(cache: SubdirCache, state: FileState, result: PackageMetadata | ArchiveError) -> Failure | None:
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
    if (reason := revisions.problem(result.index_json)) is not None:  # CEP-48: a v3 record that is not one
        cache.store_failure(state, "bad-v3-record", reason)
        return Failure(state.path, "bad-v3-record", reason)
    try:
        cache.store(result, state)
    except MetadataRejected as exc:
        cache.store_failure(state, "bad-metadata", str(exc))
        return Failure(state.path, "bad-metadata", str(exc))
    return None
