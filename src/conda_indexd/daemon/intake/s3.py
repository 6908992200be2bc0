"""Change intake for a channel in a bucket (no file system to watch):

- `S3EventsEndpoint`: `POST /s3-events` on the daemon's listener takes the standard S3
  event JSON (`{"Records": [...]}`) that AWS (SNS/EventBridge HTTP targets), MinIO and
  Ceph RGW send. It requires the shared token (header `Authorization: Bearer TOKEN` or
  `X-Conda-Indexd-Token: TOKEN`, or `?token=TOKEN` in the URL: RGW's push endpoint can
  only carry it there); anything else is 401 and queues nothing. It only queues the
  named keys for a re-check (a HEAD by the worker), so a forged event costs a request
  but cannot publish what is not in the bucket. It answers at once: RGW's synchronous
  notifications hold the uploader's PUT until the endpoint answers.
- `S3Poller` (`--polling`): lists every subdir each `--poll-interval` and queues the
  names whose (LastModified, size, ETag) changed since its previous listing, for a
  bucket without notifications. The periodic full rescan (`--rescan-interval`) catches
  anything both missed.
An upload in progress does not exist in S3: a PUT or a completed multipart upload is a
whole object, so names go to the queue as complete (`closed`, or `deleted`).
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Callable, Collection
from typing import Protocol
from urllib.parse import parse_qs, unquote, unquote_plus

from conda_indexd.daemon.queue import EventKind
from conda_indexd.names import is_package_name, is_sidecar_name
from conda_indexd.stores.base import ChannelStore, FileState, StoreError
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

MAX_BODY = 1 << 20  # an event POST larger than this is refused (413)
TOKEN_HEADER = "X-Conda-Indexd-Token"

OnFile = Callable[[str, str, EventKind], None]
OnSubdir = Callable[[str], None]
Count = Callable[[str, int], None]  # outcome (received, queued, ignored, rejected), amount
Answer = tuple[int, str, bytes]


class Headers(Protocol):
    """Request headers, looked up case-insensitively (http.server's message object)."""

    def get(self, name: str, default: str = "", /) -> str: ...


def _text(status: int, body: str) -> Answer:
    return status, "text/plain; charset=utf-8", body.encode()


def key_names(raw: str) -> set[str]:
    """The object key a record names. AWS sends keys URL-encoded (spaces as '+'), RGW
    sends them as they are: both readings are re-checked when they differ (a name that
    does not exist is only a HEAD that finds nothing)."""
    return {raw, unquote_plus(raw), unquote(raw)}


def route_key(key: str, prefix: str, subdirs: Collection[str]) -> tuple[str, str] | None:
    """(subdir, filename) for a package key (or a package's attestation sidecar)
    directly in a watched subdir of the prefix."""
    if prefix:
        if not key.startswith(prefix + "/"):
            return None
        key = key[len(prefix) + 1 :]
    parts = key.split("/")
    if len(parts) != 2 or parts[0] not in subdirs or not (is_package_name(parts[1]) or is_sidecar_name(parts[1])) or not parts[1].isprintable():
        return None
    return parts[0], parts[1]


def parse_records(body: bytes) -> list[tuple[str, str, str]]:
    """(eventName, bucket, key) of each record; ValueError when it is not S3 event JSON
    (also for JSON nested deeper than the parser's recursion limit, and for a record whose
    names are not strings)."""
    try:
        doc = json.loads(body)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    records = doc.get("Records") if isinstance(doc, dict) else None
    if not isinstance(records, list):
        raise ValueError("no Records list")
    out = []
    for record in records:
        s3 = record.get("s3") if isinstance(record, dict) else None
        bucket = s3.get("bucket") if isinstance(s3, dict) else None
        obj = s3.get("object") if isinstance(s3, dict) else None
        name = bucket.get("name") if isinstance(bucket, dict) else None
        key = obj.get("key") if isinstance(obj, dict) else None
        event = record.get("eventName", "") if isinstance(record, dict) else None
        if not isinstance(name, str) or not isinstance(key, str) or not isinstance(event, str):
            raise ValueError("a record without s3.bucket.name and s3.object.key as strings")
        out.append((event, name, key))
    return out


def event_kind(name: str) -> EventKind | None:
    name = name.removeprefix("s3:")
    if name.startswith("ObjectCreated"):
        return EventKind.CLOSED
    if name.startswith("ObjectRemoved"):
        return EventKind.DELETED
    return None  # e.g. s3:TestEvent, lifecycle transitions: nothing to re-check


class S3EventsEndpoint:
    def __init__(self, token: str | None, bucket: str, prefix: str, subdirs: Collection[str], on_file: OnFile, count: Count):
        self.token = token
        self.bucket = bucket
        self.prefix = prefix
        self.subdirs = subdirs
        self.on_file = on_file
        self.count = count

    def authorised(self, query: str, headers: Headers) -> bool:
        if not self.token:
            return False
        offered = [headers.get(TOKEN_HEADER, "")]
        auth = headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            offered.append(auth[len("Bearer ") :])
        offered += parse_qs(query).get("token", [])
        return any(o and hmac.compare_digest(o.encode(), self.token.encode()) for o in offered)

    def handle(self, query: str, headers: Headers, body: bytes) -> Answer:
        if not self.token:
            self.count("rejected", 1)
            return _text(404, "s3 events are off: set CONDA_INDEXD_EVENTS_TOKEN to take them\n")
        if not self.authorised(query, headers):
            self.count("rejected", 1)
            log.warning("s3 event refused: no valid token")
            return _text(401, "a valid token is required\n")
        try:
            records = parse_records(body)
        except ValueError as exc:
            self.count("rejected", 1)
            log.warning("s3 event refused: not S3 event JSON", error=str(exc))
            return _text(400, f"not S3 event JSON: {exc}\n")
        self.count("received", len(records))
        queued = 0
        for event_name, bucket, raw_key in records:
            kind = event_kind(event_name)
            if kind is None or bucket != self.bucket:
                self.count("ignored", 1)
                continue
            hits = {hit for key in key_names(raw_key) if (hit := route_key(key, self.prefix, self.subdirs))}
            if not hits:
                self.count("ignored", 1)
            for subdir, name in sorted(hits):
                self.on_file(subdir, name, kind)
                queued += 1
        self.count("queued", queued)
        return 200, "application/json", json.dumps({"queued": queued}).encode() + b"\n"


class S3Poller:
    """--polling for a bucket: a listing every `interval`, changed names into the queue.
    With interval=None (no --polling: the bucket sends notifications) it does nothing
    and counts as alive; the daemon runs it where a local channel runs its observer."""

    def __init__(self, store: ChannelStore, subdirs: Callable[[], list[str]], on_file: OnFile, on_subdir: OnSubdir,
                 interval: float | None, stopping: threading.Event):  # fmt: skip
        self.store = store
        self.subdirs = subdirs
        self.on_file = on_file
        self.on_subdir = on_subdir
        self.interval = interval
        self.stopping = stopping
        self.seen: dict[str, dict[str, FileState]] = {}
        self.failing = False
        self.thread = threading.Thread(target=self._loop, name="s3-poller", daemon=True)

    def start(self) -> None:
        """The first listing is the baseline (the worker's start-up reconcile covers it);
        taken before the worker starts, so nothing between the two is missed."""
        if self.interval is None:
            return
        self.poll(baseline=True)
        self.thread.start()

    def is_alive(self) -> bool:
        return self.interval is None or self.thread.is_alive()

    def stop(self) -> None:
        self.stopping.set()

    def join(self, timeout: float | None = None) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _loop(self) -> None:
        assert self.interval is not None
        while not self.stopping.wait(self.interval):
            self.poll()

    def _listing(self, subdir: str) -> dict[str, FileState]:
        """The subdir's packages and attestation sidecars, from one listing of every object."""
        present, _ = self.store.stat_files(subdir)
        return {f.path: f for f in present if f.path.isprintable() and (is_package_name(f.path) or is_sidecar_name(f.path))}

    def poll(self, baseline: bool = False) -> None:
        try:
            subdirs = self.subdirs()
            listings = {s: self._listing(s) for s in subdirs}
        except StoreError as exc:
            if not self.failing:
                log.warning("listing the bucket failed; polling on", error=str(exc))
                self.failing = True
            return
        if self.failing:
            log.info("listing the bucket works again")
            self.failing = False
        for subdir, now in listings.items():
            before = self.seen.get(subdir)
            if before is None:
                if not baseline:
                    self.on_subdir(subdir)
                continue
            for name, state in now.items():
                if before.get(name) != state:
                    self.on_file(subdir, name, EventKind.CLOSED)
            for name in before.keys() - now.keys():
                self.on_file(subdir, name, EventKind.DELETED)
        self.seen = listings
