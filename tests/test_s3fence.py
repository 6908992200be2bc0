"""The bucket as its own fence, against the real Ceph RGW: two writers (two S3Store
instances, as two processes would have) on one prefix. The writes that make a publish
visible (shard index, repodata.json, repodata.json.zst) are conditional on the ETag the
writer last wrote or read, so a deposed writer's PUT is refused by RGW with 412 and
raises WriterFenced, and the bucket keeps the new writer's bytes. RGW 16 ignores
conditions on CopyObject and CompleteMultipartUpload: those are checked by a HEAD just
before. With a writer lease, a refusal while the lease is still ours is a change from
outside (replaced, with a warning); once another writer holds the lease, the lease is
lost and the daemon steps back (exit 3)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from conda_indexd.ha.s3lease import LEASE_KEY, S3Lease
from conda_indexd.stores.base import StoreError
from conda_indexd.stores.fenced import Fenced
from conda_indexd.stores.s3.store import S3Store, WriterFenced
from daemonproc import wait_for
from test_s3 import get, package, records, s3_daemon

MiB = 1 << 20
SHARD_INDEX, REPODATA, REPODATA_ZST = "noarch/repodata_shards.msgpack.zst", "noarch/repodata.json", "noarch/repodata.json.zst"


class Statuses:
    """A store's S3Stats: (operation, HTTP status) of every request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def request(self, operation: str, status: str) -> None:
        self.seen.append((operation, status))

    def transferred(self, direction: str, count: int) -> None:
        pass


def writers(bucket: str, **kw: Any) -> tuple[S3Store, S3Store, Statuses]:
    stats = Statuses()
    return S3Store(f"s3://{bucket}/chan", stats=stats, **kw), S3Store(f"s3://{bucket}/chan", **kw), stats


def streamed(store: S3Store, key: str, data: bytes) -> bool:
    with store.writer(key) as w:
        for start in range(0, len(data), MiB):
            w.write(data[start : start + MiB])
        return w.commit()


def test_a_deposed_writers_put_is_refused_by_the_bucket(s3: Any, bucket: str) -> None:
    a, b, a_stats = writers(bucket)
    for key in (SHARD_INDEX, REPODATA, REPODATA_ZST):
        assert a.write(key, b"A1 " + key.encode())  # A publishes
    for key in (SHARD_INDEX, REPODATA, REPODATA_ZST):
        assert b.write(key, b"B1 " + key.encode())  # B publishes: the new writer
    for key in (SHARD_INDEX, REPODATA, REPODATA_ZST):
        with pytest.raises(WriterFenced) as refused:
            a.write(key, b"A2 " + key.encode())
        assert isinstance(refused.value, Fenced) and isinstance(refused.value, StoreError)
        message = str(refused.value)
        assert "412" in message and f"s3://{bucket}/chan/{key}" in message and "\n" not in message
        assert get(s3, bucket, f"chan/{key}") == b"B1 " + key.encode()  # B's bytes, by a plain GET
    assert a_stats.seen.count(("put_object", "412")) == 3  # refused by the server, not by a local check
    with pytest.raises(WriterFenced):  # the streamed writer (one PUT below the threshold) too
        streamed(a, REPODATA, b"A3")
    assert get(s3, bucket, f"chan/{REPODATA}") == b"B1 " + REPODATA.encode()
    # the new writer goes on over its own ETags; the same bytes are no write at all
    assert b.write(REPODATA, b"B2") and not b.write(REPODATA, b"B2")
    assert get(s3, bucket, f"chan/{REPODATA}") == b"B2"
    # a name that is not fenced is written as before (not conditional)
    assert a.write("noarch/run_exports.json", b"{}") and b.write("noarch/run_exports.json", b"{ }")
    # a first write of a fenced name that is absent is If-None-Match: *: a writer that
    # learned it absent loses to one that created it meanwhile
    key = "linux-64/repodata.json"
    assert a.write("linux-64/patch_instructions.json", b"{}") and not a.exists(key)
    a.expected(key, None)  # A has looked: absent
    assert b.write(key, b"B")
    with pytest.raises(WriterFenced):
        a.write(key, b"A")
    assert get(s3, bucket, f"chan/{key}") == b"B"


