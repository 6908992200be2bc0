"""The first run on a channel migrated from conda-index (cache rows only: no record pieces,
no saved memo, no shard state) serialises every record and encodes every shard in forked
worker processes (pipeline/forked.py). The outputs are the bytes the serial path gives,
a worker killed mid-way costs only its batch (done again in this process), and a batch
that cannot be serialised at all fails the run before anything is published."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest

from conda_indexd.backends import index_subdir
from conda_indexd.caches.sqlite.cache import SqliteCache
from conda_indexd.config import IndexConfig
from conda_indexd.formats import shards
from conda_indexd.pipeline import forked, memo, shardstore

SUBDIR = "linux-64"
OUTPUTS = ("repodata.json", "repodata.json.zst", "repodata_from_packages.json", "repodata_from_packages.json.zst")


def migrated_channel(root: Path, n: int, *, broken: str | None = None) -> Path:
    """n records as conda-index 0.13 leaves them in cache.db (fs and indexed stat rows,
    index_json, some run_exports) behind sparse placeholder files of the rows' size and
    mtime, as bench/scale.py builds them; `broken`: one more row whose index_json is a
    JSON array (no record can be made of it)."""
    folder = root / SUBDIR
    (folder / ".cache").mkdir(parents=True)
    (root / "noarch").mkdir()
    rows = []
    for i in range(n):
        name = f"pkg{i % (n // 8 + 1):04d}"
        fn = f"{name}-1.{i}-h{i:05x}_0" + (".conda" if i % 3 else ".tar.bz2")
        sha = hashlib.sha256(fn.encode()).hexdigest()
        rec = {
            "build": f"h{i:05x}_0",
            "build_number": 0,
            "depends": [f"pkg{(i * 7) % 50:04d} >=1"],
            "license": "MIT" if i % 5 else "BSD-3-Clause",
            "name": name,
            "subdir": SUBDIR,
            "timestamp": 1700000000000 + i * 1000 if i % 4 else 1700000000 + i,
            "version": f"1.{i}",
            "md5": hashlib.md5(fn.encode()).hexdigest(),
            "sha256": sha,
            "size": 1000 + i,
        }
        rows.append((fn, rec))
    if broken is not None:
        rows.append((broken, {"name": "pkg9999", "size": 77, "md5": "0" * 32, "sha256": "1" * 64}))
    with SqliteCache(folder / ".cache" / "cache.db") as cache, cache.transaction():
        for i, (fn, rec) in enumerate(rows):
            for stage in ("fs", "indexed"):
                cache.db.execute(
                    "INSERT INTO stat (stage, path, mtime, size, sha256, md5) VALUES (?, ?, ?, ?, ?, ?)",
                    (stage, fn, 1.0, rec["size"], rec["sha256"], rec["md5"]),
                )
            text = json.dumps(rec)[:-1] + ', "deep": ' + "[" * 1500 + "]" * 1500 + "}" if fn == broken else json.dumps(rec)
            cache.db.execute("INSERT INTO index_json (path, index_json) VALUES (?, json(?))", (fn, text))
            if i % 6 == 0:
                cache.db.execute("INSERT INTO run_exports (path, run_exports) VALUES (?, json(?))", (fn, json.dumps({"weak": [f"{rec['name']} >=1"]})))
    for fn, rec in rows:
        fd = os.open(folder / fn, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, rec["size"])
            os.utime(fd, (1.0, 1.0))
        finally:
            os.close(fd)
    return root


def outputs(channel: Path) -> dict[str, object]:
    folder = channel / SUBDIR
    out: dict[str, object] = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in OUTPUTS}
    index = shards.decode((folder / shards.SHARD_INDEX).read_bytes())
    index["info"].pop("created_at")
    out["index"] = index
    out["shards"] = sorted(os.listdir(folder / "shards"))
    return out


class Children:
    """Watches this process's children while a run goes on; `kill`: SIGKILL the first
    worker seen (once it has had time to take a batch)."""

    def __init__(self, kill: bool = False):
        self.kill = kill
        self.seen: set[int] = set()
        self.killed: int | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.done.is_set():
            for child in multiprocessing.active_children():
                self.seen.add(child.pid or 0)
                if self.kill and self.killed is None and child.pid:
                    self.done.wait(0.05)
                    os.kill(child.pid, signal.SIGKILL)
                    self.killed = child.pid
            self.done.wait(0.002)

    def __enter__(self) -> Children:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


@pytest.fixture
def small_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool from a few hundred records, in batches of 50 (many batches per worker)."""
    monkeypatch.setattr(forked, "POOL_FROM", 300)
    monkeypatch.setattr(memo, "BATCH", 50)
    monkeypatch.setattr(shardstore, "BATCH", 50)


N = 3000


def test_forked_first_run_equals_the_serial_one(tmp_path: Path, small_pool: None) -> None:
    serial = migrated_channel(tmp_path / "serial", N)
    parallel = migrated_channel(tmp_path / "parallel", N)
    one = index_subdir(IndexConfig(serial, threads=1), SUBDIR)
    with Children() as children:
        two = index_subdir(IndexConfig(parallel, threads=2), SUBDIR)
    assert children.seen, "no worker process was forked"
    assert one.packages == two.packages == N
    assert (one.added, one.removed, one.changed) == (two.added, two.removed, two.changed)
    assert two.shards.encoded == one.shards.encoded > 0
    assert outputs(serial) == outputs(parallel)
    # the pieces kept for the next process are the same too
    kept = [
        sorted(sqlite3.connect(ch / SUBDIR / ".cache" / "conda-indexd-pieces.db").execute("SELECT path, crc, piece FROM pieces")) for ch in (serial, parallel)
    ]
    assert kept[0] == kept[1] and len(kept[0]) == N
    # and a re-run of either (the saved memo) publishes nothing new
    again = index_subdir(IndexConfig(parallel, threads=2), SUBDIR)
    assert not again.written


def test_a_killed_worker_costs_only_its_batch(tmp_path: Path, small_pool: None) -> None:
    serial = migrated_channel(tmp_path / "serial", N)
    parallel = migrated_channel(tmp_path / "parallel", N)
    index_subdir(IndexConfig(serial, threads=1), SUBDIR)
    with Children(kill=True) as children:
        result = index_subdir(IndexConfig(parallel, threads=2), SUBDIR)
    assert children.killed is not None
    assert result.packages == N
    assert outputs(serial) == outputs(parallel)


def test_a_batch_that_fails_publishes_nothing(tmp_path: Path, small_pool: None) -> None:
    """A row no record can be made of fails its batch in the worker, then in this process
    (the serial path fails the same way): the run fails and no output is written."""
    channel = migrated_channel(tmp_path / "c", N, broken="pkg9999-1.0-0.conda")
    with pytest.raises(Exception) as raised, Children() as children:
        index_subdir(IndexConfig(channel, threads=2), SUBDIR)
    assert children.seen
    serial = migrated_channel(tmp_path / "s", N, broken="pkg9999-1.0-0.conda")
    with pytest.raises(type(raised.value)):
        index_subdir(IndexConfig(serial, threads=1), SUBDIR)
    for ch in (channel, serial):
        folder = ch / SUBDIR
        assert not any((folder / name).exists() for name in (*OUTPUTS, shards.SHARD_INDEX))
        assert not (folder / ".cache" / "conda-indexd-memo.idx").exists()
