"""One writer per channel prefix in a bucket, without flock: a lease object.

`<prefix>/.conda-indexd-lease.json` holds {"owner", "host", "pid", "expires"} (epoch
seconds). Acquiring it is a conditional PUT: `If-None-Match: *` when there is none,
`If-Match: <its ETag>` when the one there has expired or is our own, so two writers
racing for it cannot both win (a 412 makes the loser read it again). A lease held by a
live other owner is refused with one line (ChannelBusy, exit 3); one left by a process
of this host that is gone is taken over at once. A thread renews it
every TTL/3 with `If-Match`; when a renewal finds another owner the lease is `lost`
and the holder stops. Release deletes it (after checking it is still ours: RGW ignores
If-Match on DELETE). The store asks `still_held` when the bucket refuses one of its
conditional publish writes (stores/s3/objects.FENCED_NAMES): lost then too, at once.

Expiry uses the writers' clocks, so it is as good as their clock sync; the lease is the
single-machine answer. A stronger fence (the PostgreSQL lease of ha/leader.py) plugs in through
the same `WriterLock` shape (ha/lock.py) in backends.open_lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from typing import Any

from conda_indexd.ha.lock import ChannelBusy
from conda_indexd.stores.base import StoreError
from conda_indexd.stores.s3.store import S3Store
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

LEASE_KEY = ".conda-indexd-lease.json"
DEFAULT_TTL = 60.0


def _dead_here(doc: dict[str, Any]) -> bool:
    """A lease of a process on this host that is gone (killed, or stopped while the
    endpoint was down): no need to wait for it to expire."""
    pid = doc.get("pid")
    if doc.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class S3Lease:
    def __init__(self, store: S3Store, ttl: float = DEFAULT_TTL, retry_until: threading.Event | None = None):
        """`retry_until` (the daemon's stop event): while the store is unreachable,
        acquiring waits and tries again (with backoff) until it works or that is set."""
        self.store = store
        self.ttl = ttl
        self.retry_until = retry_until
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.etag: str | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        doc = {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "expires": round(time.time() + self.ttl, 3)}
        return json.dumps(doc).encode()

    def _current(self) -> tuple[dict[str, Any], str] | None:
        found = self.store.get_versioned(LEASE_KEY)
        if found is None:
            return None
        data, etag = found
        try:
            doc = json.loads(data)
        except ValueError:
            doc = {}
        return (doc if isinstance(doc, dict) else {}), etag

    def acquire(self) -> S3Lease:
        delay = 1.0
        while True:
            try:
                return self._acquire()
            except StoreError as exc:
                if self.retry_until is None:
                    raise
                log.error("channel store unavailable; will retry", retry_in=delay, error=str(exc))
                if self.retry_until.wait(delay):
                    return self  # stopping: nothing was taken
                delay = min(60.0, delay * 2)

    def _acquire(self) -> S3Lease:
        for _ in range(5):
            current = self._current()
            if current is None:
                etag = self.store.put_if(LEASE_KEY, self._body(), etag=None)
            else:
                doc, old = current
                expires = doc.get("expires")
                live = isinstance(expires, int | float) and expires > time.time() and not _dead_here(doc)
                if live and doc.get("owner") != self.owner:
                    until = time.strftime("%H:%M:%S", time.localtime(float(expires)))  # type: ignore[arg-type]
                    raise ChannelBusy(f"{self.store.url} is being indexed by {doc.get('owner')} (lease held until {until})")
                etag = self.store.put_if(LEASE_KEY, self._body(), etag=old)
            if etag is not None:
                self.etag = etag
                self.store.lease_held = self.still_held  # what a refused conditional publish write asks
                self._start_renewing()
                return self
            # lost a race for it: read it again
        raise ChannelBusy(f"{self.store.url}: another writer keeps taking the lease")

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except StoreError as exc:  # the store is unreachable: try again; the lease may lapse
                log.warning("could not renew the writer lease", error=str(exc))
            if self.lost.is_set():
                return

    def renew(self) -> None:
        etag = self.store.put_if(LEASE_KEY, self._body(), etag=self.etag)
        if etag is not None:
            self.etag = etag
            return
        current = self._current()
        if current is not None and current[0].get("owner") == self.owner:
            self.etag = current[1]  # our own (an ETag we did not see come back): keep it
            return
        holder = current[0].get("owner") if current else None
        log.error("writer lease lost: another indexer took the channel over", channel=self.store.url, holder=holder)
        self.lost.set()

    def still_held(self) -> bool:
        """Whether the lease object still names this writer (read now). False sets `lost`:
        a publish write the bucket refused (412) means another writer took over."""
        if self.lost.is_set():
            return False
        current = self._current()
        if current is not None and current[0].get("owner") == self.owner:
            return True
        holder = current[0].get("owner") if current else None
        log.error("writer lease lost: another writer replaced a published file and holds the channel",
                  channel=self.store.url, holder=holder)  # fmt: skip
        self.lost.set()
        return False

    def release(self) -> None:
        self.store.lease_held = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.lost.is_set() or self.etag is None:
            return
        with contextlib.suppress(StoreError):
            current = self._current()
            if current is not None and current[0].get("owner") == self.owner:
                self.store.delete(LEASE_KEY)
        self.etag = None

    def __enter__(self) -> S3Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
