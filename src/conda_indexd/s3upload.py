"""`S3Store.writer`: a streamed write to a bucket with flat memory (repodata.json is 46 MB
at 100k records, 460 MB at 1M).

The pieces go into a temporary file (in memory up to the store's `multipart_threshold`,
then on disk), hashed (sha256) as they arrive. At commit:
- up to the threshold: the bytes are one ordinary `write` (HEAD compare, one PUT);
- above it: a HEAD first (skipped when the object holds these bytes: same size and our
  sha256 in its metadata, or the MD5 ETag of a single-part object, the file read again for
  that only), then a multipart upload in `part_size` parts read back from the file one at
  a time, with the object's Content-Type, Cache-Control and sha256 metadata. The object
  appears whole when CompleteMultipartUpload returns (atomic, as a PUT); any failure
  aborts the upload, so no parts are left behind and the old object stays.
A writer left without commit (or on an exception) discards its file.

`abort_stale_uploads` cleans up after a process killed mid-upload (kill -9, a power cut):
its upload stays open and its parts are kept (and billed) until aborted. At start
(`watch`, `index s3://`) and after a failed run, the unfinished uploads under the prefix
are listed and ours are aborted: keys of our outputs only (never a package), started
more than STALE_UPLOAD_AGE ago (a younger one may be another writer's in progress), and
any this process could not abort itself.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any

from .logs import get_logger
from .store import StoreError, StreamWriter

if TYPE_CHECKING:
    from .s3store import S3Store

log = get_logger("conda_indexd.s3")

MULTIPART_THRESHOLD = 8 << 20  # bytes; above: a multipart upload from a file on disk
PART_SIZE = 8 << 20  # S3's smallest part (but the last) is 5 MiB


class SpooledWriter:
    def __init__(self, store: S3Store, key: str):
        self.store, self.key = store, key
        self.spool: IO[bytes] | None = tempfile.SpooledTemporaryFile(max_size=store.multipart_threshold)  # noqa: SIM115 - closed by close()
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        assert self.spool is not None, "written after commit"
        self.spool.write(data)
        self.sha256.update(data)
        self.size += len(data)

    def commit(self, *, sync: bool = True) -> bool:
        spool, self.spool = self.spool, None
        assert spool is not None, "committed twice"
        if self.size <= self.store.multipart_threshold:
            try:
                spool.seek(0)
                data = spool.read()
            finally:
                spool.close()
            return self.store.write(self.key, data, sync=sync)
        # large: written now even for sync=False (the shards, the only unsynced writes, are small)
        try:
            return upload_file(self.store, self.key, spool, self.size, self.sha256.hexdigest())
        finally:
            spool.close()

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None


@contextmanager
def spooled(store: S3Store, key: str) -> Iterator[StreamWriter]:
    writer = SpooledWriter(store, key)
    try:
        yield writer
    finally:
        writer.close()


def upload_file(store: S3Store, key: str, spool: IO[bytes], size: int, digest: str) -> bool:
    """The spooled bytes as `key` by a multipart upload, unless the object holds them;
    True if written. A fenced key (s3store.FENCED_NAMES) must still have the ETag this
    process last saw, looked at before the upload and again just before it is completed
    (RGW 16 ignores If-Match on CompleteMultipartUpload; it is sent anyway)."""
    from .s3store import SHA256_META, WriterFenced, _condition, _etag, fenced_key, holds, object_headers

    def md5() -> str:
        spool.seek(0)
        h = hashlib.md5()  # noqa: S324 - S3's ETag
        while chunk := spool.read(1 << 20):
            h.update(chunk)
        return h.hexdigest()

    head = store._head(key)
    fenced = fenced_key(key)
    expected = store.expected(key, head) if fenced else None

    def found(head: dict[str, Any] | None) -> str | None:
        return _etag(head.get("ETag")) if head is not None else None

    if head is not None and holds(head, size, digest, md5) and (not fenced or found(head) == expected):
        return False
    if fenced and found(head) != expected:
        expected = store.breached(key, expected, "CompleteMultipartUpload")
    full = store._full(key)
    ctype, cache_control = object_headers(key)
    created = store._call("create_multipart_upload", Key=full, ContentType=ctype, CacheControl=cache_control,
                          Metadata={SHA256_META: digest})  # fmt: skip
    upload_id = created["UploadId"]
    try:
        parts: list[dict[str, Any]] = []
        spool.seek(0)
        while piece := spool.read(store.part_size):
            number = len(parts) + 1
            done = store._call("upload_part", written=len(piece), Key=full, UploadId=upload_id, PartNumber=number, Body=piece)
            parts.append({"PartNumber": number, "ETag": done["ETag"]})
        condition: dict[str, Any] = {}
        if fenced:
            if (now := found(store._head(key))) != expected:
                expected = store.breached(key, expected, "CompleteMultipartUpload")
                if now != expected:  # changed again in between: not ours to settle
                    raise WriterFenced(store._fenced_message(key, expected, "CompleteMultipartUpload"))
            condition = _condition(expected)
        completed = store._call("complete_multipart_upload", Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts},
                                **condition)  # fmt: skip
        if completed is None:  # 412 from a store that honours the condition
            raise WriterFenced(store._fenced_message(key, expected, "CompleteMultipartUpload"))
    except BaseException:
        try:
            store._call("abort_multipart_upload", Key=full, UploadId=upload_id)
        except StoreError:
            store.unaborted.add((full, upload_id))  # the endpoint is down: aborted by the next sweep
        raise
    store.wrote(key, completed.get("ETag") or multipart_etag([part["ETag"] for part in parts]))
    for full_key, left in list(store.unaborted):  # what an earlier failure could not abort: the endpoint works now
        try:
            store._call("abort_multipart_upload", missing_ok=True, Key=full_key, UploadId=left)
            store.unaborted.discard((full_key, left))
        except StoreError:
            break
    return True


def multipart_etag(part_etags: list[str]) -> str:
    """The ETag S3 (and RGW) give an object completed from these parts: the MD5 of the
    parts' MD5s, then `-` and their count. RGW 16 leaves it out of its
    CompleteMultipartUpload answer; a HEAD to learn it could see another writer's object."""
    digests = b"".join(bytes.fromhex(etag.strip('"')) for etag in part_etags)
    return f"{hashlib.md5(digests).hexdigest()}-{len(part_etags)}"  # noqa: S324 - S3's ETag


