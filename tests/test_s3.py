"""Channels in a bucket, against a real Ceph RGW (tests/rgwserver.py; skips without it):
`index s3://` parity with a local index, one-line errors, the writer lease; the daemon
publishing through real RGW bucket notifications to POST /s3-events, polling without
them, the safe publish order seen by a reader, and an endpoint stopped and restarted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgpack
import pytest
import zstandard

from conda_indexd.ha.s3lease import LEASE_KEY
from conda_indexd.stores.s3.store import IMMUTABLE, REVALIDATE
from daemonproc import DaemonProcess, free_port, wait_for
from faultproxy import FaultProxy
from pkgfactory import index_json, make_conda
from rgwserver import RgwCluster

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "real"
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpus/real")
TOKEN = "test-token-0123456789"


# --- helpers -------------------------------------------------------------------------------------


def upload_tree(s3: Any, bucket: str, prefix: str, folder: Path) -> list[str]:
    keys = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name.endswith((".conda", ".tar.bz2")):
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            s3.upload_file(str(path), bucket, key)
            keys.append(key)
    return keys


def get(s3: Any, bucket: str, key: str) -> bytes | None:
    try:
        return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def records(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    data = get(s3, bucket, key)
    if data is None:
        return {}
    doc = json.loads(data)
    return {**doc.get("packages", {}), **doc.get("packages.conda", {})}


def shard_index(blob: bytes | None) -> dict[str, Any]:
    """A shard index without its created_at (the time of the run)."""
    assert blob is not None
    doc = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(blob))
    doc["info"].pop("created_at")
    return dict(doc)


def generated_channel(folder: Path, count: int = 6) -> Path:
    for i in range(count):
        subdir = "noarch" if i % 2 else "linux-64"
        make_conda(folder / subdir / f"pkg{i}-1.0-0.conda", index_json(f"pkg{i}", subdir=subdir, depends=["python"]),
                   {f"lib/f{i}.txt": b"x" * (100 + i)})  # fmt: skip
    return folder


def package(folder: Path, name: str, payload: bytes = b"hello", version: str = "1.0") -> Path:
    return make_conda(folder / f"{name}-{version}-0.conda", index_json(name, version), {"share/data.bin": payload})


def subscribe(rgw: RgwCluster, s3: Any, bucket: str, port: int) -> None:
    """An RGW topic pushing to the daemon's /s3-events (token in the URL: RGW's push
    endpoint can carry nothing else), synchronous (not persistent)."""
    from s3fixtures import admin_client

    sns = admin_client(rgw, "sns")
    topic = sns.create_topic(Name=f"{bucket}-events", Attributes={
        "push-endpoint": f"http://127.0.0.1:{port}/s3-events?token={TOKEN}", "persistent": "false"})  # fmt: skip
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"TopicConfigurations": [
        {"Id": "conda-indexd", "TopicArn": topic["TopicArn"], "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})  # fmt: skip


def s3_daemon(tmp_path: Path, bucket: str, *extra: str, port: int | None = None) -> DaemonProcess:
    """`watch s3://BUCKET/chan`, taking events with TOKEN when a port is given (the one
    the bucket's topic pushes to)."""
    d = DaemonProcess(tmp_path, debounce=0.2, log=tmp_path / "daemon.log")
    d.args[d.args.index(str(tmp_path))] = f"s3://{bucket}/chan"
    d.args += ["--cache-dir", str(tmp_path / "state"), *extra]
    if port is not None:
        d.port = port
        d.args[d.args.index("--listen") + 1] = f"127.0.0.1:{port}"
        (tmp_path / "token").write_text(TOKEN + "\n")
        d.args += ["--events-token-file", str(tmp_path / "token")]
    return d


def post_events(port: int, body: bytes, query: str = "", headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/s3-events{query}", data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


# --- index s3:// ---------------------------------------------------------------------------------


def unstamped(data: bytes) -> bytes:
    return re.sub(rb'"indexed_timestamp":\d+,', b"", data)


def test_index_s3_gives_the_local_index_bytes(tmp_path: Path, s3: Any, bucket: str, index: Any) -> None:
    source = CORPUS if CORPUS.is_dir() else generated_channel(tmp_path / "generated")
    upload_tree(s3, bucket, "chan", source)
    local = tmp_path / "local"
    shutil.copytree(source, local, ignore=shutil.ignore_patterns("*.tsv", "*.md"))
    index(local)
    state = tmp_path / "state"
    first = index(f"s3://{bucket}/chan", "--cache-dir", state)  # type: ignore[arg-type]
    assert first.summary["channel"] == f"s3://{bucket}/chan"
    subdirs = [r["subdir"] for r in first.events("subdir indexed")]
    assert subdirs and all((local / s / "repodata.json").is_file() for s in subdirs)
    for subdir in subdirs:
        for name in ("repodata.json", "repodata_from_packages.json"):
            # the same bytes but for when each file entered its channel (CEP-47)
            assert unstamped(get(s3, bucket, f"chan/{subdir}/{name}")) == unstamped((local / subdir / name).read_bytes()), (subdir, name)
        # a bucket's file entered it when it was uploaded: its LastModified (earlier than the run)
        doc = json.loads(get(s3, bucket, f"chan/{subdir}/repodata.json"))
        for fn, record in {**doc["packages"], **doc["packages.conda"]}.items():
            uploaded = s3.head_object(Bucket=bucket, Key=f"chan/{subdir}/{fn}")["LastModified"]
            assert record["indexed_timestamp"] == int(uploaded.timestamp() * 1000), fn
        remote_index = shard_index(get(s3, bucket, f"chan/{subdir}/repodata_shards.msgpack.zst"))
        local_index = shard_index((local / subdir / "repodata_shards.msgpack.zst").read_bytes())
        assert remote_index["info"] == local_index["info"] and remote_index["shards"].keys() == local_index["shards"].keys()
        published = {o["Key"].removeprefix(f"chan/{subdir}/") for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"chan/{subdir}/shards/")["Contents"]}
        assert published == {f"shards/{d.hex()}.msgpack.zst" for d in remote_index["shards"].values()}
        # each shard holds the local one's records but for indexed_timestamp (CEP-47), and that is repodata.json's
        dctx = zstandard.ZstdDecompressor()
        for name, digest in remote_index["shards"].items():
            theirs = msgpack.unpackb(dctx.decompress(get(s3, bucket, f"chan/{subdir}/shards/{digest.hex()}.msgpack.zst")))
            mine = msgpack.unpackb(dctx.decompress((local / subdir / "shards" / f"{local_index['shards'][name].hex()}.msgpack.zst").read_bytes()))
            for section in ("packages", "packages.conda"):
                assert {fn: r["indexed_timestamp"] for fn, r in theirs[section].items()} == {
                    fn: r["indexed_timestamp"] for fn, r in doc[section].items() if fn in theirs[section]
                }
                for records in (theirs[section], mine[section]):
                    for r in records.values():
                        r.pop("indexed_timestamp")
            assert theirs == mine, name
        # the caches live in the state folder, with the ETag as the change identity
        with sqlite3.connect(state / subdir / "cache.db") as db:
            rows = db.execute("SELECT path, etag, mtime FROM stat WHERE stage = 'indexed'").fetchall()
        assert rows and all(len(etag) == 32 and mtime > 1e9 for _, etag, mtime in rows)
    assert not list(local.glob("*/cache.db")) and not (tmp_path / "chan").exists()
    # headers as the nginx config serves them
    repodata = s3.head_object(Bucket=bucket, Key=f"chan/{subdirs[0]}/repodata.json")
    assert (repodata["ContentType"], repodata["CacheControl"]) == ("application/json", REVALIDATE)
    shard = next(iter(shard_index(get(s3, bucket, f"chan/{subdirs[0]}/repodata_shards.msgpack.zst"))["shards"].values())).hex() + ".msgpack.zst"
    head = s3.head_object(Bucket=bucket, Key=f"chan/{subdirs[0]}/shards/{shard}")
    assert (head["ContentType"], head["CacheControl"]) == ("application/zstd", IMMUTABLE)
    # a second run reads nothing and writes nothing
    again = index(f"s3://{bucket}/chan", "--cache-dir", state)  # type: ignore[arg-type]
    assert again.summary["extracted"] == 0
    assert all(r["written"] == [] and r["shards_written"] == 0 for r in again.events("subdir indexed"))


def test_a_no_op_rerun_reads_and_writes_nothing(tmp_path: Path, rgw: RgwCluster, s3: Any, bucket: str, index: Any) -> None:
    """A re-run over an unchanged bucket, counted from outside the client (every request
    the proxy sends on): listings, the writer lease, the start-up checks (the bucket, our
    unfinished uploads) and one look for each subdir's patch_instructions.json, and nothing
    else: no GET or HEAD of a package, an output or a shard, no PUT, no copy, no delete."""
    upload_tree(s3, bucket, "chan", generated_channel(tmp_path / "chan", 60))
    args = (f"s3://{bucket}/chan", "--cache-dir", tmp_path / "state")
    with FaultProxy(rgw.endpoint) as proxy:
        env = {"AWS_ENDPOINT_URL": proxy.endpoint}
        index(*args, env=env)
        del proxy.journal[:]
        again = index(*args, env=env)
        sent = [(r.method, r.target) for r in proxy.journal]
    assert again.summary["extracted"] == 0
    lease = f"/{bucket}/chan/{LEASE_KEY}"
    listings = [t for m, t in sent if m == "GET" and t.startswith(f"/{bucket}?list-type=2")]
    others = sorted((m, t.split("?")[0]) for m, t in sent if not (m == "GET" and t.startswith(f"/{bucket}?list-type=2")))
    assert others == sorted([
        ("HEAD", f"/{bucket}"),  # check(): the bucket is there and these credentials may use it
        ("GET", f"/{bucket}"),  # our unfinished multipart uploads (?uploads)
        ("GET", lease), ("GET", lease), ("PUT", lease), ("DELETE", lease),  # the writer lease: taken, released
    ]), sent  # fmt: skip
    # the channel's subdirs, then one listing of each subdir (one page here): its packages,
    # outputs and shards; patch_instructions.json is not read again (its ETag is unchanged)
    assert len(listings) == 1 + 2, listings
    queries = [parse_qs(urlsplit(t).query) for t in listings]
    assert [(q["prefix"], q.get("delimiter")) for q in queries] == [(["chan/"], ["/"]), (["chan/linux-64/"], None), (["chan/noarch/"], None)]


def test_a_long_listing_is_listed_in_ranges_at_once(s3: Any, bucket: str) -> None:
    """`list_subdir` of a prefix with more than a page of keys: the rest after the first
    page in key ranges listed at once (split at first characters, then at the last
    listing's own keys), with the same keys as one listing: in order, none twice, none
    missed, also keys right at, around and between the split points."""
    from concurrent.futures import ThreadPoolExecutor

    from conda_indexd.stores.s3.store import S3Store, _guess_splits

    names = [f"{c}{k:03d}-1-0.conda" for c in "abpz" for k in range(20)]
    names += [p[len("chan/noarch/") :] for p in _guess_splits("chan/noarch/")]  # keys equal to a split point
    names += [p[len("chan/noarch/") :] + suffix for p in _guess_splits("chan/noarch/") for suffix in ("!", "~")]
    names += ["", "0", "A-1-0.conda", "~", "\u00e9t\u00e9-1-0.conda", "repodata.json", "shards/", "shards/00.msgpack.zst",
              "shards/ff.msgpack.zst", "shards/z/deeper", ".cache/cache.json"]  # fmt: skip
    names = sorted(set(names) - {""})

    def put(name: str) -> None:
        s3.put_object(Bucket=bucket, Key=f"chan/noarch/{name}", Body=b"x")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, names))
    s3.put_object(Bucket=bucket, Key="chan/noarch0", Body=b"x")  # beside the prefix: never listed
    requests = Requests()
    store = S3Store(f"s3://{bucket}/chan", stats=requests)
    store.page = 25
    assert [n for n, *_ in store._list_all("chan/noarch/")] == names
    first = requests.seen.count("list_objects_v2")
    assert first > len(names) // 25  # the ranges overshoot their ends a little
    # the next listing splits at every 22nd key of this one (9/10 of a page): one page per range, all at once
    for name in ("b000-1-0.conda", "p019-1-0.conda"):
        s3.delete_object(Bucket=bucket, Key=f"chan/noarch/{name}")
        names.remove(name)
    for name in ("b000a-1-0.conda", "c-1-0.conda", "zz-1-0.conda"):
        put(name)
        names.append(name)
    names.sort()
    requests.seen.clear()
    assert [n for n, *_ in store._list_all("chan/noarch/")] == names
    assert requests.seen.count("list_objects_v2") <= len(names) // 22 + 2
    listing = store.list_subdir("noarch")
    assert [f.path for f in listing] == [n for n in names if n.endswith(".conda") and "/" not in n and n != ".cache/cache.json"]
    in_shards = [n.removeprefix("shards/") for n in names if n.startswith("shards/")]
    assert listing.shards == {n: 1 for n in in_shards if n and "/" not in n} and "ff.msgpack.zst" in listing.shards
    assert [f.path for f in listing.files or []] == [n for n in names if "/" not in n and not n.endswith(".conda")]


