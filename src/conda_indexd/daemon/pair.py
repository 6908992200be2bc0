"""The active/standby loop of a daemon in a pair (`watch --db postgresql`): the worker's
`pair`, driving its reconcile/serve steps while this daemon leads, and keeping a standby
warm otherwise.

- Leader: a full reconcile of every subdir (the previous leader may have stopped
  mid-publish, or stored records in the cache it never published: that first run
  recomputes every shard fingerprint), then the usual event loop for as long as the
  lease holds. A publish step
  after the lease is lost fails with `Fenced`, like any failed run (memo dropped).
- Standby: takes the events (dropped: a takeover lists every subdir anyway) and every
  few seconds refreshes each subdir's record memo from the shared cache, so a takeover
  only reads what changed since. Ready (/readyz 200) while the database answers.

Both share the status page's activity feed through the database (ha/leader.py's
`conda_indexd_activity`): the leader stores each entry it records, a standby (and a new
leader, once, before its first run) takes the other member's entries into its own feed.
"""

from __future__ import annotations

import time

from conda_indexd.daemon.activity import Entry
from conda_indexd.daemon.metrics import Metrics
from conda_indexd.daemon.worker import Worker
from conda_indexd.ha.leader import Leadership
from conda_indexd.pipeline.memo import RecordMemo
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

MEMO_REFRESH = 2.0  # seconds between a standby's memo refreshes
MAX_BACKOFF = 30.0


class Pair:
    def __init__(self, leadership: Leadership, metrics: Metrics, *, refresh: float = MEMO_REFRESH):
        self.leadership = leadership
        self.metrics = metrics
        self.refresh = refresh
        self.failures = 0
        self.activity_after = 0  # the last shared activity row taken into this daemon's feed
        leadership.on_change.append(self._count)

    def _count(self, leader: bool) -> None:
        self.metrics.leader.set(1 if leader else 0)
        self.metrics.leadership_changes.labels("leader" if leader else "standby").inc()

    def __call__(self, worker: Worker) -> None:
        worker.member = self.leadership.holder
        worker.activity.share = lambda entry: self.leadership.share_activity(entry.as_dict())
        self.leadership.start()
        try:
            while not worker.stopping.is_set():
                if self.leadership.is_leader():
                    self._lead(worker)
                else:
                    self._stand_by(worker)
        finally:
            self.leadership.stop()
            self.metrics.leader.set(0)

    def _drain(self, worker: Worker) -> int:
        dropped = 0
        while worker.queue.take(timeout=0) is not None:
            dropped += 1
        worker.metrics.queue_pending.set(worker.queue.pending_count())
        return dropped

    def _take_activity(self, worker: Worker) -> None:
        """The other member's feed entries since the last look (status page only)."""
        rows = self.leadership.read_activity(self.activity_after)
        if rows:
            self.activity_after = rows[-1][0]
            worker.activity.merge(e for _, member, d in rows if (e := Entry.from_dict(d, member)) is not None)

    def _lead(self, worker: Worker) -> None:
        self._drain(worker)  # the reconcile below lists every subdir
        self._take_activity(worker)  # what the previous leader did last, before this one's own
        # The old leader may have stored records in the shared cache and not published
        # them (cut off, killed): this daemon's warmed memo already holds them, so they
        # are not "changed" for it. Its first run of each subdir trusts neither the memo's
        # quiet state nor the remembered shards (SubdirRun.takeover).
        for state in worker.states.values():
            state.takeover = True
        started = time.monotonic()
        if not worker.reconcile():
            return
        if not self.leadership.is_leader():
            return
        log.info("leader reconciled", token=self.leadership.token, seconds=round(time.monotonic() - started, 3))
        worker.reconciled.set()
        if not worker.ready.is_set():
            worker.became_ready()
        worker.serve(self.leadership.is_leader)

    def _stand_by(self, worker: Worker) -> None:
        self.leadership.changed.clear()
        self._drain(worker)
        ok = self.leadership.connected and self._warm(worker)
        if ok:
            self._take_activity(worker)
            self.failures = 0
            if not worker.ready.is_set():
                worker.became_ready(reconciled=False)
            wait = self.refresh
        else:
            self.failures += 1
            if worker.ready.is_set():
                worker.ready.clear()
                worker.metrics.ready.set(0)
                log.warning("not ready: the database is unreachable", error=self.leadership.last_error)
            wait = min(MAX_BACKOFF, 0.5 * 2**self.failures)
        deadline = time.monotonic() + wait  # woken by a change of role or a stop
        while time.monotonic() < deadline and not worker.stopping.is_set():
            if self.leadership.changed.wait(min(0.25, max(0.0, deadline - time.monotonic()))):
                break

    def _warm(self, worker: Worker) -> bool:
        """Refresh every subdir's memo from the shared cache (reads only)."""
        try:
            for subdir in worker.subdirs():
                state = worker.state(subdir)
                with worker.backends.caches.open(subdir) as cache:
                    memo = state.memo if state.memo is not None else RecordMemo(cache.memo_folder(), stamped=worker.index.indexed_timestamp)
                    memo.refresh(cache)
                state.memo = memo
                state.status.packages = len(memo)
                if self.leadership.is_leader() or worker.stopping.is_set():
                    break
        except Exception as exc:  # noqa: BLE001 - unreachable database, restarted server
            for state in worker.states.values():
                state.memo = None  # refreshed from scratch once the database answers
            self.leadership.last_error = f"{type(exc).__name__}: {exc}"
            return False
        return True
