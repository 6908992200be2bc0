"""The S3 store's `writer`: a streamed write to a bucket with flat memory (repodata.json is 46 MB
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
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Protocol

from conda_indexd.names import is_output_key
from conda_indexd.stores.base import StoreError, StreamWriter
from conda_indexd.stores.s3.objects import SHA256_META, WriterFenced, condition, etag, fenced_key, holds, object_headers
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

MULTIPART_THRESHOLD = 8 << 20  # bytes; above: a multipart upload from a file on disk
PART_SIZE = 8 << 20  # S3's smallest part (but the last) is 5 MiB


class Bucket(Protocol):
    """The bucket client an upload drives (the S3 store is one): a HEAD, one request by its
    boto3 operation name (errors mapped to StoreError; None for a 404 with missing_ok and
    for a 412), an ordinary write, the sizes that choose between them, and the fence on
    published names (the ETag this process last saw of each)."""

    url: str
    prefix: str
    multipart_threshold: int
    part_size: int
    unaborted: set[tuple[str, str]]  # (full key, upload id) of our uploads an abort failed for

    def head(self, key: str) -> dict[str, Any] | None: ...

    def object_key(self, key: str) -> str: ...

    def request(self, operation: str, *, missing_ok: bool = False, written: int = 0, **params: Any) -> Any: ...

    def write(self, key: str, data: bytes, *, sync: bool = True) -> bool: ...

    def expected(self, key: str, head: dict[str, Any] | None) -> str | None: ...

    def wrote(self, key: str, etag: str | None) -> None: ...

    def breached(self, key: str, expected: str | None, operation: str) -> str | None: ...

    def fenced_message(self, key: str, expected: str | None, operation: str) -> str: ...


class SpooledWriter:
    def __init__(self, bucket: Bucket, key: str):
        self.bucket, self.key = bucket, key
        self.spool: IO[bytes] | None = tempfile.SpooledTemporaryFile(max_size=bucket.multipart_threshold)  # noqa: SIM115 - closed by close()
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
        if self.size <= self.bucket.multipart_threshold:
            try:
                spool.seek(0)
                data = spool.read()
            finally:
                spool.close()
            return self.bucket.write(self.key, data, sync=sync)
        # large: written now even for sync=False (the shards, the only unsynced writes, are small)
        try:
            return upload_file(self.bucket, self.key, spool, self.size, self.sha256.hexdigest())
        finally:
            spool.close()

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None


@contextmanager
def spooled(bucket: Bucket, key: str) -> Iterator[StreamWriter]:
    writer = SpooledWriter(bucket, key)
    try:
        yield writer
    finally:
        writer.close()


def upload_file(bucket: Bucket, key: str, spool: IO[bytes], size: int, digest: str) -> bool:
    """The spooled bytes as `key` by a multipart upload, unless the object holds them;
    True if written. A fenced key (s3bucket.FENCED_NAMES) must still have the ETag this
    process last saw, looked at before the upload and again just before it is completed
    (RGW 16 ignores If-Match on CompleteMultipartUpload; it is sent anyway)."""

    def md5() -> str:
        spool.seek(0)
        h = hashlib.md5()  # noqa: S324 - S3's ETag
        while chunk := spool.read(1 << 20):
            h.update(chunk)
        return h.hexdigest()

    head = bucket.head(key)
    fenced = fenced_key(key)
    expected = bucket.expected(key, head) if fenced else None

    def found(head: dict[str, Any] | None) -> str | None:
        return etag(head.get("ETag")) if head is not None else None

    if head is not None and holds(head, size, digest, md5) and (not fenced or found(head) == expected):
        return False
    if fenced and found(head) != expected:
        expected = bucket.breached(key, expected, "CompleteMultipartUpload")
    full = bucket.object_key(key)
    ctype, cache_control = object_headers(key)
    created = bucket.request("create_multipart_upload", Key=full, ContentType=ctype, CacheControl=cache_control,
                          Metadata={SHA256_META: digest})  # fmt: skip
    upload_id = created["UploadId"]
    try:
        parts: list[dict[str, Any]] = []
        spool.seek(0)
        while piece := spool.read(bucket.part_size):
            number = len(parts) + 1
            done = bucket.request("upload_part", written=len(piece), Key=full, UploadId=upload_id, PartNumber=number, Body=piece)
            parts.append({"PartNumber": number, "ETag": done["ETag"]})
        precondition: dict[str, Any] = {}
        if fenced:
            if (now := found(bucket.head(key))) != expected:
                expected = bucket.breached(key, expected, "CompleteMultipartUpload")
                if now != expected:  # changed again in between: not ours to settle
                    raise WriterFenced(bucket.fenced_message(key, expected, "CompleteMultipartUpload"))
            precondition = condition(expected)
        completed = bucket.request("complete_multipart_upload", Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts},
                                **precondition)  # fmt: skip
        if completed is None:  # 412 from a store that honours the condition
            raise WriterFenced(bucket.fenced_message(key, expected, "CompleteMultipartUpload"))
    except BaseException:
        try:
            bucket.request("abort_multipart_upload", Key=full, UploadId=upload_id)
        except StoreError:
            bucket.unaborted.add((full, upload_id))  # the endpoint is down: aborted by the next sweep
        raise
    bucket.wrote(key, completed.get("ETag") or multipartetag([part["ETag"] for part in parts]))
    for full_key, left in list(bucket.unaborted):  # what an earlier failure could not abort: the endpoint works now
        try:
            bucket.request("abort_multipart_upload", missing_ok=True, Key=full_key, UploadId=left)
            bucket.unaborted.discard((full_key, left))
        except StoreError:
            break
    return True


def multipartetag(part_etags: list[str]) -> str:
    """The ETag S3 (and RGW) give an object completed from these parts: the MD5 of the
    parts' MD5s, then `-` and their count. RGW 16 leaves it out of its
    CompleteMultipartUpload answer; a HEAD to learn it could see another writer's object."""
    digests = b"".join(bytes.fromhex(etag.strip('"')) for etag in part_etags)
    return f"{hashlib.md5(digests).hexdigest()}-{len(part_etags)}"  # noqa: S324 - S3's ETag


