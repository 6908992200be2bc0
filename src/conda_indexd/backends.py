"""Which channel store and which cache a configuration uses: the one place that knows
the implementations (rattler-index's index_fs/index_s3 only build a store, then call
the same index). Every stage below is handed a `Backends` (pipeline/seams.py); this is
the only module that imports the concrete stores, caches and locks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conda_indexd.caches.base import Caches, Failure
from conda_indexd.caches.sqlite.cache import SqliteCaches, failure_of
from conda_indexd.config import DEFAULT_DB_URL, Db, IndexConfig
from conda_indexd.errors import Fenced
from conda_indexd.ha.flock import ChannelLock
from conda_indexd.ha.lock import NoLock, WriterLock
from conda_indexd.pipeline.indexer import SubdirResult
from conda_indexd.pipeline.indexer import index_subdir as run_subdir
from conda_indexd.pipeline.seams import Backends as Backends  # re-exported: what open_backends returns
from conda_indexd.stores.base import ChannelStore
from conda_indexd.stores.fenced import Fence, FencedStore
from conda_indexd.stores.local import LocalStore
from conda_indexd.util.logs import get_logger

if TYPE_CHECKING:
    from conda_indexd.stores.s3.store import S3Stats

log = get_logger(__name__)


def open_backends(config: IndexConfig, fence: Fence | None = None, application_name: str = "conda-indexd", stats: S3Stats | None = None) -> Backends:
    """With a `fence` (a daemon in a pair), every output write and cache write is checked
    first. `stats` counts an S3 store's requests (the daemon's metrics)."""
    packages: ChannelStore
    if config.remote or config.output_url is not None:
        from conda_indexd.stores.s3.store import S3Store  # boto3: only loaded for s3:// addresses

        packages = S3Store(config.channel_url, stats=stats) if config.channel_url else LocalStore(config.channel)
        if config.output_url:
            outputs: ChannelStore = S3Store(config.output_url, stats=stats)
        elif config.output is not None:
            outputs = LocalStore(config.output)
        else:
            outputs = packages
    else:
        packages, outputs = LocalStore(config.channel), LocalStore(config.output_root)
    if fence is not None:
        if config.remote or config.output_url is not None:
            from conda_indexd.stores.s3.store import S3Store

            if isinstance(outputs, S3Store):  # a refused conditional write (412) while still the leader:
                outputs.lease_held = partial(_leading, fence)  # written by a previous leader, not a new one
        outputs = FencedStore(outputs, fence)
    caches: Caches
    if config.db == Db.POSTGRESQL:
        from conda_indexd.caches.pg.cache import PostgresCaches  # psycopg: the postgresql extra
        from conda_indexd.ha.channelid import channel_identity

        caches = PostgresCaches(config.channel, config.db_url or DEFAULT_DB_URL, fence=fence, application_name=application_name,
                                identify=channel_identity(config))  # fmt: skip
    elif config.remote:  # a bucket's caches live in the local state folder (`channel`)
        caches = SqliteCaches(config.channel, folder="")
    else:
        caches = SqliteCaches(config.channel)
    return Backends(packages, outputs, caches)


def _leading(fence: Fence) -> bool:
    try:
        fence.check("a published file changed since this leader last saw it")
    except Fenced:
        return False
    return True


def check_reachable(backends: Backends) -> None:
    """StoreError with one line unless every store can be used now: a bucket is there and
    these credentials may use it (a folder has nothing to check before its listing)."""
    for store in {id(s): s for s in (backends.packages, backends.outputs)}.values():
        store.check()


def skipped_in_folder(channel: Path, subdir: str, filename: str) -> Failure | None:
    """Why the indexer of a channel folder left `filename` out (its sqlite cache, read
    only), for `conda-indexd wait`; None when it did not, or has not yet, or when the file
    there now is not the one it left out (replaced since, or gone)."""
    present, _missing = LocalStore(channel).stat_files(subdir, [filename])
    if not present:
        return None
    return failure_of(channel / subdir / ".cache" / "cache.db", filename, identity=present[0].identity)


def open_lock(config: IndexConfig, backends: Backends, retry_until: threading.Event | None = None, *, paired: bool = False) -> WriterLock:
    """The one-writer lock of the outputs: a flock in a local channel, a lease object
    beside the outputs in a bucket (taken again and again while the store is unreachable,
    until `retry_until` is set: the daemon). With --db postgresql the pair's lease
    (ha/pairlease.py) fences the writers on top of this; a daemon of a pair (`paired`) takes
    no other lock: the database lease orders the two."""
    if paired:
        return NoLock()
    if config.output_url or config.remote:
        from conda_indexd.stores.s3.store import S3Store

        out = backends.outputs
        if isinstance(out, S3Store):
            from conda_indexd.ha.s3lease import S3Lease

            return S3Lease(out, retry_until=retry_until)
    return ChannelLock(config.channel)


def recent_writes(outputs: ChannelStore) -> Callable[..., bool] | None:
    """How a folder's watcher tells our own writes from someone else's: the channel
    folder's `changed_by_us(key, within, removals_only=...)` (under the pair's fence, the
    store it wraps); None for a store that is not a folder."""
    inner = outputs.inner if isinstance(outputs, FencedStore) else outputs
    return inner.changed_by_us if isinstance(inner, LocalStore) else None


def index_subdir(config: IndexConfig, subdir: str, *, backends: Backends | None = None, **options: Any) -> SubdirResult:
    """`pipeline.indexer.index_subdir` with the configuration's own backends when none are
    handed over (a one-off run: tests, tools)."""
    return run_subdir(config, subdir, backends=backends or open_backends(config), **options)


def clean_uploads(outputs: ChannelStore, older_than: float | None = None, *, count: Callable[[int], None] | None = None,
                  quiet: bool = False) -> int:  # fmt: skip
    """`abort_stale_uploads` on an output store that is a bucket (under a FencedStore too);
    one log line when any were aborted, `count(n)` for a metric. An unreachable endpoint is
    a warning (at start) or nothing (`quiet`: after a failed run, which is retried anyway).
    Returns how many were aborted."""
    from conda_indexd.stores.s3.store import S3Store
    from conda_indexd.stores.s3.upload import STALE_UPLOAD_AGE, abort_stale_uploads

    store = outputs.inner if isinstance(outputs, FencedStore) else outputs
    if not isinstance(store, S3Store):
        return 0
    aborted, error = abort_stale_uploads(store, STALE_UPLOAD_AGE if older_than is None else older_than)
    if error is not None and not quiet:
        log.warning("could not look for unfinished multipart uploads; tried again after the next failed run", error=str(error))
    if aborted:
        log.info("aborted unfinished multipart uploads of ours", channel=store.url, count=len(aborted), keys=sorted(aborted)[:20])
        if count is not None:
            count(len(aborted))
    return len(aborted)
