"""The published packages of one subdir as the status page's package view searches them
(`/status/<subdir>?q=name`): name, version, build, size, indexed_timestamp per file.

Kept in step with the subdir's record memo by the thread that owns the memo (the worker
after a successful run, a standby after refreshing it): `apply` decodes only the records
a run added or replaced, `sync` (the first time, and after a failed run) compares every
sha256. The listener thread only reads `rows`, a dict that is replaced, never changed in
place, so it needs no lock.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Collection
from typing import Any, NamedTuple

from conda_indexd.pipeline.memo import RecordMemo

MAX_RESULTS = 200  # files shown for one query
MAX_QUERY = 200  # characters of a query


class Row(NamedTuple):
    filename: str
    name: str
    version: str
    build: str
    size: int | None
    indexed_timestamp: int | None  # CEP-47, milliseconds (None: not stamped)
    timestamp: int | None  # the build timestamp the record carries, milliseconds
    sha256: str = ""  # what the row was decoded for (the memo's; "" when it had none)


class Catalogue:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}  # filename -> row; replaced as a whole, never changed in place
        self.stale = True  # the next update compares every record (the first; after a failed run)

    def sync(self, memo: RecordMemo) -> None:
        """Follow the memo: decode the records that are new or changed, drop the gone."""
        old = self.rows
        rows: dict[str, Row] = {}
        for fn, sha, piece in memo.records():
            row = old.get(fn)
            rows[fn] = row if row is not None and sha and row.sha256 == sha else _row(fn, piece, sha)
        self.rows = rows
        self.stale = False

    def apply(self, memo: RecordMemo, added: Collection[str], removed: Collection[str], replaced: Collection[str]) -> None:
        """Follow a run (or a refresh) that changed these files of the memo; a full `sync`
        when stale or when the counts do not agree."""
        if self.stale:
            self.sync(memo)
            return
        if not added and not removed and not replaced and len(self.rows) == len(memo):
            return
        rows = dict(self.rows)
        for fn in removed:
            rows.pop(fn, None)
        for fn in (*added, *replaced):
            if fn in memo:
                rows[fn] = _row(fn, memo.piece(fn), memo.sha256(fn))
        if len(rows) != len(memo):
            self.sync(memo)
            return
        self.rows = rows

    def search(self, query: str, limit: int = MAX_RESULTS) -> tuple[list[Row], int]:
        """(the files whose package name contains `query`, case-insensitive, sorted by name,
        version and build; at most `limit`) and how many matched in all."""
        rows = self.rows  # one reference: a sync replacing it meanwhile does not matter
        q = query.strip().lower()
        found = [r for r in rows.values() if q in r.name.lower()]
        return heapq.nsmallest(limit, found, key=lambda r: (r.name, r.version, r.build, r.filename)), len(found)

    def __len__(self) -> int:
        return len(self.rows)


def _row(fn: str, piece: bytes, sha: str) -> Row:
    """A record piece (`"filename":{record}`) as a row; what the record lacks stays empty."""
    try:
        record: Any = json.loads(piece[len(json.dumps(fn)) + 1 :])
    except ValueError:
        record = {}
    if not isinstance(record, dict):
        record = {}
    return Row(fn, str(record.get("name", "")), str(record.get("version", "")), str(record.get("build", "")),
               _int(record.get("size")), _int(record.get("indexed_timestamp")), _int(record.get("timestamp")), sha)  # fmt: skip


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None
