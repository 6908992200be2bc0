"""A channel in a bucket with its cache in PostgreSQL (`--db postgresql --db-url`), against
the real RGW (tests/rgwserver.py) and a real PostgreSQL (tests/pgserver.py): the same
repodata.json bytes as a local index with its sqlite caches; the channel id kept in the bucket
(`<prefix>/.cache/cache.json`), so another host with its own state folder shares the
cache and the pair lease; and a PUT published by `watch` through the RGW notification.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from daemonproc import free_port, wait_for
from rgwserver import RgwCluster
from test_s3 import CORPUS, generated_channel, get, package, records, s3_daemon, subscribe, upload_tree


def unstamped(data: bytes | None) -> bytes:
    assert data is not None
    return re.sub(rb'"indexed_timestamp":\d+,', b"", data)


def test_index_with_the_cache_in_postgresql_gives_the_sqlite_bytes(tmp_path: Path, s3: Any, bucket: str, index: Any, pg_server: Any) -> None:
    source = CORPUS if CORPUS.is_dir() else generated_channel(tmp_path / "generated")
    upload_tree(s3, bucket, "pg", source)
    url = pg_server.createdb("s3")
    # the reference: a local index with its sqlite caches (test_s3 shows a bucket with
    # sqlite caches gives these same bytes)
    local = tmp_path / "local"
    shutil.copytree(source, local, ignore=shutil.ignore_patterns("*.tsv", "*.md"))
    first = index(local)
    ours = index(f"s3://{bucket}/pg", "--cache-dir", tmp_path / "state", "--db", "postgresql", "--db-url", url)
    subdirs = [r["subdir"] for r in ours.events("subdir indexed")]
    assert subdirs == [r["subdir"] for r in first.events("subdir indexed")] and ours.summary["extracted"] > 0
    for subdir in subdirs:
        for name in ("repodata.json", "repodata_from_packages.json"):
            # the same bytes but for when each file entered its channel (CEP-47: the bucket's LastModified here)
            assert unstamped(get(s3, bucket, f"pg/{subdir}/{name}")) == unstamped((local / subdir / name).read_bytes()), (subdir, name)
    # the cache is in the database, under the id the bucket holds; nothing in the state folder but that
    held = get(s3, bucket, "pg/.cache/cache.json")
    assert held is not None
    cid = json.loads(held)["channel_id"]
    rows = pg_server.execute(url, "SELECT path, etag FROM stat WHERE stage = 'indexed'")
    assert rows and all(str(path).startswith(f"{cid}/") and len(str(etag)) == 32 for path, etag in rows)
    assert not list((tmp_path / "state").rglob("cache.db"))
    # another host (its own state folder) indexing the same prefix with the same database
    # reads the cache: nothing is extracted again
    other = index(f"s3://{bucket}/pg", "--cache-dir", tmp_path / "other-host", "--db", "postgresql", "--db-url", url)
    assert other.summary["extracted"] == 0
    assert all(r["written"] == [] for r in other.events("subdir indexed"))


def test_watch_with_the_cache_in_postgresql_publishes_a_put(tmp_path: Path, rgw: RgwCluster, s3: Any, bucket: str, cli: Any, pg_server: Any) -> None:
    url = pg_server.createdb("s3watch")
    base = package(tmp_path / "base", "before")
    s3.upload_file(str(base), bucket, f"chan/noarch/{base.name}")
    port = free_port()
    subscribe(rgw, s3, bucket, port)
    daemon = s3_daemon(tmp_path, bucket, "--db", "postgresql", "--db-url", url, port=port).start()
    try:
        wait_for(lambda: base.name in records(s3, bucket, "chan/noarch/repodata.json"), 10.0, what="start-up publish")
        p = package(tmp_path / "p", "evented")
        started = time.monotonic()
        s3.upload_file(str(p), bucket, f"chan/noarch/{p.name}")
        wait_for(lambda: p.name in records(s3, bucket, "chan/noarch/repodata.json"), 5.0, what="published by watch")
        print(f"PUT -> published with the cache in PostgreSQL: {time.monotonic() - started:.2f} s")
        cid = json.loads(get(s3, bucket, "chan/.cache/cache.json") or b"{}")["channel_id"]
        paths = {str(p) for (p,) in pg_server.execute(url, "SELECT path FROM stat WHERE stage = 'indexed'")}
        assert f"{cid}/noarch/{p.name}" in paths
        status = json.loads(daemon.get("/status.json")[1])
        assert f"s3://{bucket}/chan" in json.dumps(status)
        # an `index` from another host's state folder meets the daemon's pair lease (same channel id)
        busy = cli("index", f"s3://{bucket}/chan", "--cache-dir", tmp_path / "other-host", "--db", "postgresql", "--db-url", url)
        assert busy.rc == 3 and "being indexed by a conda-indexd leader" in busy.stderr, str(busy)
        assert f"s3://{bucket}/chan" in busy.stderr
        assert "Traceback" not in daemon.log_text()
    finally:
        daemon.stop()