def test_multipart_and_copy_are_checked_before_they_complete(s3: Any, bucket: str) -> None:
    """RGW 16 ignores If-Match on CompleteMultipartUpload and CopyObject (shown here
    first): the writer's HEAD just before is what refuses, and no upload is left open."""
    a, b, a_stats = writers(bucket, multipart_threshold=MiB, part_size=5 * MiB)
    # what RGW does with the conditions: nothing
    s3.put_object(Bucket=bucket, Key="probe/src", Body=b"src")
    s3.put_object(Bucket=bucket, Key="probe/dst", Body=b"dst")
    s3.copy_object(Bucket=bucket, Key="probe/dst", CopySource={"Bucket": bucket, "Key": "probe/src"}, IfMatch="0" * 32)
    up = s3.create_multipart_upload(Bucket=bucket, Key="probe/dst")["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key="probe/dst", UploadId=up, PartNumber=1, Body=b"mp")
    s3.complete_multipart_upload(Bucket=bucket, Key="probe/dst", UploadId=up, IfMatch="0" * 32,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})  # fmt: skip
    assert get(s3, bucket, "probe/dst") == b"mp"  # both went through: not a fence on RGW 16

    big_a, big_b = os.urandom(7 * MiB), os.urandom(6 * MiB)
    assert streamed(a, REPODATA, big_a)  # multipart
    assert "-" in s3.head_object(Bucket=bucket, Key=f"chan/{REPODATA}")["ETag"]
    assert streamed(b, REPODATA, big_b)
    before = len(a_stats.seen)
    with pytest.raises(WriterFenced) as refused:
        streamed(a, REPODATA, os.urandom(7 * MiB))
    assert "CompleteMultipartUpload" in str(refused.value)
    assert get(s3, bucket, f"chan/{REPODATA}") == big_b
    assert [op for op, _ in a_stats.seen[before:]] == ["head_object"]  # refused before uploading anything
    assert not s3.list_multipart_uploads(Bucket=bucket, Prefix="chan/").get("Uploads")
    # a server-side copy (repodata.json as a twin of repodata_from_packages.json)
    assert a.write("noarch/repodata_from_packages.json.zst", b"A twin")
    assert a.copy("noarch/repodata_from_packages.json.zst", REPODATA_ZST)
    assert b.write(REPODATA_ZST, b"B zst")
    assert a.write("noarch/repodata_from_packages.json.zst", b"A twin 2")
    with pytest.raises(WriterFenced) as refused:
        a.copy("noarch/repodata_from_packages.json.zst", REPODATA_ZST)
    assert "CopyObject" in str(refused.value)
    assert get(s3, bucket, f"chan/{REPODATA_ZST}") == b"B zst"


def test_the_lease_tells_an_outside_change_from_a_new_writer(s3: Any, bucket: str) -> None:
    a = S3Store(f"s3://{bucket}/chan")
    lease = S3Lease(a).acquire()
    try:
        assert a.write(REPODATA, b"A1")
        s3.put_object(Bucket=bucket, Key=f"chan/{REPODATA}", Body=b"edited by hand")  # not a writer
        assert a.write(REPODATA, b"A2")  # the lease is still ours: replaced (with a warning)
        assert get(s3, bucket, f"chan/{REPODATA}") == b"A2" and not lease.lost.is_set()
        # another writer takes the channel over (its lease object), and publishes
        other = {"owner": "elsewhere:1:b", "host": "elsewhere", "pid": 1, "expires": time.time() + 60}
        s3.put_object(Bucket=bucket, Key=f"chan/{LEASE_KEY}", Body=json.dumps(other).encode())
        s3.put_object(Bucket=bucket, Key=f"chan/{REPODATA}", Body=b"B")
        with pytest.raises(WriterFenced):
            a.write(REPODATA, b"A3")
        assert lease.lost.is_set()
        assert get(s3, bucket, f"chan/{REPODATA}") == b"B"
    finally:
        lease.release()
    assert json.loads(get(s3, bucket, f"chan/{LEASE_KEY}") or b"{}")["owner"] == "elsewhere:1:b"  # not ours to delete


