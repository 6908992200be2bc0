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

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from conda_indexd.caches.base import SubdirCache
from conda_indexd.config import TIMESTAMP_SKEW, IndexConfig
from conda_indexd.formats import timestamps
from conda_indexd.names import REPODATA, REPODATA_FROM_PACKAGES
from conda_indexd.stores.base import ChannelStore, key
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

REJECTED = "future-timestamp"  # the skipped archives' reason with --reject-future-timestamps


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
    """{(filename, sha256): indexed_timestamp} of the subdir's published records."""
    for name in (REPODATA_FROM_PACKAGES, REPODATA):
        data = outputs.read(key(subdir, name))
        if data is None:
            continue
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
    before: set[tuple[str, str]] | None,
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
    gaps = cache.missing_timestamps(None if not seeded else scope)
    if gaps or not seeded:
        published = published_values(outputs, subdir) if not seeded else {}
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
        cache.add_timestamps(rows, seeded_at=now_ms if not seeded else None)
        report.assigned = len(rows)
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