# --- our unfinished uploads ---------------------------------------------------------------------

STALE_UPLOAD_AGE = 600.0  # seconds: an unfinished upload of an output this old is not another writer's in progress
_OUTPUT = re.compile(
    r"((^|/)(repodata[a-z_]*|current_repodata|run_exports|channeldata|patch_instructions)\.json(\.zst|\.bz2)?"
    r"|(^|/)repodata_shards\.msgpack\.zst|(^|/)shards/[0-9a-f]{64}\.msgpack\.zst|(^|/)(index\.html|rss\.xml))$"
)


def is_output_key(key: str) -> bool:
    """A name this indexer publishes (relative to the prefix: channel files at the top, a
    subdir's outputs, its shards), never a package. Only these uploads are ours to abort."""
    parts = key.split("/")
    if len(parts) == 1:
        return key in ("channeldata.json", "rss.xml", "index.html")
    if len(parts) == 2 or (len(parts) == 3 and parts[1] == "shards"):
        return bool(_OUTPUT.search(key)) and not key.endswith((".conda", ".tar.bz2"))
    return False


def abort_stale_uploads(store: S3Store, older_than: float = STALE_UPLOAD_AGE) -> tuple[list[str], StoreError | None]:
    """Abort this indexer's unfinished multipart uploads under the store's prefix: those of
    our outputs started more than `older_than` seconds ago (by a process killed mid-upload:
    a younger one may be another writer's in progress, a package upload is never ours),
    and those this process failed to abort itself. Returns the keys aborted, and the error
    that stopped it early (what it had not aborted is tried again next time)."""
    base = store.prefix + "/" if store.prefix else ""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
    pending, store.unaborted = set(store.unaborted), set()
    aborted: list[str] = []
    params: dict[str, Any] = {"Prefix": base}
    try:
        while True:
            page = store._call("list_multipart_uploads", **params)
            for upload in page.get("Uploads", ()):
                full, upload_id = str(upload["Key"]), str(upload["UploadId"])
                mine = (full, upload_id) in pending
                stale = is_output_key(full[len(base) :]) and upload["Initiated"] <= cutoff
                if mine or stale:
                    store._call("abort_multipart_upload", missing_ok=True, Key=full, UploadId=upload_id)
                    aborted.append(full[len(base) :])
                pending.discard((full, upload_id))
            if not page.get("IsTruncated"):
                return aborted, None
            params = {"Prefix": base, "KeyMarker": page.get("NextKeyMarker", ""), "UploadIdMarker": page.get("NextUploadIdMarker", "")}
    except StoreError as exc:
        store.unaborted |= pending  # not aborted yet: tried again next time
        return aborted, exc


def clean_uploads(outputs: object, older_than: float | None = None, *, count: Callable[[int], None] | None = None,
                  quiet: bool = False) -> int:  # fmt: skip
    """`abort_stale_uploads` on an output store that is a bucket (under a FencedStore too);
    one log line when any were aborted, `count(n)` for a metric. An unreachable endpoint is
    a warning (at start) or nothing (`quiet`: after a failed run, which is retried anyway).
    Returns how many were aborted."""
    from .s3store import S3Store

    store = getattr(outputs, "inner", outputs)
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