# --- our unfinished uploads ---------------------------------------------------------------------

STALE_UPLOAD_AGE = 600.0  # seconds: an unfinished upload of an output this old is not another writer's in progress


def abort_stale_uploads(bucket: Bucket, older_than: float = STALE_UPLOAD_AGE) -> tuple[list[str], StoreError | None]:
    """Abort this indexer's unfinished multipart uploads under the store's prefix: those of
    our outputs started more than `older_than` seconds ago (by a process killed mid-upload:
    a younger one may be another writer's in progress, a package upload is never ours),
    and those this process failed to abort itself. Returns the keys aborted, and the error
    that stopped it early (what it had not aborted is tried again next time)."""
    base = bucket.prefix + "/" if bucket.prefix else ""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
    pending, bucket.unaborted = set(bucket.unaborted), set()
    aborted: list[str] = []
    params: dict[str, Any] = {"Prefix": base}
    try:
        while True:
            page = bucket.request("list_multipart_uploads", **params)
            for upload in page.get("Uploads", ()):
                full, upload_id = str(upload["Key"]), str(upload["UploadId"])
                mine = (full, upload_id) in pending
                stale = is_output_key(full[len(base) :]) and upload["Initiated"] <= cutoff
                if mine or stale:
                    bucket.request("abort_multipart_upload", missing_ok=True, Key=full, UploadId=upload_id)
                    aborted.append(full[len(base) :])
                pending.discard((full, upload_id))
            if not page.get("IsTruncated"):
                return aborted, None
            params = {"Prefix": base, "KeyMarker": page.get("NextKeyMarker", ""), "UploadIdMarker": page.get("NextUploadIdMarker", "")}
    except StoreError as exc:
        bucket.unaborted |= pending  # not aborted yet: tried again next time
        return aborted, exc
