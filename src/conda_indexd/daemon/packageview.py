"""The status page's package view (`/status/<subdir>?q=name`): a search of one subdir's
published packages by name, read on demand from the channel's own published outputs.
Nothing is kept between requests.

With shards (CEP-16) a search reads the subdir's shard index (`repodata_shards.msgpack.zst`),
selects the package names that contain the query (case-insensitive), and reads the shards
of the first `MAX_NAMES` of them in name order: one index read and at most `MAX_NAMES`
shard reads per request, none started after `MAX_SECONDS`. Without shards (`--no-write-shards`, or none published yet) it
reads the subdir's `repodata.json`, only while that is at most `MAX_REPODATA_BYTES` (the
whole document is decoded per request); a larger one is not read and the view says why.

Published files are replaced atomically and shards are named by their content (and kept
a week after the index stops naming them), so the read needs no lock and cannot see a
half-written file. It runs on a thread of its own (`search_off_listener`), never on the
worker's, and the listener waits for it at most LANE_SECONDS.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from conda_indexd.formats import shards
from conda_indexd.formats.revisions import EXTENSIONS
from conda_indexd.names import REPODATA, SHARD_INDEX, SHARDS_DIR
from conda_indexd.stores.base import ChannelStore

MAX_RESULTS = 200  # files shown for one query
MAX_QUERY = 200  # characters of a query
MAX_NAMES = 50  # package names whose records one query reads (one shard each)
MAX_REPODATA_BYTES = 8 << 20  # without shards: the largest repodata.json a query decodes
# the listener's thread serves other requests (/healthz, /metrics) after this one: no
# shard read starts once a search has taken this long (a slow bucket); the view says so
MAX_SECONDS = 2.0

# the listener waits this long for a search run off its thread (`search_off_listener`)
LANE_SECONDS = 3.0

SHARDS = "shards"
REPODATA_JSON = "repodata.json"
_V3_SUFFIX = {section: ext for ext, section in EXTENSIONS.items()} | {"whl": ".whl"}


class Row(NamedTuple):
    filename: str
    name: str
    version: str
    build: str
    size: int | None
    indexed_timestamp: int | None  # CEP-47, milliseconds (None: not stamped)
    timestamp: int | None  # the build timestamp the record carries, milliseconds


@dataclass
class Found:
    """What one search read: `rows` (at most MAX_RESULTS, sorted by name, version, build,
    file), `matched` files of the names read, `names` matching names in all, `names_read`
    (at most MAX_NAMES; fewer when the search ran out of time, MAX_SECONDS, and then
    `problem` says so), the `source` read (SHARDS, REPODATA_JSON, or None when nothing
    could be read: `problem` says why), `unreadable` names whose shard was missing or
    damaged."""

    rows: list[Row] = field(default_factory=list)
    matched: int = 0
    names: int = 0
    names_read: int = 0
    source: str | None = None
    problem: str | None = None
    unreadable: list[str] = field(default_factory=list)


def search(store: ChannelStore, subdir: str, query: str, *, use_shards: bool = True, max_repodata: int = MAX_REPODATA_BYTES,
           max_seconds: float = MAX_SECONDS, clock: Callable[[], float] = time.monotonic) -> Found:  # fmt: skip
    """The published files of `subdir` whose package name contains `query` (all when it
    is blank). `use_shards=False` (shards not written) reads repodata.json only; a shard
    index that is missing or cannot be decoded falls back to it too, when it is at most
    `max_repodata` bytes. No shard read starts after `max_seconds` on `clock`. Raises
    StoreError when the store cannot be read."""
    q = query.strip().lower()
    if use_shards:
        found = _from_shards(store, subdir, q, clock() + max_seconds, clock)
        if found is not None:
            return found
    return _from_repodata(store, subdir, q, max_repodata)


def _from_shards(store: ChannelStore, subdir: str, q: str, deadline: float, clock: Callable[[], float]) -> Found | None:
    data = store.read(f"{subdir}/{SHARD_INDEX}")
    if data is None:
        return None
    try:
        index = shards.decode(data)
        digests = index["shards"]
        if not isinstance(digests, dict):
            return None
    except Exception:  # noqa: BLE001 - zstd, msgpack or shape: a damaged index; repodata.json still answers
        return None
    del data
    names = sorted(n for n in digests if isinstance(n, str) and q in n.lower())
    found = Found(names=len(names), source=SHARDS)
    rows: list[Row] = []
    for name in names[:MAX_NAMES]:
        if clock() > deadline:
            found.problem = f"the store was slow: the search stopped after {found.names_read} package names"
            break
        found.names_read += 1
        digest = digests[name]
        shard = store.read(f"{subdir}/{SHARDS_DIR}/{shards.shard_file(digest.hex())}") if isinstance(digest, bytes) else None
        try:
            doc = shards.decode(shard) if shard is not None else None
        except Exception:  # noqa: BLE001 - a damaged shard: named as unreadable, the others still shown
            doc = None
        if not isinstance(doc, dict):
            found.unreadable.append(name)
            continue
        rows.extend(_rows(doc))  # a shard holds one name's records
    return _finish(found, rows)


def _from_repodata(store: ChannelStore, subdir: str, q: str, limit: int) -> Found:
    key = f"{subdir}/{REPODATA}"
    present, _ = store.stat_files(subdir, [REPODATA])
    if not present:
        return Found(problem="nothing published in this subdir yet")
    if present[0].size > limit:
        return Found(problem=_too_large(present[0].size, limit))
    data = store.read(key)
    if data is None:
        return Found(problem="nothing published in this subdir yet")
    if len(data) > limit:  # replaced by a larger one since the stat
        return Found(problem=_too_large(len(data), limit))
    try:
        doc = json.loads(data)
    except ValueError:
        return Found(problem=f"{REPODATA} cannot be decoded")
    del data
    if not isinstance(doc, dict):
        return Found(problem=f"{REPODATA} cannot be decoded")
    rows = [r for r in _rows(doc) if q in r.name.lower()]
    names = sorted({r.name for r in rows})
    keep = set(names[:MAX_NAMES])
    found = Found(names=len(names), names_read=len(keep), source=REPODATA_JSON)
    return _finish(found, [r for r in rows if r.name in keep])


def _too_large(size: int, limit: int) -> str:
    return (f"no shards are published and {REPODATA} is {size:,} bytes, more than this view decodes per request "
            f"({limit:,}): with shards written (write-shards, the default) it reads only the matching names")  # fmt: skip


def _finish(found: Found, rows: list[Row]) -> Found:
    rows.sort(key=lambda r: (r.name, r.version, r.build, r.filename))
    found.matched = len(rows)
    found.rows = rows[:MAX_RESULTS]
    return found


def _rows(doc: dict[Any, Any]) -> Iterable[Row]:
    """Rows of a shard or repodata.json document: `packages`, `packages.conda`, and `v3`
    (keyed by the file name without its extension)."""
    for section in ("packages", "packages.conda"):
        records = doc.get(section)
        if isinstance(records, dict):
            for fn, record in records.items():
                if isinstance(fn, str) and isinstance(record, dict):
                    yield _row(fn, record)
    v3 = doc.get("v3")
    if isinstance(v3, dict):
        for section, records in v3.items():
            suffix = _V3_SUFFIX.get(section) if isinstance(section, str) else None
            if suffix is not None and isinstance(records, dict):
                for stem, record in records.items():
                    if isinstance(stem, str) and isinstance(record, dict):
                        yield _row(stem + suffix, record)


def _row(fn: str, record: dict[Any, Any]) -> Row:
    return Row(fn, _str(record.get("name")), _str(record.get("version")), _str(record.get("build")),
               _int(record.get("size")), _int(record.get("indexed_timestamp")), _int(record.get("timestamp")))  # fmt: skip


def _str(v: object) -> str:
    return v if isinstance(v, str) else ""


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


class ViewBusy(Exception):
    """The package view could not answer now: a search is still reading (one at a time),
    or the store did not answer within LANE_SECONDS."""


_lane = threading.Lock()  # one search at a time, on a thread of its own


def search_off_listener(store: ChannelStore, subdir: str, query: str, *, use_shards: bool = True, wait: float = LANE_SECONDS) -> Found:
    """`search` on a daemon thread of its own, waited for at most `wait` seconds, so a store
    that hangs (a bucket's connect timeout and retries) never holds the listener's thread,
    which also answers /healthz and /metrics. At most one such search runs: while it does,
    another request is answered ViewBusy at once. Errors of the search are raised here."""
    if not _lane.acquire(blocking=False):
        raise ViewBusy("a package search is still reading the channel store; try again shortly")
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["found"] = search(store, subdir, query, use_shards=use_shards)
        except BaseException as exc:  # handed to the waiting request
            box["error"] = exc
        finally:
            _lane.release()
            done.set()

    threading.Thread(target=run, name="package-view", daemon=True).start()
    if not done.wait(wait):
        raise ViewBusy(f"the channel store did not answer within {wait:g} s; try again shortly")
    if "error" in box:
        raise box["error"]
    return box["found"]  # type: ignore[no-any-return]
