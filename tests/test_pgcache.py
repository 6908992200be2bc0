"""The PostgreSQL cache end to end: `--db postgresql --db-url` (and CONDA_INDEX_DBURL) on
a real throwaway PostgreSQL 15, the same outputs as with cache.db, one-line errors for
an unreachable server or a schema that is not conda-index's, a daemon that waits (not
ready) for its database, and one database shared with conda-index 0.13 both ways."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

import peers
from conftest import run_cli, run_index
from daemonproc import DaemonProcess, free_port, wait_for
from pkgfactory import index_json, make_package


def make_channel(root: Path) -> Path:
    channel = root / "channel"
    make_package(channel / "noarch" / "a-1.0-0.conda", index_json("a", "1.0", "0"), run_exports={"weak": ["a"]},
                 about={"license": "MIT", "summary": "ä"})  # fmt: skip
    make_package(channel / "noarch" / "b-1.0-0.tar.bz2", index_json("b", "1.0", "0", depends=["a >=1"]))
    make_package(channel / "linux-64" / "c-2.0-1.conda", index_json("c", "2.0", "1", "linux-64", depends=["a"]))
    make_package(channel / "linux-64" / "c-2.0-2.tar.bz2", index_json("c", "2.0", "2", "linux-64"))
    return channel


def outputs(channel: Path) -> dict[str, bytes]:
    """repodata.json of each subdir without CEP-47's indexed_timestamp values (when a file
    entered a channel differs between two channels; conda-index 0.13 writes none)."""
    return {s: re.sub(rb'"indexed_timestamp":\d+,', b"", (channel / s / "repodata.json").read_bytes()) for s in ("noarch", "linux-64")}


def stamped_records(channel: Path) -> int:
    """Records that carry an integer indexed_timestamp (CEP-47)."""
    docs = [json.loads((channel / s / "repodata.json").read_bytes()) for s in ("noarch", "linux-64")]
    return sum(isinstance(r.get("indexed_timestamp"), int) for d in docs for sec in ("packages", "packages.conda") for r in d[sec].values())


def scramble_keeping_stat(channel: Path) -> None:
    """Every package's bytes replaced by garbage of the same size and mtime: an indexer
    that re-extracted anything would now skip it instead of publishing it."""
    for path in channel.glob("*/*"):
        if path.name.endswith((".conda", ".tar.bz2")):
            st = path.stat()
            path.write_bytes(b"\0" * st.st_size)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_index_on_postgresql_matches_sqlite_and_reextracts_nothing(tmp_path: Path, pg_server) -> None:
    url = pg_server.createdb("idx")
    channel = make_channel(tmp_path / "pg")
    first = run_index(channel, "--db", "postgresql", "--db-url", url)
    assert first.summary["extracted"] == 4 and first.summary["packages"] == 4
    cid = json.loads((channel / ".cache" / "cache.json").read_text())["channel_id"]
    assert len(cid) == 16 and int(cid, 16) >= 0
    assert stamped_records(channel) == 4
    assert not (channel / "noarch" / ".cache" / "cache.db").exists()
    paths = {p for (p,) in pg_server.execute(url, "SELECT path FROM stat WHERE stage = 'indexed'")}
    assert paths == {f"{cid}/noarch/a-1.0-0.conda", f"{cid}/noarch/b-1.0-0.tar.bz2",
                     f"{cid}/linux-64/c-2.0-1.conda", f"{cid}/linux-64/c-2.0-2.tar.bz2"}  # fmt: skip
    sqlite_channel = make_channel(tmp_path / "sqlite")
    run_index(sqlite_channel)
    assert outputs(channel) == outputs(sqlite_channel)

    again = run_index(channel, "--db", "postgresql", env={"CONDA_INDEX_DBURL": url})  # the env var, as conda-index
    assert again.summary["extracted"] == 0 and again.summary["skipped"] == 0
    assert outputs(channel) == outputs(sqlite_channel)
    # the change identity (inode+ctime) is kept as in cache.db: a rewrite with the same
    # size and mtime is read again (here: garbage, so left out)
    scramble_keeping_stat(channel)
    third = run_index(channel, "--db", "postgresql", "--db-url", url)
    assert third.summary["extracted"] == 0 and third.summary["skipped"] == 4 and third.summary["packages"] == 0


def test_unreachable_server_and_foreign_schema_are_one_line(tmp_path: Path, pg_server) -> None:
    channel = make_channel(tmp_path)
    down = run_index(channel, "--db", "postgresql", "--db-url", f"postgresql://postgres@127.0.0.1:{free_port()}/x", check=False)
    assert down.rc == 1 and "Traceback" not in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1 and "cannot connect" in down.stderr, down
    url = pg_server.createdb("foreign")
    pg_server.execute(url, "CREATE TABLE stat (path TEXT PRIMARY KEY, mtime REAL)")
    foreign = run_index(channel, "--db", "postgresql", "--db-url", url, check=False)
    assert foreign.rc == 1 and "Traceback" not in foreign.stderr
    assert len(foreign.stderr.strip().splitlines()) == 1 and "table stat is not conda-index's schema" in foreign.stderr, foreign
    bad = run_cli("index", channel, "--db", "postgresql", "--db-url", "mysql://x/y")
    assert bad.rc == 2 and "expected a postgresql:// URL" in bad.stderr


@pytest.mark.timeout(120)
def test_watch_waits_for_its_database(tmp_path: Path, pg_server) -> None:
    channel = make_channel(tmp_path)
    name = f"later_{os.getpid()}"
    daemon = DaemonProcess(channel, "--db", "postgresql", "--db-url", pg_server.url(name)).start(wait_ready=False)
    try:
        wait_for(lambda: "database not usable; retrying" in daemon.log_text(), 20,
                 what="the connection failure logged")  # fmt: skip
        assert daemon.get("/healthz")[0] == 200 and daemon.get("/readyz")[0] == 503
        assert daemon.metric("conda_indexd_leader") == 0
        pg_server.execute(pg_server.url(), f'CREATE DATABASE "{name}"')
        wait_for(lambda: daemon.get("/readyz")[0] == 200, 60, what="ready once the database exists")
        wait_for(lambda: (channel / "linux-64" / "repodata.json").exists(), 20, what="published")
        assert daemon.metric("conda_indexd_leader") == 1
        doc = json.loads(daemon.get("/status.json")[1])
        assert doc["role"]["role"] == "leader" and doc["role"]["token"] == 1
        assert b"<h2>Active/standby pair</h2>" in daemon.get("/")[1]
    finally:
        daemon.stop()
    assert "Traceback" not in daemon.log_text()


def _conda_index_pg(channel: Path, url: str) -> None:
    proc = peers.conda_index("--threads", "2", "--db", "postgresql", "--db-url", url, channel)
    if proc.returncode != 0 and "Missing dependencies for postgresql" in proc.stderr + proc.stdout:
        pytest.skip("conda-index's postgresql extras are not installed (pip install sqlalchemy psycopg2-binary into /tmp/peers)")
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.timeout(300)
def test_one_database_shared_with_conda_index_both_ways(tmp_path: Path, pg_server) -> None:
    # conda-index first, then conda-indexd
    url = pg_server.createdb("shared")
    first = make_channel(tmp_path / "ci-first")
    _conda_index_pg(first, url)
    theirs = outputs(first)
    scramble_keeping_stat(first)
    ours = run_index(first, "--db", "postgresql", "--db-url", url)
    assert ours.summary["extracted"] == 0 and ours.summary["skipped"] == 0
    assert outputs(first) == theirs

    # conda-indexd first, then conda-index (another channel in the same database)
    second = make_channel(tmp_path / "cid-first")
    run_index(second, "--db", "postgresql", "--db-url", url)
    mine = outputs(second)
    scramble_keeping_stat(second)
    _conda_index_pg(second, url)
    assert outputs(second) == mine
    assert mine == theirs  # same packages, same bytes


@pytest.mark.timeout(60)
def test_watch_on_a_foreign_schema_stays_up_and_not_ready(tmp_path: Path, pg_server) -> None:
    channel = make_channel(tmp_path)
    url = pg_server.createdb("foreignw")
    pg_server.execute(url, "CREATE TABLE index_json (path TEXT PRIMARY KEY, index_json TEXT)")
    daemon = DaemonProcess(channel, "--db", "postgresql", "--db-url", url).start(wait_ready=False)
    try:
        wait_for(lambda: "table index_json is not conda-index's schema" in daemon.log_text(), 20, what="the reason logged")
        time.sleep(1.5)
        assert daemon.get("/healthz")[0] == 200 and daemon.get("/readyz")[0] == 503
        assert json.loads(daemon.get("/status.json")[1])["role"]["role"] == "disconnected"
        assert not (channel / "noarch" / "repodata.json").exists()
    finally:
        daemon.stop()
    assert "Traceback" not in daemon.log_text()
