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
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, Protocol

from conda_indexd.stores.base import StoreError, StreamWriter
from conda_indexd.stores.s3.objects import SHA256_META, holds, object_headers

MULTIPART_THRESHOLD = 8 << 20  # bytes; above: a multipart upload from a file on disk
PART_SIZE = 8 << 20  # S3's smallest part (but the last) is 5 MiB


class Bucket(Protocol):
    """The bucket client an upload drives (the S3 store is one): a HEAD, one request by
    its boto3 operation name (errors mapped to StoreError), an ordinary write, and the
    sizes that choose between them."""

    multipart_threshold: int
    part_size: int

    def head(self, key: str) -> dict[str, Any] | None: ...

    def object_key(self, key: str) -> str: ...

    def request(self, operation: str, *, written: int = 0, **params: Any) -> Any: ...

    def write(self, key: str, data: bytes, *, sync: bool = True) -> bool: ...


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
    True if written."""

    def md5() -> str:
        spool.seek(0)
        h = hashlib.md5()  # noqa: S324 - S3's ETag
        while chunk := spool.read(1 << 20):
            h.update(chunk)
        return h.hexdigest()

    head = bucket.head(key)
    if head is not None and holds(head, size, digest, md5):
        return False
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
        bucket.request("complete_multipart_upload", Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts})
    except BaseException:
        try:
            bucket.request("abort_multipart_upload", Key=full, UploadId=upload_id)
        except StoreError:
            pass  # the endpoint is down: a lifecycle rule for incomplete uploads cleans up
        raise
    return True