def test_a_deposed_daemon_steps_back_without_overwriting(tmp_path: Path, s3: Any, bucket: str) -> None:
    first = package(tmp_path / "p", "first")
    s3.upload_file(str(first), bucket, f"chan/noarch/{first.name}")
    daemon = s3_daemon(tmp_path, bucket, "--polling", "--poll-interval", "0.5").start()
    try:
        wait_for(lambda: first.name in records(s3, bucket, "chan/noarch/repodata.json"), 10.0, what="first publish")
        # a new writer takes over (its lease, its outputs), while this daemon still runs
        other = {"owner": "elsewhere:1:b", "host": "elsewhere", "pid": 1, "expires": time.time() + 120}
        s3.put_object(Bucket=bucket, Key=f"chan/{LEASE_KEY}", Body=json.dumps(other).encode())
        theirs = {k: b"the new writer's " + k.encode() for k in (SHARD_INDEX, REPODATA, REPODATA_ZST)}
        for key, data in theirs.items():
            s3.put_object(Bucket=bucket, Key=f"chan/{key}", Body=data)
        second = package(tmp_path / "q", "second")
        s3.upload_file(str(second), bucket, f"chan/noarch/{second.name}")
        assert daemon.proc is not None
        started = time.monotonic()
        assert daemon.proc.wait(15) == 3  # well before its lease renewal (every 20 s) would notice
        assert time.monotonic() - started < 15
        for key, data in theirs.items():
            assert get(s3, bucket, f"chan/{key}") == data, key
        lines = daemon.log_records()
        failed = [r for r in lines if r.get("event") == "subdir failed; will retry"]
        assert failed and "WriterFenced" in failed[-1]["error"] and "412" in failed[-1]["error"]
        assert any(r.get("event", "").startswith("writer lease lost") for r in lines)
        assert "Traceback" not in daemon.log_text()
    finally:
        daemon.stop()


def test_a_pair_leader_again_writes_over_what_the_other_leader_published(tmp_path: Path, s3: Any, bucket: str, pg_server: Any) -> None:
    """A pair (`--db postgresql`) on a bucket: leadership goes A -> B -> A. A's ETags are
    stale when it leads again; its refused writes are settled by the pair's lease (still
    the leader: written by the previous leader) instead of fencing it for good."""
    import signal

    url = pg_server.createdb("s3fence")
    first = package(tmp_path / "p", "first")
    s3.upload_file(str(first), bucket, f"chan/noarch/{first.name}")
    daemons = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        d = s3_daemon(tmp_path / name, bucket, "--polling", "--poll-interval", "0.5", "--db", "postgresql", "--db-url", url)
        d.extra_env = {"CONDA_INDEXD_LEASE": "3"}
        daemons.append(d)
    a, b = daemons

    def role(d: Any) -> str:
        return str(json.loads(d.get("/status.json")[1])["role"]["role"])

    try:
        a.start()
        wait_for(lambda: role(a) == "leader", 30.0, what="A leads")
        wait_for(lambda: first.name in records(s3, bucket, "chan/noarch/repodata.json"), 10.0, what="A publishes")
        b.start()
        a.signal(signal.SIGSTOP)  # frozen past its lease: B takes over and publishes
        second = package(tmp_path / "q", "second")
        s3.upload_file(str(second), bucket, f"chan/noarch/{second.name}")
        wait_for(lambda: second.name in records(s3, bucket, "chan/noarch/repodata.json"), 20.0, what="B publishes")
        a.signal(signal.SIGCONT)
        wait_for(lambda: role(a) != "leader", 10.0, what="A knows it is not the leader")
        b.stop()  # A leads again, with the ETags of its first leadership
        wait_for(lambda: role(a) == "leader", 30.0, what="A leads again")
        third = package(tmp_path / "r", "third")
        s3.upload_file(str(third), bucket, f"chan/noarch/{third.name}")
        wait_for(lambda: third.name in records(s3, bucket, "chan/noarch/repodata.json"), 20.0, what="A publishes again")
        lines = a.log_records()
        assert any(r.get("event", "").startswith("published file changed from outside") for r in lines)
        assert not [r for r in lines if "WriterFenced" in str(r.get("error", ""))]
        assert "Traceback" not in a.log_text() + b.log_text()
    finally:
        for d in daemons:
            if d.proc is not None and d.proc.poll() is None:
                d.signal(signal.SIGCONT)
            d.stop()
