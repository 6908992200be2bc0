"""CEP-47 `indexed_timestamp`: the pure rules (docs/indexed-timestamp.md).

The value is milliseconds since the epoch at which a file's identity (its sha256) first
entered the channel. It is kept per (subdir, filename, sha256) in a table of our own
beside the cache (caches/), decided by pipeline/timestamps.py, and added to each record
as it is serialised: the cached index_json text is never changed, so conda-index's
rows stay exactly its own.

A record's *source* is the cached index_json text, followed by a NUL and the
indexed_timestamp when the record carries one. JSON text never holds a raw NUL, so the
source is unambiguous, and the memo's kept pieces (keyed by their source) are never
used for another value.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

FIELD = "indexed_timestamp"
# conda's rule: a `timestamp` above the largest second count of year 9999 is in ms
_MS_FROM = 253402300799


def to_ms(value: object) -> int | None:
    """A build `timestamp` (seconds or milliseconds, as conda reads it) in ms, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value <= 0:
        return None
    return int(value) if value > _MS_FROM else int(value * 1000)


def seed(build_timestamp: object, mtime: float | None, now_ms: int) -> int:
    """A package indexed before indexed_timestamp existed: its build `timestamp`, else
    its file time, never later than now (conda-index PR #342's rule)."""
    value = to_ms(build_timestamp)
    if value is None and mtime:
        value = int(mtime * 1000)
    return min(value, now_ms) if value is not None else now_ms


def flag(build_timestamp: int | None, indexed_timestamp: int, skew_ms: int) -> str | None:
    """Why a build `timestamp` is suspicious (CEP-47: later than the indexed_timestamp,
    which is never later than when it was set), or None."""
    if build_timestamp is None or build_timestamp <= indexed_timestamp + skew_ms:
        return None
    ahead = (build_timestamp - indexed_timestamp) / 1000
    return f"build timestamp {build_timestamp} is {ahead:.0f} s later than its indexed_timestamp {indexed_timestamp}"


def source(index_json_text: str, indexed_timestamp: int | None, stamped: bool = True) -> str:
    """`stamped` False: the text as it is (conda-index 0.13's records); True: a NUL and
    the value follow (none known: the record gets none, whatever index.json says)."""
    if not stamped:
        return index_json_text
    return f"{index_json_text}\0{'' if indexed_timestamp is None else indexed_timestamp}"


def split(record_source: str) -> tuple[str, bool, int | None]:
    """(index_json text, stamped, indexed_timestamp)."""
    text, sep, value = record_source.partition("\0")
    return text, bool(sep), (int(value) if value else None)


def record(record_source: str) -> dict[str, Any]:
    """The record dict of a source: stamped, ours replaces whatever a builder put in
    index.json (conda-index PR #342 ignores a builder's value too)."""
    text, stamped, value = split(record_source)
    out = json.loads(text)
    if stamped:
        out.pop(FIELD, None)
        if value is not None:
            out[FIELD] = value
    return out


def strip_patches(instructions: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Instructions without any change to indexed_timestamp (never patched, CEP-47),
    and the filenames whose instruction tried one."""
    touched = [fn for section in ("packages", "packages.conda") for fn, fix in instructions.get(section, {}).items() if isinstance(fix, dict) and FIELD in fix]
    if not touched:
        return instructions, []
    clean = copy.copy(instructions)
    for section in ("packages", "packages.conda"):
        fixes = instructions.get(section)
        if isinstance(fixes, dict):
            clean[section] = {fn: ({k: v for k, v in fix.items() if k != FIELD} if isinstance(fix, dict) else fix) for fn, fix in fixes.items()}
    return clean, sorted(touched)


def bounds(values: Iterable[int]) -> tuple[int | None, int | None]:
    """(oldest, newest) of some indexed_timestamps (None, None when there are none)."""
    lo = hi = None
    for v in values:
        lo = v if lo is None or v < lo else lo
        hi = v if hi is None or v > hi else hi
    return lo, hi
