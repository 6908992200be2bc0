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
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

from .store import StoreError, StreamWriter

if TYPE_CHECKING:
    from .s3store import S3Store

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
    True if written."""
    from .s3store import SHA256_META, holds, object_headers

    def md5() -> str:
        spool.seek(0)
        h = hashlib.md5()  # noqa: S324 - S3's ETag
        while chunk := spool.read(1 << 20):
            h.update(chunk)
        return h.hexdigest()

    head = store._head(key)
    if head is not None and holds(head, size, digest, md5):
        return False
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
        store._call("complete_multipart_upload", Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts})
    except BaseException:
        try:
            store._call("abort_multipart_upload", Key=full, UploadId=upload_id)
        except StoreError:
            pass  # the endpoint is down: a lifecycle rule for incomplete uploads cleans up
        raise
    return True
