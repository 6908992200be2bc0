"""CEP-47 `indexed_timestamp`: which value each published package gets, once
(docs/indexed-timestamp.md). Runs after extraction and before the memo is refreshed, so
every record the run publishes has its value.

For each published (filename, archive sha256) without a value yet, in this order:
1. the value the channel already publishes for that very filename and sha256 (a cache
   moved to PostgreSQL or back, a new state folder: the published repodata is the
   record of what clients were told), read only until the subdir's table is seeded;
2. a package indexed before the table existed (its first run with it): its build
   `timestamp`, else its file time, never later than now (conda-index PR #342);
3. otherwise it has just entered the channel: when its change was seen (the daemon's
   event, or the listing or run that found it), or a bucket's LastModified when that is
   earlier.
A value once stored is never changed; a file replaced by another (a new sha256) is a
new artifact and gets a new one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field

from conda_indexd.caches.base import SubdirCache, TimestampGap
from conda_indexd.config import TIMESTAMP_SKEW, IndexConfig
from conda_indexd.formats import timestamps
from conda_indexd.names import REPODATA, REPODATA_FROM_PACKAGES
from conda_indexd.stores.base import ChannelStore, key
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

REJECTED = "future-timestamp"  # the skipped archives' reason with --reject-future-timestamps


CHUNK = 10_000  # values given per transaction while seeding (a million gaps are never all held)


class KeySet:
    """(filename, sha256) pairs held as 128-bit digests: about 80 bytes each where a set
    of tuples of strings costs 300 (a million packages published before the first run)."""

    def __init__(self, keys: Iterable[tuple[str, str]]):
        self._digests = {_digest(fn, sha) for fn, sha in keys}

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and _digest(*key) in self._digests

    def __len__(self) -> int:
        return len(self._digests)


def _digest(fn: str, sha: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{fn}\0{sha}".encode(), digest_size=16).digest())


@dataclass
class Flagged:
    path: str
    build_timestamp: int
    indexed_timestamp: int

    @property
    def message(self) -> str:
        return timestamps.flag(self.build_timestamp, self.indexed_timestamp, 0) or ""


@dataclass
class Stamped:
    assigned: int = 0  # values given this run
    flagged: list[Flagged] = field(default_factory=list)  # published now, build timestamp too late
    rejected: set[str] = field(default_factory=set)  # left out this run (--reject-future-timestamps)


def published_values(outputs: ChannelStore, subdir: str) -> dict[tuple[str, str], int]:
    """{(filename, sha256): indexed_timestamp} of the subdir's published records. A document
    that never names the field (conda-index 0.13's) has none: it is not parsed (460 MB of
    Python objects at a million records)."""
    for name in (REPODATA_FROM_PACKAGES, REPODATA):
        data = outputs.read(key(subdir, name))
        if data is None:
            continue
        if f'"{timestamps.FIELD}"'.encode() not in data:
            return {}
        try:
            doc = json.loads(data)
            values = {}
            for section in ("packages", "packages.conda"):
                for fn, record in doc.get(section, {}).items():
                    ts, sha = record.get(timestamps.FIELD), record.get("sha256")
                    if isinstance(ts, int) and not isinstance(ts, bool) and isinstance(sha, str):
                        values[(fn, sha)] = ts
            return values
        except (ValueError, AttributeError, TypeError):
            continue
    return {}


def stamp(
    config: IndexConfig,
    cache: SubdirCache,
    outputs: ChannelStore,
    subdir: str,
    *,
    scope: set[str] | None,
    before: Container[tuple[str, str]] | None,
    seen: Mapping[str, float],
    seen_at: float,
    previous: list[Flagged] | None = None,
) -> Stamped:
    """Give the published packages of `scope` (None: all) without a value theirs.
    `before`: the (filename, sha256) published before this run's extraction when the
    subdir's table is not yet seeded (else None); `seen`: when the daemon saw each
    name's change; `seen_at`: when this run's listing (or the one-shot run) saw the rest;
    `previous`: the flagged list of the last run over the same memo, kept when no package
    can have changed (scope empty)."""
    report = Stamped()
    now_ms = int(time.time() * 1000)
    seeded = before is None
    gaps = iter(cache.missing_timestamps(None if not seeded else scope))
    first = next(gaps, None)
    if first is not None or not seeded:
        published = published_values(outputs, subdir) if not seeded else {}
        # a chunk at a time (the table is marked seeded after the last: a run stopped
        # half-way seeds the rest by the same rules next time)
        for chunk in _chunks(itertools.chain([first] if first is not None else [], gaps), CHUNK):
            report.assigned += _give(config, subdir, chunk, published, before, seen, seen_at, now_ms, cache)
        if not seeded:
            cache.add_timestamps((), seeded_at=now_ms)
    skew = int(TIMESTAMP_SKEW * 1000)
    if previous is not None and scope is not None and not scope and not report.assigned:
        report.flagged = list(previous)  # nothing published changed: no query over every record
    else:
        report.flagged = [Flagged(path, build, ts) for path, _, build, ts in cache.flagged_timestamps(skew)]
    if config.reject_future_timestamps and report.flagged:
        fs = cache.fs_state()
        with cache.transaction():
            for f in report.flagged:
                state = fs.get(f.path)
                if state is not None:
                    cache.store_failure(state, REJECTED, f.message)
                    report.rejected.add(f.path)
                    log.warning("skipped archive", subdir=subdir, path=f.path, reason=REJECTED, detail=f.message)
        report.flagged = []
    return report


def _chunks(gaps: Iterable[TimestampGap], size: int) -> Iterable[list[TimestampGap]]:
    it = iter(gaps)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _give(
    config: IndexConfig,
    subdir: str,
    gaps: list[TimestampGap],
    published: dict[tuple[str, str], int],
    before: Container[tuple[str, str]] | None,
    seen: Mapping[str, float],
    seen_at: float,
    now_ms: int,
    cache: SubdirCache,
) -> int:
    """Store the values of some gaps (the rules in the module doc); how many."""
    rows = []
    for gap in gaps:
        build = timestamps.to_ms(gap.build_timestamp)
        value = published.get((gap.path, gap.sha256))
        if value is None and before is not None and (gap.path, gap.sha256) in before:
            value = timestamps.seed(gap.build_timestamp, gap.mtime, now_ms)
        if value is None:
            at = seen.get(gap.path, seen_at)
            if config.remote and gap.mtime:  # a bucket's LastModified, when earlier
                at = min(at, gap.mtime)
            value = min(int(at * 1000), now_ms)
        reason = timestamps.flag(build, value, int(TIMESTAMP_SKEW * 1000))
        if reason is not None:
            log.warning("package build timestamp is later than when it was indexed (CEP-47)", subdir=subdir, path=gap.path, detail=reason)
        rows.append((gap.path, gap.sha256, value, build))
    cache.add_timestamps(rows)
    return len(rows)
