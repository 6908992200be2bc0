"""S3Store.writer above its multipart threshold, against the real RGW: uploaded in parts
with the published object's headers and sha256, memory bounded by a part and not by the
object, and a failed part (tests/faultproxy.py) aborting the upload with the old object
left whole and no upload left open."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from typing import Any

import pytest

from conda_indexd.stores.base import StoreError
from conda_indexd.stores.s3.store import REVALIDATE, S3Store
from faultproxy import FaultProxy, Rule
from rgwserver import RgwCluster
from test_s3 import get

MiB = 1 << 20
KEY = "noarch/repodata.json"


class Counted:
    """The store's S3Stats: requests by operation."""

    def __init__(self) -> None:
        self.ops: list[str] = []

    def request(self, operation: str, status: str) -> None:
        self.ops.append(operation)

    def transferred(self, direction: str, count: int) -> None:
        pass


def write(store: S3Store, data: bytes, piece: int = MiB) -> bool:
    with store.writer(KEY) as w:
        for start in range(0, len(data), piece):
            w.write(data[start : start + piece])
        return w.commit()


def test_a_big_writer_uploads_in_parts(s3: Any, bucket: str) -> None:
    stats = Counted()
    store = S3Store(f"s3://{bucket}/chan", stats=stats, multipart_threshold=MiB, part_size=5 * MiB)
    data = os.urandom(12 * MiB)
    assert write(store, data) is True
    head = s3.head_object(Bucket=bucket, Key=f"chan/{KEY}")
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 2 MiB
    assert (head["ContentType"], head["CacheControl"]) == ("application/json", REVALIDATE)
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert get(s3, bucket, f"chan/{KEY}") == data
    assert stats.ops.count("upload_part") == 3 and "put_object" not in stats.ops
    stats.ops.clear()
    assert write(store, data, piece=3 * MiB) is False  # the same bytes: one HEAD, nothing uploaded
    assert stats.ops == ["head_object"]
    # at or below the threshold: one PUT, as before
    small = S3Store(f"s3://{bucket}/chan", stats=stats, multipart_threshold=len(data), part_size=5 * MiB)
    assert write(small, data[::-1]) is True and "-" not in s3.head_object(Bucket=bucket, Key=f"chan/{KEY}")["ETag"]


def test_memory_is_bounded_by_a_part_not_by_the_object(bucket: str) -> None:
    store = S3Store(f"s3://{bucket}/chan", multipart_threshold=MiB, part_size=5 * MiB)
    piece = os.urandom(MiB)
    store.client  # noqa: B018 - made before measuring
    tracemalloc.start()
    try:
        with store.writer(KEY) as w:
            for i in range(40):
                w.write(piece[:-1] + bytes([i]))
            assert w.commit() is True
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"peak Python allocations writing 40 MiB: {peak / MiB:.1f} MiB")
    assert peak < 20 * MiB  # a buffered writer holds all 40 MiB (twice, when joined)


def test_a_failed_part_aborts_the_upload(rgw: RgwCluster, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    old = os.urandom(7 * MiB)
    assert write(S3Store(f"s3://{bucket}/chan", multipart_threshold=MiB, part_size=5 * MiB), old)
    with FaultProxy(rgw.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        store = S3Store(f"s3://{bucket}/chan", multipart_threshold=MiB, part_size=5 * MiB)
        for rule in (Rule("PUT", r"partNumber=2", status=503), Rule("POST", r"uploadId=", action="drop")):
            proxy.fail(rule)
            with pytest.raises(StoreError) as failed:
                write(store, os.urandom(11 * MiB))
            assert rule.faulted == 1, rule
            assert "\n" not in str(failed.value) and f"s3://{bucket}/chan" in str(failed.value)
            assert get(s3, bucket, f"chan/{KEY}") == old  # the old object, whole
            assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")  # aborted
