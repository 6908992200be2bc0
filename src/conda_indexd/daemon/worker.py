"""The daemon's worker: takes ready subdirs from the debounced queue and runs the one
indexing path on them, keeping one `SubdirState` per subdir. No socket, no signals, no
observer: a test can build a Worker over a channel and drive `process()` directly.
"""

from __future__ import annotations

import bisect
import errno
import os
import pwd
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from conda_indexd.backends import Backends
from conda_indexd.caches.base import FileState
from conda_indexd.config import IndexConfig
from conda_indexd.daemon.activity import Activity, entry_of
from conda_indexd.daemon.http.statuspage import SubdirStatus
from conda_indexd.daemon.metrics import Metrics
from conda_indexd.daemon.queue import COMPLETE_KINDS, DebounceQueue, EventKind, Pending, ScanReason
from conda_indexd.daemon.uploads import UploadTracker
from conda_indexd.formats.attestations import REASONS
from conda_indexd.pipeline.channel import ChannelDriver
from conda_indexd.pipeline.indexer import SubdirResult
from conda_indexd.pipeline.memo import RecordMemo
from conda_indexd.stores.base import Listing, StoreError
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

EMPTY_CONFIRM_DELAY = 1.5  # seconds before a second listing may confirm an emptied subdir
MAX_RETRY_DELAY = 60.0
NOT_WRITABLE_RETRY = 10.0  # a folder we may not write is looked at again this often, quietly
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def not_writable(exc: BaseException) -> OSError | None:
    """The permission error behind a failed run (the cache wraps its own), if that is it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _NOT_WRITABLE:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass
class SubdirState:
    """What the worker keeps about one subdir between runs.

    The memo rule lives here and only here: a successful run hands over the memo of the
    records it published; a failed run drops it, so the next run starts from the cache
    alone (it may have stopped between the cache and the outputs).
    """

    subdir: str
    memo: RecordMemo | None = None
    failures_in_a_row: int = 0
    not_writable: bool = False  # reported once; retried quietly until fixed
    published: int = 0  # records in the last publish
    # the first run after this daemon took the lease over: the memo was warmed from a
    # cache the old leader may have written without publishing, so every shard is checked
    takeover: bool = False
    status: SubdirStatus = field(init=False)

    def __post_init__(self) -> None:
        self.status = SubdirStatus(self.subdir)

    def succeeded(self, result: SubdirResult) -> None:
        if self.not_writable:
            log.info("subdir is writable again; published", subdir=self.subdir)
        self.memo = result.memo
        self.takeover = False
        self.failures_in_a_row = 0
        self.not_writable = False
        self.published = result.packages
        st = self.status
        st.packages, st.last_duration, st.last_run, st.error = result.packages, result.duration, time.time(), None
        st.skipped = [{"path": f.path, "reason": f.reason, "message": f.message} for f in result.skipped]
        st.flagged = [
            {"path": f.path, "build_timestamp": f.build_timestamp, "indexed_timestamp": f.indexed_timestamp, "message": f.message} for f in result.flagged
        ]
        if result.written:
            st.last_publish = st.last_run

    def failed(self, exc: BaseException) -> float:
        """Record a failed run; returns the delay before the retry (exponential backoff)."""
        self.memo = None
        self.failures_in_a_row += 1
        self.status.error = f"{type(exc).__name__}: {exc}"
        return min(MAX_RETRY_DELAY, 2.0**self.failures_in_a_row)


class Worker:
    def __init__(
        self,
        index: IndexConfig,
        backends: Backends,
        queue: DebounceQueue,
        metrics: Metrics,
        *,
        settle: float = 1.0,
        upload_timeout: float = 600.0,
        close_events: bool = True,
        stopping: threading.Event | None = None,
    ):
        self.index = index
        self.backends = backends
        self.channel = ChannelDriver(index, backends)  # the same driver as `conda-indexd index`
        self.queue = queue
        self.metrics = metrics
        self.settle = settle
        self.uploads = UploadTracker(settle, upload_timeout, close_events)
        self.stopping = stopping or threading.Event()
        self.ready = threading.Event()
        self.reconciled = threading.Event()  # published every subdir once (after-ready steps wait for it)
        self.states: dict[str, SubdirState] = {}
        self.on_ready: Callable[[], None] = lambda: None
        self.notify: Callable[[str], bool] = lambda message: False  # systemd (the daemon sets it)
        self.pair: Callable[[Worker], None] | None = None  # ha/leader.py's loop for a pair
        self._was_ready = False
        self.on_start: Callable[[], None] | None = None  # once, before the first reconcile (in this thread)
        self.on_failure: Callable[[], None] | None = None  # after a failed run (a bucket: our unfinished uploads)
        self.activity = Activity()  # the status page's feed and charts
        self.member: str | None = None  # a pair: this daemon's name in the lease (the feed says who published)

    def subdirs(self) -> list[str]:
        return self.channel.subdirs()

    def state(self, subdir: str) -> SubdirState:
        if subdir not in self.states:
            self.states[subdir] = SubdirState(subdir)
        return self.states[subdir]

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Reconcile every subdir, become ready, then take work until stopped. With a
        `pair` (ha/leader.py's active/standby loop), that loop drives the steps below."""
        if self.pair is not None:
            self.pair(self)
            return
        if self.reconcile():
            self.became_ready()
            self.serve()

    def reconcile(self) -> bool:
        """A full listing of every subdir; False when stopped on the way."""
        if self.on_start is not None:
            start, self.on_start = self.on_start, None
            start()

        def startup_scan(subdir: str) -> None:
            now = time.monotonic()
            self.process(Pending(subdir, now, now, full_scan=True, scan_reason=ScanReason.STARTUP))

        done = self.channel.reconcile(startup_scan, self._startup_subdirs(), self.stopping) is not None
        if done and self.index.notices is not None:  # CEP-6 notices.json from configuration, once started
            try:
                self.channel.publish_channel(self.subdirs())
            except Exception as exc:  # noqa: BLE001 - never stops the daemon
                log.error("channel files failed", error=f"{type(exc).__name__}: {exc}")
        return done

    def became_ready(self, reconciled: bool = True) -> None:
        """Ready (/readyz 200). `reconciled`: this daemon published every subdir (False
        for a standby of a pair, which is ready without publishing)."""
        first = not self._was_ready
        self._was_ready = True
        if reconciled:
            self.reconciled.set()
        self.ready.set()
        self.metrics.ready.set(1)
        self.notify("READY=1\nSTATUS=watching " + self.backends.packages.location)
        log.info("ready", subdirs=sorted(s for s, st in self.states.items() if st.status.last_run is not None))
        if first:
            self.on_ready()

    def serve(self, keep_going: Callable[[], bool] = lambda: True) -> None:
        while not self.stopping.is_set() and keep_going():
            item = self.queue.take(timeout=0.5)
            self.metrics.queue_pending.set(self.queue.pending_count())
            if item is not None:
                self.process(item)

    def _startup_subdirs(self) -> list[str]:
        """The subdirs to reconcile; while the store cannot be listed (an endpoint down,
        a bucket not there yet) the daemon stays up, not ready, and tries again."""
        delay = 1.0
        while not self.stopping.is_set():
            try:
                return self.subdirs()
            except StoreError as exc:
                self.metrics.subdir_errors.labels("channel", type(exc).__name__).inc()
                log.error("channel store unavailable; will retry", retry_in=delay, error=str(exc))
                self.stopping.wait(delay)
                delay = min(MAX_RETRY_DELAY, delay * 2)
        return []

    def process(self, item: Pending) -> None:
        subdir = item.subdir
        seen_at = time.time()  # CEP-47: a file found by this run's listing was seen now
        try:
            if self._no_such_platform(item):
                log.info("nothing to index: no such platform in the channel", subdir=subdir, files=sorted(item.names)[:20])
                if (known := self.states.get(subdir)) is not None and known.status.last_run is None:
                    del self.states[subdir]  # a failed look at it leaves no status entry behind
                return
            listing = self.backends.packages.list_subdir(subdir) if item.full_scan else None
            if self._looks_unmounted(item, listing):
                log.warning("subdir lists empty; waiting for a second listing", subdir=subdir)
                self.queue.add_scan(subdir, ScanReason.EMPTY_CHECK, delay=EMPTY_CONFIRM_DELAY, confirm_empty=True)
                return
            hold, recheck = self._hold(item, listing)
            for _ in range(3):  # at start-up, files found changing get their second look first,
                if not hold or item.scan_reason != ScanReason.STARTUP or set(hold.values()) != {EventKind.LISTED}:
                    break  # so the first publish already holds them (an open upload never waits)
                if self.stopping.wait(recheck):
                    return
                listing = self.backends.packages.list_subdir(subdir)
                hold, recheck = self._hold(item, listing)
        except StoreError as exc:  # the store unreachable: this subdir is retried like a failed run
            self._failed(subdir, exc)
            return
        if hold:
            self.queue.retry(subdir, hold, recheck)
            log.debug("upload in progress", subdir=subdir, files=sorted(hold))
        state = self.state(subdir)
        if item.outputs:
            log.info("published files changed from outside; restoring them", subdir=subdir, files=sorted(item.outputs)[:20])
        try:
            result = self.channel.run_subdir(
                subdir,
                touched=None if item.full_scan else item.names.keys(),
                hold=hold.keys(),
                cancel=self.stopping,
                listing=listing,
                memo=state.memo,
                verify=item.outputs,
                takeover=state.takeover,
                seen=self._wall_times(item.seen),
                seen_at=seen_at,
            )
        except Exception as exc:  # one subdir's trouble never stops the others
            if (denied := not_writable(exc)) is not None:
                self._not_writable(state, denied)
                return
            self._failed(subdir, exc)
            return
        state.succeeded(result)
        self._count(item, result)
        self._record(item, result)
        if result.written and (self.index.channeldata or self.index.notices is not None):
            try:  # channel-level files last (docs/spec §8.2), from every subdir's published repodata
                self.channel.publish_channel(self.subdirs())
            except Exception as exc:  # noqa: BLE001 - never stops the daemon
                self.metrics.subdir_errors.labels("channel", type(exc).__name__).inc()
                log.error("channel files failed", error=f"{type(exc).__name__}: {exc}")

    def _record(self, item: Pending, result: SubdirResult) -> None:
        """The status page's activity feed: a run that published files or refused archives."""
        entry = entry_of(result.subdir, added=result.added, removed=result.removed, replaced=result.changed,
                         published=bool(result.written), refused=result.new_failures, duration=result.duration,
                         latency=_latency(item), packages=result.packages, member=self.member)  # fmt: skip
        if entry is not None:
            self.activity.record(entry)

    def _wall_times(self, seen: dict[str, float]) -> dict[str, float]:
        """The queue's (monotonic) event times on the wall clock (CEP-47 indexed_timestamp)."""
        offset = time.time() - self.queue.clock()
        return {name: at + offset for name, at in seen.items()}

    def _failed(self, subdir: str, exc: Exception) -> None:
        delay = self.state(subdir).failed(exc)
        self.metrics.subdir_errors.labels(subdir, type(exc).__name__).inc()
        log.error("subdir failed; will retry", subdir=subdir, retry_in=delay, error=f"{type(exc).__name__}: {exc}")
        self.queue.add_scan(subdir, ScanReason.RETRY, delay=delay)
        if self.on_failure is not None:
            self.on_failure()

    def _not_writable(self, state: SubdirState, denied: OSError) -> None:
        """One error line and one count per episode, a status entry saying what to do, and
        a slow quiet retry: a permission problem is fixed by a person, not by retrying."""
        state.failed(denied)
        folder = f"{self.backends.packages.location}/{state.subdir}"
        user = _user()
        state.status.error = (
            f"not writable: {folder} ({denied.strerror}). The daemon runs as {user}: "
            f"chown -R {user} {folder}, or create platform folders before copying into them "
            "(docker compose exec conda-indexd mkdir /channel/<subdir>)"
        )
        if not state.not_writable:
            state.not_writable = True
            self.metrics.subdir_errors.labels(state.subdir, "not-writable").inc()
            log.error("subdir is not writable; retrying quietly until fixed", subdir=state.subdir, folder=str(folder),
                      user=user, retry_every=NOT_WRITABLE_RETRY)  # fmt: skip
        self.queue.add_scan(state.subdir, ScanReason.RETRY, delay=NOT_WRITABLE_RETRY)

    # --- rules before a run -------------------------------------------------------------------

    def _hold(self, item: Pending, listing: Sequence[FileState] | None) -> tuple[dict[str, EventKind], float]:
        """Uploads still in progress (see daemon/uploads.py): {name: kind to put back}, and when
        to look again."""
        if self.settle <= 0:
            return {}, 0.0
        kinds: dict[str, EventKind] = dict(item.names)
        present: dict[str, FileState] = {}
        now = time.time()
        if listing is not None:
            for f in _recent(listing, {*kinds, *self.uploads.tracked(item.subdir)}, now, self.settle):
                kinds.setdefault(f.path, EventKind.LISTED)
                present[f.path] = f
        unlooked = [name for name, kind in kinds.items() if name not in present and kind not in COMPLETE_KINDS]
        present.update((f.path, f) for f in self.backends.packages.stat_packages(item.subdir, unlooked)[0])
        held = self.uploads.hold(item.subdir, kinds, present, now, time.monotonic())
        self.metrics.uploads_in_progress.labels(item.subdir).set(len(held))
        return {name: kinds[name] for name in held}, min(held.values(), default=0.0)

    def _no_such_platform(self, item: Pending) -> bool:
        """Whether the subdir is not in the channel at all: not one this process has
        published, not one that is always indexed (noarch, --subdir), and not among the
        store's platforms (a bucket's has at least one object under it). An event naming a
        key that is not there (a forged or stale one) must not make an empty platform
        appear: no outputs, no cache or state for it."""
        state = self.states.get(item.subdir)
        if item.scan_reason == ScanReason.STARTUP or (state is not None and state.status.last_run is not None):
            return False  # start-up takes its subdirs from that same listing
        return item.subdir not in self.subdirs()

    def _looks_unmounted(self, item: Pending, listing: Sequence[FileState] | None) -> bool:
        """A subdir that had packages and now lists empty waits for a second listing."""
        if item.confirm_empty or not self.state(item.subdir).published:
            return False
        if listing is None and not any(k == EventKind.DELETED for k in item.names.values()):
            return False
        return not (listing if listing is not None else self.backends.packages.list_packages(item.subdir))

    # --- metrics ------------------------------------------------------------------------------

    def _count(self, item: Pending, result: SubdirResult) -> None:
        m, subdir = self.metrics, result.subdir
        m.packages.labels(subdir).set(result.packages)
        m.skipped.labels(subdir).set(len(result.skipped))
        m.future_timestamps.labels(subdir).set(len(result.flagged))
        m.attested.labels(subdir).set(result.attested)
        for reason in REASONS:
            m.sidecars_refused.labels(subdir, reason).set(result.sidecars_refused.get(reason, 0))
        m.repodata_bytes.labels(subdir).set(result.repodata_bytes)
        m.publish_duration.labels(subdir).observe(result.duration)
        m.packages_indexed.labels(subdir).inc(result.extracted)
        for failure in result.new_failures:
            m.package_errors.labels(subdir, failure.reason).inc()
        m.shards_written.labels(subdir).inc(result.shards_written)
        m.shards_deleted.labels(subdir).inc(len(result.shards.deleted))
        if result.written:
            m.last_publish.labels(subdir).set(time.time())
            if (latency := _latency(item)) is not None:
                m.event_to_publish.observe(latency)
            log.info("published", **result.log_fields())


def _latency(item: Pending) -> float | None:
    """Seconds from the first event of `item` until now; None for the start-up scan (no event)."""
    return None if item.scan_reason == ScanReason.STARTUP else time.monotonic() - item.first_event


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _recent(listing: Sequence[FileState], names: set[str], now: float, settle: float) -> Iterator[FileState]:
    """The listed files among `names`, and those whose change the store saw less than
    `settle` seconds ago. A Listing is searched column-wise: a million-file listing
    makes no FileState but for the few it yields."""
    if not isinstance(listing, Listing):
        yield from (f for f in listing if f.path in names or 0 <= now - f.changed_at < settle)
        return
    paths, since = listing.paths, now - settle
    found = {i for i, at in enumerate(listing.changed) if since < at <= now}
    for name in names:
        i = bisect.bisect_left(paths, name)
        if i < len(paths) and paths[i] == name:
            found.add(i)
    for i in sorted(found):
        yield listing[i]
