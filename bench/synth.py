"""Big realistic channels for benchmarks: records from ../shared/corpus/repodata when
present (names, versions, depends, licenses of 20,002 real records), else generated.

`fill_cache(db, subdir, n)` writes n published records straight into a conda-index
schema cache.db (fs + indexed stat rows and index_json rows), so shard and repodata
building can be timed without n archives on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from conda_indexd.caches.sqlite.cache import SqliteCache  # noqa: E402

CORPUS = Path(os.environ.get("CONDA_INDEXD_SHARED", ROOT.parent / "shared")) / "corpus" / "repodata"
DROP = ("md5", "sha256", "size", "subdir", "arch", "platform")


def real_records() -> list[dict]:
    found: dict[str, dict] = {}
    if CORPUS.is_dir():
        for path in sorted(CORPUS.rglob("*.json")):
            try:
                doc = json.loads(path.read_text())
            except ValueError:
                continue
            for section in ("packages", "packages.conda"):
                for fn, rec in (doc.get(section) or {}).items() if isinstance(doc, dict) else ():
                    if isinstance(rec, dict) and {"name", "version", "build"} <= rec.keys():
                        found.setdefault(fn, rec)
    return list(found.values())


def records(n: int, subdir: str, seed: int = 0) -> Iterator[tuple[str, dict]]:
    """n (filename, index_json) pairs; names repeat as in a real channel."""
    rng = random.Random(seed)
    base = real_records()
    if not base:
        base = [
            {"name": f"pkg{i:05d}", "version": "1.0", "build": "0", "build_number": 0,
             "depends": [f"pkg{rng.randrange(5000):05d}"], "license": "MIT", "timestamp": 1700000000000}
            for i in range(5000)
        ]  # fmt: skip
    for i in range(n):
        rec = dict(base[i % len(base)])
        cycle = i // len(base)
        # every other pass over the real records adds new names, the others new builds:
        # about 10 records per name, as in big real channels
        name = f"{rec['name']}-x{cycle // 2}" if cycle >= 2 else rec["name"]
        build = f"{rec['build']}_{cycle}" if cycle % 2 else rec["build"]
        rec = {k: v for k, v in rec.items() if k not in DROP}
        rec.update(name=name, build=build, subdir=subdir)
        ext = ".conda" if rng.random() < 0.6 else ".tar.bz2"
        fn = f"{name}-{rec['version']}-{build}{ext}"
        digest = hashlib.sha256(fn.encode()).hexdigest()
        rec.update(md5=digest[:32], sha256=digest, size=1000 + i)
        yield fn, rec


def fill_cache(db: Path, subdir: str, n: int) -> int:
    db.parent.mkdir(parents=True, exist_ok=True)
    with SqliteCache(db) as cache:
        with cache.transaction():
            for fn, rec in records(n, subdir):
                add_row(cache, fn, rec, mtime=1.0)
        return cache.db.execute("SELECT count(DISTINCT name) FROM index_json").fetchone()[0]


def add_row(cache: SqliteCache, fn: str, rec: dict, mtime: float) -> None:
    for stage in ("fs", "indexed"):
        cache.db.execute(
            "INSERT OR REPLACE INTO stat (stage, path, mtime, size, sha256, md5) VALUES (?, ?, ?, ?, ?, ?)",
            (stage, fn, mtime, rec["size"], rec["sha256"], rec["md5"]),
        )
    cache.db.execute("INSERT OR REPLACE INTO index_json (path, index_json) VALUES (?, json(?))", (fn, json.dumps(rec)))


_TOKEN = re.compile(r"^[A-Za-z0-9_.+!]+$")


def _usable(rec: dict) -> bool:
    """A record every indexer publishes: plain name/version/build, list-of-str depends."""
    name, version, build = rec.get("name"), rec.get("version"), rec.get("build")
    if not all(isinstance(v, str) and v for v in (name, version, build)):
        return False
    if not re.match(r"^[a-z0-9_.+-]+$", name) or not _TOKEN.match(version) or not _TOKEN.match(build):
        return False
    bn = rec.get("build_number", 0)
    if not isinstance(bn, int) or isinstance(bn, bool) or bn < 0:
        return False
    return all(isinstance(rec.get(k, []), list) and all(isinstance(d, str) for d in rec.get(k, [])) for k in ("depends", "constrains"))


def archive_records(n: int, subdir: str, seed: int = 0, skip: int = 0) -> Iterator[tuple[str, dict]]:
    """n distinct (filename, index.json) pairs for real archives (no md5/sha256/size);
    `skip` starts further along the same sequence (new packages for a channel)."""
    seen: set[str] = set()
    made = 0
    for fn, rec in records(10 * (n + skip) + 100, subdir, seed):
        stem = fn.removesuffix(".conda").removesuffix(".tar.bz2")
        if stem in seen or not _usable(rec):
            continue
        seen.add(stem)
        if len(seen) <= skip:
            continue
        yield fn, {k: v for k, v in rec.items() if k not in ("md5", "sha256", "size")}
        made += 1
        if made == n:
            return
