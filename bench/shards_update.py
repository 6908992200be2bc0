"""Cost of the CEP-16 shard update after a one-package change, next to a full shard
rewrite, at 10k and 100k records (issue 4). Run: python bench/shards_update.py [N ...]

Each size: a synthetic cache.db (bench/synth.py), then
- full: every shard encoded and written, the index written (a cold run, or what a
  tool without per-name reuse does on every change);
- no-op: nothing changed (fingerprints checked, nothing written);
- one change: one record added to an existing name: one shard encoded and written,
  the index rewritten. Median of 5.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from conda_indexd.caches.sqlite.cache import SqliteCache
from conda_indexd.pipeline.shardstore import ShardsReport, ShardStore
from conda_indexd.stores.local import LocalStore
from synth import add_row, fill_cache, records

SUBDIR = "linux-64"


def update(cache: SqliteCache, root: Path) -> ShardsReport:
    report = ShardsReport()
    store = ShardStore(LocalStore(root), cache, SUBDIR)
    store.publish(list(cache.shard_keys()), None, None, None, report)
    store.collect(7 * 86400, report)
    store.save()
    return report


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db = root / SUBDIR / ".cache" / "cache.db"
        names = fill_cache(db, SUBDIR, n)
        with SqliteCache(db) as cache:
            full, report = timed(lambda: update(cache, root))
            assert report.encoded == names, (report.encoded, names)
            noop, report = timed(lambda: update(cache, root))
            assert not report.written
            changes = []
            extra = records(5, SUBDIR, seed=1)
            for i, (fn, rec) in enumerate(extra):
                with cache.transaction():
                    add_row(cache, f"new{i}-{fn}", rec, mtime=2.0)
                t, report = timed(lambda: update(cache, root))
                assert report.encoded == 1 and len(report.written) == 2, report
                changes.append(t)
            # a full rewrite again at the final size, from nothing
            shutil.rmtree(root / SUBDIR / "shards")
            (root / SUBDIR / ".cache" / "shards-state.json").unlink()
            (root / SUBDIR / "repodata_shards.msgpack.zst").unlink()
            full2, _ = timed(lambda: update(cache, root))
        one = statistics.median(changes)
        full = min(full, full2)
        print(f"{n:>7} records {names:>6} names | full rewrite {full:7.3f} s | one change {one:6.3f} s ({full / one:5.1f}x less) | no-op {noop:6.3f} s")


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 100_000]
    for size in sizes:
        run(size)