def test_only_an_extract_worker_reads_through_obstore(bucket: str) -> None:
    """obstore's runtime does not survive a fork: the store of the process that forks the
    extract workers never makes obstore's client; the store a worker unpickles (one per
    process and address) reads packages through it, and gets them whole."""
    import pickle

    from conda_indexd.stores.s3.store import S3Store

    pytest.importorskip("obstore")
    parent = S3Store(f"s3://{bucket}/chan")
    parent.write("noarch/pkg-1.0-0.conda", b"archive bytes")
    assert parent.reader is None
    worker = pickle.loads(pickle.dumps(parent))
    assert worker is pickle.loads(pickle.dumps(parent)) and worker is not parent
    assert worker.reader is not None
    with worker.open_package("noarch", "pkg-1.0-0.conda") as f:
        assert f.read() == b"archive bytes"
    with pytest.raises(FileNotFoundError):
        worker.open_package("noarch", "gone-1.0-0.conda")


class Requests:
    """The store's request counter (its S3Stats)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def request(self, operation: str, status: str) -> None:
        self.seen.append(operation)

    def transferred(self, direction: str, count: int) -> None:
        pass


def test_copy_is_one_server_side_copy_with_the_destinations_headers(s3: Any, bucket: str) -> None:
    from conda_indexd.stores.s3.store import S3Store

    requests = Requests()
    store = S3Store(f"s3://{bucket}/chan", stats=requests)
    data = b'{"info":{}}' * 1000
    store.write("noarch/repodata_from_packages.json.zst", data)  # an application/zstd object
    requests.seen.clear()
    assert store.copy("noarch/repodata_from_packages.json.zst", "noarch/notes.json")
    assert "put_object" not in requests.seen and requests.seen.count("copy_object") == 1
    head = s3.head_object(Bucket=bucket, Key="chan/noarch/notes.json")
    assert (head["ContentType"], head["CacheControl"]) == ("application/json", "public, max-age=60")
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert get(s3, bucket, "chan/noarch/notes.json") == data
    requests.seen.clear()
    assert store.copy("noarch/repodata_from_packages.json.zst", "noarch/notes.json") is False
    assert requests.seen == ["head_object", "head_object"]
    s3.put_object(Bucket=bucket, Key="chan/noarch/repodata.json", Body=data)  # by another tool: no sha256
    assert store.copy("noarch/repodata_from_packages.json.zst", "noarch/repodata.json") is False  # the same ETag
    s3.put_object(Bucket=bucket, Key="chan/noarch/repodata.json", Body=data[::-1])
    from conda_indexd.stores.s3.store import WriterFenced  # repodata.json changed since this writer saw it: not replaced

    with pytest.raises(WriterFenced):  # (without a writer lease, another writer is all it can be; tests/test_s3fence.py)
        store.copy("noarch/repodata_from_packages.json.zst", "noarch/repodata.json")
    assert get(s3, bucket, "chan/noarch/repodata.json") == data[::-1]
    store = S3Store(f"s3://{bucket}/chan", stats=requests)  # a new writer takes what is there
    assert store.copy("noarch/repodata_from_packages.json.zst", "noarch/repodata.json") is True
    head = s3.head_object(Bucket=bucket, Key="chan/noarch/repodata.json")
    assert (head["ContentType"], head["CacheControl"]) == ("application/json", REVALIDATE)
    assert get(s3, bucket, "chan/noarch/repodata.json") == data


def test_same_size_reupload_is_rehashed(tmp_path: Path, s3: Any, bucket: str, index: Any) -> None:
    a = package(tmp_path / "a", "same", b"A" * 4000)
    b = package(tmp_path / "b", "same", b"B" * 4000)
    assert a.stat().st_size == b.stat().st_size and a.read_bytes() != b.read_bytes()
    key = f"chan/noarch/{a.name}"
    s3.upload_file(str(a), bucket, key)
    args = (f"s3://{bucket}/chan", "--cache-dir", tmp_path / "state")
    index(*args)
    first = records(s3, bucket, "chan/noarch/repodata.json")[a.name]["sha256"]
    s3.upload_file(str(b), bucket, key)  # same key, same size, within the same second or not
    result = index(*args)
    second = records(s3, bucket, "chan/noarch/repodata.json")[a.name]["sha256"]
    assert result.summary["extracted"] == 1
    assert (first, second) == (hashlib.sha256(a.read_bytes()).hexdigest(), hashlib.sha256(b.read_bytes()).hexdigest())


def test_state_folder_default_and_output_to_a_bucket(tmp_path: Path, s3: Any, bucket: str, index: Any, cli: Any, channel: Path) -> None:
    p = package(tmp_path / "p", "placed")
    s3.upload_file(str(p), bucket, f"chan/noarch/{p.name}")
    index(f"s3://{bucket}/chan", env={"XDG_STATE_HOME": str(tmp_path / "xdg")})
    assert (tmp_path / "xdg" / "conda-indexd" / bucket / "chan" / "noarch" / "cache.db").is_file()
    # a local channel published into a bucket: cache.db stays in the channel
    package(channel / "noarch", "local")
    index(channel, "--output", f"s3://{bucket}/out")
    assert "local-1.0-0.conda" in records(s3, bucket, "out/noarch/repodata.json")
    assert (channel / "noarch" / ".cache" / "cache.db").is_file() and not (channel / "noarch" / "repodata.json").exists()
    refused = cli("index", channel, "--cache-dir", tmp_path / "elsewhere")
    assert refused.rc == 2 and "only for s3://" in refused.stderr


@pytest.mark.parametrize("case", ["no-bucket", "credentials", "endpoint", "address"])
def test_index_errors_are_one_line_exit_2(tmp_path: Path, rgw: RgwCluster, bucket: str, cli: Any, case: str) -> None:
    url, env = f"s3://{bucket}/chan", {}
    if case == "no-bucket":
        url = "s3://no-such-bucket-here/chan"
    elif case == "credentials":
        env = {"AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    elif case == "endpoint":
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    else:
        url = "s3://Bad_Bucket/x"
    started = time.monotonic()
    result = cli("index", url, "--cache-dir", tmp_path / "state", env=env, timeout=60)
    assert result.rc == 2, str(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, str(result)
    expected = {"no-bucket": "does not exist", "credentials": "access denied", "endpoint": "127.0.0.1", "address": "bucket name"}[case]
    assert expected in lines[0], lines[0]
    assert time.monotonic() - started < 30


def test_writer_lease(tmp_path: Path, s3: Any, bucket: str, index: Any, cli: Any) -> None:
    package(tmp_path / "p", "leased")
    s3.upload_file(str(tmp_path / "p" / "leased-1.0-0.conda"), bucket, "chan/noarch/leased-1.0-0.conda")
    other = {"owner": "elsewhere:1:abcd", "host": "elsewhere", "pid": 1, "expires": time.time() + 300}
    s3.put_object(Bucket=bucket, Key=f"chan/{LEASE_KEY}", Body=json.dumps(other).encode())
    refused = cli("index", f"s3://{bucket}/chan", "--cache-dir", tmp_path / "state")
    assert refused.rc == 3 and "elsewhere:1:abcd" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, str(refused)
    assert get(s3, bucket, "chan/noarch/repodata.json") is None  # nothing published
    other["expires"] = time.time() - 1  # a lease that ran out is taken over
    s3.put_object(Bucket=bucket, Key=f"chan/{LEASE_KEY}", Body=json.dumps(other).encode())
    index(f"s3://{bucket}/chan", "--cache-dir", tmp_path / "state")
    assert "leased-1.0-0.conda" in records(s3, bucket, "chan/noarch/repodata.json")
    assert get(s3, bucket, f"chan/{LEASE_KEY}") is None  # released at the end


def test_rattler_solves_and_installs_from_a_public_read_bucket_with_shards(tmp_path: Path, rgw: RgwCluster, s3: Any, bucket: str, index: Any) -> None:
    """The bucket as a CDN origin: anonymous HTTP GETs, sharded repodata only (the
    monolithic repodata.json is removed after indexing, so a solve can only use shards)."""
    rattler = pytest.importorskip("rattler", reason="py-rattler is a test dependency: pip install -e '.[test]'")
    from test_nginx import _solve, installable

    installable(tmp_path / "pkgs" / "noarch", "lib", "1.0")
    installable(tmp_path / "pkgs" / "noarch", "app", "1.0", ["lib >=1.0"])
    upload_tree(s3, bucket, "chan", tmp_path / "pkgs")
    index(f"s3://{bucket}/chan", "--cache-dir", tmp_path / "state")
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{bucket}/*"]},
        # without ListBucket a missing key is a 403, and rattler stops at an absent subdir
        {"Effect": "Allow", "Principal": "*", "Action": ["s3:ListBucket"], "Resource": [f"arn:aws:s3:::{bucket}"]}]}))  # fmt: skip
    for name in ("repodata.json", "repodata.json.zst"):
        s3.delete_object(Bucket=bucket, Key=f"chan/noarch/{name}")
    url = f"{rgw.endpoint}/{bucket}/chan/"
    with urllib.request.urlopen(url + "noarch/repodata_shards.msgpack.zst", timeout=5) as resp:  # anonymous
        assert resp.status == 200 and resp.headers["Cache-Control"] == REVALIDATE
    records = _solve([url], ["app"], tmp_path / "rattler-cache")
    assert sorted((r.name.normalized, str(r.version)) for r in records) == [("app", "1.0"), ("lib", "1.0")]
    prefix = tmp_path / "env"
    asyncio.run(rattler.install(records, prefix, cache_dir=tmp_path / "rattler-pkgs", show_progress=False))
    assert (prefix / "share" / "app" / "version.txt").read_text() == "app 1.0\n"


# --- the daemon ----------------------------------------------------------------------------------


def test_events_publish_through_rgw_notifications(tmp_path: Path, rgw: RgwCluster, s3: Any, bucket: str) -> None:
    port = free_port()
    subscribe(rgw, s3, bucket, port)
    daemon = s3_daemon(tmp_path, bucket, port=port).start()
    try:
        # a PUT is published within 2 s
        p = package(tmp_path / "p", "evented")
        started = time.monotonic()
        s3.upload_file(str(p), bucket, f"chan/noarch/{p.name}")
        wait_for(lambda: p.name in records(s3, bucket, "chan/noarch/repodata.json"), 2.0, what="published within 2 s")
        latency = time.monotonic() - started
        # a multipart upload of a big package (12 MiB of incompressible data)
        from boto3.s3.transfer import TransferConfig

        big = package(tmp_path / "big", "bigpkg", os.urandom(12 << 20))
        s3.upload_file(str(big), bucket, f"chan/noarch/{big.name}", Config=TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20))
        assert "-" in s3.head_object(Bucket=bucket, Key=f"chan/noarch/{big.name}")["ETag"]  # really multipart
        wait_for(lambda: big.name in records(s3, bucket, "chan/noarch/repodata.json"), 5.0, what="multipart package published")
        assert records(s3, bucket, "chan/noarch/repodata.json")[big.name]["size"] == big.stat().st_size
        # a same-size re-upload under the same key gets the new sha256
        a = package(tmp_path / "a", "resized", b"A" * 3000)
        b = package(tmp_path / "b", "resized", b"B" * 3000)
        assert a.stat().st_size == b.stat().st_size
        s3.upload_file(str(a), bucket, f"chan/noarch/{a.name}")
        wait_for(lambda: a.name in records(s3, bucket, "chan/noarch/repodata.json"), 2.0, what="first upload")
        s3.upload_file(str(b), bucket, f"chan/noarch/{b.name}")
        new = hashlib.sha256(b.read_bytes()).hexdigest()
        wait_for(lambda: records(s3, bucket, "chan/noarch/repodata.json")[b.name]["sha256"] == new, 2.0, what="new sha256")
        # a DELETE removes it
        s3.delete_object(Bucket=bucket, Key=f"chan/noarch/{p.name}")
        wait_for(lambda: p.name not in records(s3, bucket, "chan/noarch/repodata.json"), 2.0, what="deleted package gone")
        # a forged event without the token: 401, nothing queued
        forged = json.dumps({"Records": [{"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": bucket},
                            "object": {"key": f"chan/noarch/{a.name}"}}}]}).encode()  # fmt: skip
        queued = daemon.metric("conda_indexd_s3_events_total", outcome="queued")
        assert post_events(port, forged) == 401
        assert post_events(port, forged, "?token=wrong") == 401
        assert post_events(port, forged, headers={"Authorization": "Bearer nope"}) == 401
        assert post_events(port, b"not json", f"?token={TOKEN}") == 400
        assert daemon.metric("conda_indexd_s3_events_total", outcome="queued") == queued
        assert daemon.metric("conda_indexd_s3_events_total", outcome="rejected") == 4
        assert daemon.metric("conda_indexd_queue_pending") == 0
        # the token in a header works too (a forged but authorised event only re-checks)
        assert post_events(port, forged, headers={"X-Conda-Indexd-Token": TOKEN}) == 200
        time.sleep(1.0)
        assert a.name in records(s3, bucket, "chan/noarch/repodata.json")  # still there: it exists
        m = daemon.metrics()
        assert m["conda_indexd_s3_events_total", (("outcome", "received"),)] >= 5
        assert m["conda_indexd_s3_requests_total", (("operation", "put_object"), ("status", "200"))] > 0
        assert m["conda_indexd_s3_bytes_total", (("direction", "read"),)] >= big.stat().st_size
        status = json.loads(daemon.get("/status.json")[1])
        assert json.dumps(status).count(f"s3://{bucket}/chan") >= 1
        print(f"PUT -> published: {latency:.2f} s")
    finally:
        daemon.stop()


def test_polling_without_notifications(tmp_path: Path, s3: Any, bucket: str) -> None:
    daemon = s3_daemon(tmp_path, bucket, "--polling", "--poll-interval", "1").start()
    try:
        p = package(tmp_path / "p", "polled")
        s3.upload_file(str(p), bucket, f"chan/noarch/{p.name}")
        started = time.monotonic()
        wait_for(lambda: p.name in records(s3, bucket, "chan/noarch/repodata.json"), 4.0, what="published by polling")
        assert time.monotonic() - started < 1 + 0.2 + 2  # the interval, the debounce, the run
        # the daemon saw it at a poll, after it was uploaded: CEP-47's value is the upload (LastModified)
        uploaded = s3.head_object(Bucket=bucket, Key=f"chan/noarch/{p.name}")["LastModified"]
        assert records(s3, bucket, "chan/noarch/repodata.json")[p.name]["indexed_timestamp"] == int(uploaded.timestamp() * 1000)
        s3.delete_object(Bucket=bucket, Key=f"chan/noarch/{p.name}")
        wait_for(lambda: p.name not in records(s3, bucket, "chan/noarch/repodata.json"), 4.0, what="removed by polling")
        assert daemon.metric("conda_indexd_s3_events_total", outcome="received") == 0
    finally:
        daemon.stop()


def test_reader_never_sees_a_broken_index_during_30_publishes(tmp_path: Path, rgw: RgwCluster, s3: Any, bucket: str) -> None:
    port = free_port()
    subscribe(rgw, s3, bucket, port)
    daemon = s3_daemon(tmp_path, bucket, port=port).start()
    problems: list[str] = []
    versions: set[bytes] = set()
    done = threading.Event()

    def reader() -> None:
        from s3fixtures import admin_client

        client = admin_client(rgw)
        while not done.is_set():
            raw = get(client, bucket, "chan/noarch/repodata.json")
            index_blob = get(client, bucket, "chan/noarch/repodata_shards.msgpack.zst")
            if raw is None or index_blob is None:
                continue
            try:
                json.loads(raw)
                shard_index = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(index_blob))
            except ValueError as exc:
                problems.append(f"unparsable: {exc}")
                continue
            versions.add(raw)
            for name, digest in shard_index["shards"].items():
                if get(client, bucket, f"chan/noarch/shards/{digest.hex()}.msgpack.zst") is None:
                    problems.append(f"index names a missing shard for {name}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(30):
            p = package(tmp_path / "many", f"many{i}")
            s3.upload_file(str(p), bucket, f"chan/noarch/{p.name}")
            wait_for(lambda p=p: p.name in records(s3, bucket, "chan/noarch/repodata.json"), 5.0, what=f"publish {i}")
    finally:
        done.set()
        thread.join(30)
        daemon.stop()
    assert problems == []
    assert len(versions) >= 10  # the reader really saw the publishes go by


def check_consistent(s3: Any, bucket: str, subdir: str) -> dict[str, Any]:
    """The published set of a subdir: JSON that parses, a shard index naming only shards
    that are there. Returns the records."""
    doc = records(s3, bucket, f"chan/{subdir}/repodata.json")
    index_blob = get(s3, bucket, f"chan/{subdir}/repodata_shards.msgpack.zst")
    assert index_blob is not None
    for digest in msgpack.unpackb(zstandard.ZstdDecompressor().decompress(index_blob))["shards"].values():
        assert get(s3, bucket, f"chan/{subdir}/shards/{digest.hex()}.msgpack.zst") is not None
    return doc


def test_endpoint_stopped_mid_index_keeps_the_published_set(tmp_path: Path, rgw: RgwCluster, s3: Any, bucket: str, index: Any) -> None:
    first = tmp_path / "first"
    for i in range(3):
        package(first / "noarch", f"base{i}")
    upload_tree(s3, bucket, "chan", first)
    args = (f"s3://{bucket}/chan", "--cache-dir", tmp_path / "state")
    index(*args)
    before = get(s3, bucket, "chan/noarch/repodata.json")
    more = tmp_path / "more"
    for i in range(300):
        package(more / "noarch", f"more{i}")
    upload_tree(s3, bucket, "chan", more)
    # the run goes through a proxy only to be seen reading the new packages: the first GET
    # of one is held there until the endpoint is stopped (a fixed sleep raced with the run)
    reading, stopped = threading.Event(), threading.Event()

    def hold(sent: Any) -> None:
        if sent.method == "GET" and f"/{bucket}/chan/noarch/more" in sent.target:
            reading.set()
            stopped.wait(60)

    with FaultProxy(rgw.endpoint) as proxy:
        proxy.listeners.append(hold)
        proc = subprocess.Popen([sys.executable, "-m", "conda_indexd", "index", *map(str, args), "--threads", "2"],
                                env={**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert reading.wait(60), "the run never read a new package"
            rgw.stop_rgw()
            stopped.set()
            out, err = proc.communicate(timeout=120)
        finally:
            stopped.set()
            if proc.poll() is None:
                proc.kill()
            rgw.start_rgw()
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out, err
    after = get(s3, bucket, "chan/noarch/repodata.json")
    assert after == before  # nothing new was published: the index is written last
    check_consistent(s3, bucket, "noarch")
    index(*args)  # and the next run finishes the job
    assert len(check_consistent(s3, bucket, "noarch")) == 303


def test_endpoint_stopped_and_restarted(tmp_path: Path, rgw: RgwCluster, s3: Any, bucket: str) -> None:
    """Last in this file: it stops the session's radosgw (and starts it again), first
    before the daemon starts (alive, not ready, retrying), then mid-run."""
    daemon = s3_daemon(tmp_path, bucket, "--polling", "--poll-interval", "0.5")
    try:
        rgw.stop_rgw()
        try:
            daemon.start(wait_ready=False)
            wait_for(lambda: daemon.get("/healthz")[0] == 200, 10, what="listener up")
            # botocore's standard retries (3 attempts, jittered backoff) come first
            wait_for(lambda: "channel store unavailable; will retry" in daemon.log_text(), 20, what="the retry logged")
            assert daemon.get("/readyz")[0] == 503 and daemon.get("/healthz")[0] == 200
        finally:
            rgw.start_rgw()
        wait_for(lambda: daemon.get("/readyz")[0] == 200, 20, what="ready once the endpoint is back")
        rgw.stop_rgw()
        try:
            # polls fail meanwhile (each after botocore's retries, so wait for the log, not a clock)
            wait_for(lambda: "listing the bucket failed" in daemon.log_text(), 30, what="the failed poll logged")
            assert daemon.get("/healthz")[0] == 200  # alive through the outage
        finally:
            rgw.start_rgw()
        p = package(tmp_path / "p", "afterwards")
        s3.upload_file(str(p), bucket, f"chan/noarch/{p.name}")
        wait_for(lambda: p.name in records(s3, bucket, "chan/noarch/repodata.json"), 10.0, what="published after the restart")
        logs = daemon.log_text()
        assert "listing the bucket failed" in logs and "listing the bucket works again" in logs
        assert "Traceback" not in logs
    finally:
        daemon.stop()
