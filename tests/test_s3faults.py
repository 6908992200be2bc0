"""Faults in the middle of a publish to a bucket: a 5xx, a dropped connection, a stalled
answer, injected by tests/faultproxy.py between conda-indexd and the real RGW.

`index` during the fault exits non-zero with one line and leaves the published set as it
was (repodata.json the old bytes, its .zst the same document, every shard the shard
index names in the bucket, no multipart upload left open); a re-run after the fault
publishes the new packages. `watch` stays alive through it, shows the failed run in its
status and metrics, retries, and publishes once the fault clears.

botocore retries 5xx and dropped connections itself: the faults here last until cleared,
and AWS_MAX_ATTEMPTS=2 (the standard AWS variable) keeps each failed run short.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from daemonproc import wait_for
from faultproxy import FaultProxy, Rule
from pkgfactory import index_json, make_conda
from rgwserver import RgwCluster
from test_s3 import check_consistent, get, package, records, s3_daemon, upload_tree

RETRIES = {"AWS_MAX_ATTEMPTS": "2", "AWS_RETRY_MODE": "standard"}

FAULTS = {
    # the last step of the publish: shards and the shard index are in, repodata.json is refused
    "repodata-503": Rule("PUT", r"/repodata\.json$", status=503),
    # half way through the new shards, the connection is cut without an answer
    "shards-dropped": Rule("PUT", r"/shards/[0-9a-f]{64}\.msgpack\.zst$", action="drop", after=2),
    # the shard index: an answer that never comes (the connection is cut after 2 s)
    "index-stalled": Rule("PUT", r"/repodata_shards\.msgpack\.zst$", action="drop", stall=2.0),
    # every request after the first few writes: 500s
    "every-put-after-3": Rule("PUT", r".", status=500, after=3),
}


@pytest.fixture
def proxy(rgw: RgwCluster) -> Iterator[FaultProxy]:
    with FaultProxy(rgw.endpoint) as p:
        yield p


def published(s3: Any, bucket: str, subdir: str = "noarch") -> dict[str, Any]:
    """The published set, checked whole: parsable repodata.json, its .zst the same
    document, every shard the index names present, no multipart upload open."""
    raw = get(s3, bucket, f"chan/{subdir}/repodata.json")
    assert raw is not None
    doc = json.loads(raw)
    packed = get(s3, bucket, f"chan/{subdir}/repodata.json.zst")
    assert packed is not None and json.loads(zstandard.ZstdDecompressor().decompress(packed)) == doc
    check_consistent(s3, bucket, subdir)
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    return {**doc.get("packages", {}), **doc.get("packages.conda", {})}


def packed_records(s3: Any, bucket: str, subdir: str = "noarch") -> dict[str, Any]:
    """The records of repodata.json.zst: PUT after repodata.json, so a publish is whole
    (for a reader polling a daemon) once they are in it."""
    packed = get(s3, bucket, f"chan/{subdir}/repodata.json.zst")
    if packed is None:
        return {}
    doc = json.loads(zstandard.ZstdDecompressor().decompress(packed))
    return {**doc.get("packages", {}), **doc.get("packages.conda", {})}


def first_publish(tmp_path: Path, s3: Any, bucket: str) -> None:
    for i in range(3):
        package(tmp_path / "first" / "noarch", f"base{i}")
    upload_tree(s3, bucket, "chan", tmp_path / "first")


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_index_through_a_fault_keeps_the_published_set(tmp_path: Path, s3: Any, bucket: str, proxy: FaultProxy, index: Any, fault: str) -> None:
    env = {"AWS_ENDPOINT_URL": proxy.endpoint, **RETRIES}
    args = (f"s3://{bucket}/chan", "--cache-dir", tmp_path / "state")
    first_publish(tmp_path, s3, bucket)
    index(*args, env=env)
    before = get(s3, bucket, "chan/noarch/repodata.json")
    assert sorted(published(s3, bucket)) == [f"base{i}-1.0-0.conda" for i in range(3)]
    for i in range(6):
        package(tmp_path / "more" / "noarch", f"more{i}", f"payload {i}".encode())
    upload_tree(s3, bucket, "chan", tmp_path / "more")

    proxy.fail(FAULTS[fault])
    failed = index(*args, env=env, check=False)
    assert proxy.faulted() >= 1, "the fault never happened"
    assert failed.rc != 0, str(failed)
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in failed.stderr + failed.stdout, str(failed)
    assert f"s3://{bucket}/chan" in lines[0], lines[0]
    print(f"{fault}: rc={failed.rc}: {lines[0]}")
    assert get(s3, bucket, "chan/noarch/repodata.json") == before  # the old document, whole
    assert len(published(s3, bucket)) == 3

    proxy.clear()
    index(*args, env=env)
    now = published(s3, bucket)
    assert sorted(now) == sorted([f"base{i}-1.0-0.conda" for i in range(3)] + [f"more{i}-1.0-0.conda" for i in range(6)])


def test_watch_survives_a_fault_and_publishes_once_it_clears(tmp_path: Path, s3: Any, bucket: str, proxy: FaultProxy) -> None:
    first_publish(tmp_path, s3, bucket)
    daemon = s3_daemon(tmp_path, bucket, "--polling", "--poll-interval", "0.5")
    daemon.extra_env.update({"AWS_ENDPOINT_URL": proxy.endpoint, **RETRIES})
    daemon.start()
    try:
        wait_for(lambda: len(packed_records(s3, bucket)) == 3, 10.0, what="first publish")
        before = get(s3, bucket, "chan/noarch/repodata.json")
        errors = daemon.metric("conda_indexd_subdir_errors_total", subdir="noarch", reason="StoreError")
        proxy.fail(Rule("PUT", r"/repodata\.json$", status=503))
        p = package(tmp_path / "p", "during")
        s3.upload_file(str(p), bucket, f"chan/noarch/{p.name}")
        # failed runs: counted, shown in the status, retried; alive all along
        wait_for(lambda: (daemon.metric("conda_indexd_subdir_errors_total", subdir="noarch", reason="StoreError")) >= errors + 2,
                 30.0, what="two failed runs")  # fmt: skip
        assert proxy.faulted() >= 2
        assert daemon.get("/healthz")[0] == 200
        status = json.loads(daemon.get("/status.json")[1])
        text = json.dumps(status)
        assert "503" in text or "ServiceUnavailable" in text, text[:2000]
        assert get(s3, bucket, "chan/noarch/repodata.json") == before
        published(s3, bucket)
        assert "subdir failed; will retry" in daemon.log_text()

        proxy.clear()
        wait_for(lambda: p.name in packed_records(s3, bucket), 30.0, what="published after the fault")
        assert len(published(s3, bucket)) == 4
        wait_for(lambda: "ServiceUnavailable" not in daemon.get("/status.json")[1].decode(), 5.0, what="the error cleared from the status")
        assert daemon.get("/readyz")[0] == 200
        assert "Traceback" not in daemon.log_text()
    finally:
        daemon.stop()


def big_channel(folder: Path, count: int = 16, depends: int = 30_000) -> list[Path]:
    """Packages whose records make a repodata_from_packages.json of about 10 MiB (long
    depends lists of distinct names), above the 8 MiB multipart threshold."""
    import random

    rng = random.Random(7)
    out = []
    for i in range(count):
        deps = [f"d{rng.getrandbits(48):012x} >=1" for _ in range(depends)]
        out.append(make_conda(folder / f"big{i}-1.0-0.conda", index_json(f"big{i}", depends=deps), {"f.txt": b"x"}))
    return out


def uploads(s3: Any, bucket: str, prefix: str) -> list[str]:
    """The keys of the unfinished multipart uploads under `prefix`, as the bucket lists them."""
    return sorted(u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", ()))


def test_killed_mid_upload_then_our_unfinished_upload_is_aborted(tmp_path: Path, s3: Any, bucket: str, proxy: FaultProxy) -> None:
    """kill -9 while repodata_from_packages.json (about 10 MiB) goes up in 8 MiB parts: its
    multipart upload stays open. A restart aborts it once it is older than the age limit,
    and nothing else: not a package upload, not an upload under another prefix."""
    for path in big_channel(tmp_path / "chan" / "noarch"):
        s3.upload_file(str(path), bucket, f"chan/noarch/{path.name}")
    rule = Rule("PUT", r"repodata_from_packages\.json\?.*partNumber=2", action="drop", stall=300)
    proxy.fail(rule)
    killed = s3_daemon(tmp_path, bucket, "--polling")
    killed.extra_env = {"AWS_ENDPOINT_URL": proxy.endpoint, **RETRIES}
    killed.start(wait_ready=False)
    try:
        wait_for(lambda: rule.faulted >= 1, 120.0, interval=0.2, what="the second part on its way")
        assert killed.proc is not None
        killed.proc.kill()  # SIGKILL: no clean-up of any kind
        killed.proc.wait()
    finally:
        killed.stop()
    proxy.clear()
    assert uploads(s3, bucket, "chan/") == ["chan/noarch/repodata_from_packages.json"]
    # another writer's upload in progress elsewhere, and an uploader's package: never ours
    s3.create_multipart_upload(Bucket=bucket, Key="chan/noarch/incoming-1.0-0.conda")
    s3.create_multipart_upload(Bucket=bucket, Key="other/noarch/repodata.json")

    restarted = s3_daemon(tmp_path, bucket, "--polling")  # the default age (minutes): too young to be ours
    restarted.log_path = tmp_path / "restarted.log"
    with restarted.start(timeout=120):
        assert restarted.metric("conda_indexd_s3_multipart_aborted_total") == 0
    assert uploads(s3, bucket, "chan/") == ["chan/noarch/incoming-1.0-0.conda", "chan/noarch/repodata_from_packages.json"]

    again = s3_daemon(tmp_path, bucket, "--polling", "--stale-upload-age", "0")
    again.log_path = tmp_path / "again.log"
    with again.start(timeout=120):
        assert again.metric("conda_indexd_s3_multipart_aborted_total") == 1
        lines = [r for r in again.log_records() if r.get("event") == "aborted unfinished multipart uploads of ours"]
        assert [(r["count"], r["keys"]) for r in lines] == [(1, ["noarch/repodata_from_packages.json"])]
    assert uploads(s3, bucket, "chan/") == ["chan/noarch/incoming-1.0-0.conda"]  # the package upload is left alone
    assert uploads(s3, bucket, "other/") == ["other/noarch/repodata.json"]
    for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", ()):  # the test's own, before the check below
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    assert len(published(s3, bucket)) == 16  # and the channel is whole


def test_a_failed_publish_then_its_upload_is_aborted(tmp_path: Path, s3: Any, bucket: str, proxy: FaultProxy) -> None:
    """A part refused and the abort refused too (the endpoint failing): the run fails with
    its upload open; the clean-up after the failed run aborts it (ours by its id, however
    young), and the daemon publishes once the fault clears."""
    for path in big_channel(tmp_path / "chan" / "noarch"):
        s3.upload_file(str(path), bucket, f"chan/noarch/{path.name}")
    part, abort = Rule("PUT", r"partNumber=2", status=503), Rule("DELETE", r"uploadId=", status=503, times=2)
    proxy.fail(part, abort)
    daemon = s3_daemon(tmp_path, bucket, "--polling")
    daemon.extra_env = {"AWS_ENDPOINT_URL": proxy.endpoint, **RETRIES}
    with daemon.start(wait_ready=False):
        wait_for(lambda: daemon.metric("conda_indexd_s3_multipart_aborted_total") >= 1, 120.0, interval=0.2, what="the upload aborted")
        assert abort.faulted == 2  # the upload's own abort failed (botocore's two attempts)
        failed = [r for r in daemon.log_records() if r.get("event") == "subdir failed; will retry"]
        assert failed and "upload_part: ServiceUnavailable" in failed[0]["error"]
        assert uploads(s3, bucket, "chan/") == []
        proxy.clear()
        wait_for(lambda: len(records(s3, bucket, "chan/noarch/repodata.json")) == 16, 60.0, what="published after the fault")
    assert len(published(s3, bucket)) == 16
