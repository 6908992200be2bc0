"""The published packages of one subdir as the status page's package view searches them
(`/status/<subdir>?q=name`): name, version, build, size, indexed_timestamp per file.

Kept in step with the subdir's record memo by the thread that owns the memo (the worker
after a successful run, a standby after refreshing it), which decodes only the records
whose sha256 changed. The listener thread only reads `rows`, a dict that is replaced,
never changed in place, so it needs no lock.
"""

from __future__ import annotations

import json
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


class Catalogue:
    def __init__(self) -> None:
        self._shas: dict[str, str] = {}
        self.rows: dict[str, Row] = {}  # filename -> row; replaced as a whole by sync()

    def sync(self, memo: RecordMemo) -> None:
        """Follow the memo: decode the records that are new or changed, drop the gone."""
        shas = dict(memo.items())
        if shas == self._shas:
            return
        rows = dict(self.rows)
        for fn in self._shas.keys() - shas.keys():
            rows.pop(fn, None)
        for fn, sha in shas.items():
            if self._shas.get(fn) != sha or fn not in rows or not sha:
                rows[fn] = _row(fn, memo.piece(fn))
        self._shas = shas
        self.rows = rows

    def search(self, query: str, limit: int = MAX_RESULTS) -> tuple[list[Row], int]:
        """(the files whose package name contains `query`, case-insensitive, sorted by name,
        version and build; at most `limit`) and how many matched in all."""
        rows = self.rows  # one reference: a sync replacing it meanwhile does not matter
        q = query.strip().lower()
        found = [r for r in rows.values() if q in r.name.lower()]
        found.sort(key=lambda r: (r.name, r.version, r.build, r.filename))
        return found[:limit], len(found)

    def __len__(self) -> int:
        return len(self.rows)


def _row(fn: str, piece: bytes) -> Row:
    """A record piece (`"filename":{record}`) as a row; what it lacks stays empty."""
    try:
        record: dict[str, Any] = json.loads(piece[len(json.dumps(fn)) + 1 :])
    except ValueError:
        record = {}
    return Row(fn, str(record.get("name", "")), str(record.get("version", "")), str(record.get("build", "")),
               _int(record.get("size")), _int(record.get("indexed_timestamp")), _int(record.get("timestamp")))  # fmt: skip


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None
