"""Channel-level metadata from configuration (pure): CEP-6 `notices.json` at the channel
root and CEP-42 `info.channel_relations` (docs/notices-and-relations.md).

Values come from an `[index-config]` file (cli/indexconfig.py) and are checked here;
every problem is a `ValueError` with one line, which the command line turns into exit 2.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

LEVELS = ("info", "warning", "critical")
NOTICE_KEYS = {"id", "message", "level", "created_at", "expires_at", "expired_at", "interval"}
RELATION_KEYS = ("base", "overrides")


def relations(value: object, where: str) -> tuple[tuple[str, str], ...]:
    """CEP-42 channel_relations as sorted (key, reference) pairs: each reference a
    relative channel path starting with `../`; base and overrides not the same."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: channel-relations must be a table with base and/or overrides")
    unknown = sorted(set(value) - set(RELATION_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown channel-relations key {unknown[0]!r} (base, overrides)")
    out = []
    for k in RELATION_KEYS:
        ref = value.get(k)
        if ref is None:
            continue
        if not isinstance(ref, str) or not ref.startswith("../") or len(ref.rstrip("/")) <= 3 or any(c.isspace() for c in ref):
            raise ValueError(f"{where}: channel-relations {k} = {ref!r}: expected a relative channel path starting with '../'")
        out.append((k, ref.rstrip("/")))
    refs = dict(out)
    if "base" in refs and refs.get("base") == refs.get("overrides"):
        raise ValueError(f"{where}: channel-relations base and overrides must not be the same channel ({refs['base']!r})")
    return tuple(out)


def relations_info(pairs: tuple[tuple[str, str], ...] | None) -> dict[str, str] | None:
    return dict(pairs) if pairs else None


def _timestamp(value: object, field: str, where: str) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{where}: notice {field} needs a time zone (RFC 3339, e.g. 2026-01-01T12:00:00Z)")
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{where}: notice {field} {value!r} is not an RFC 3339 time") from None
        if parsed.tzinfo is None:
            raise ValueError(f"{where}: notice {field} {value!r} needs a time zone")
        return value
    raise ValueError(f"{where}: notice {field} must be an RFC 3339 time")


def notices(value: object, where: str) -> list[dict[str, Any]]:
    """CEP-6 notices, checked: id and message non-empty strings, level info, warning or
    critical (default info), created_at / expires_at RFC 3339 with a zone, interval a
    non-negative integer (hours); ids unique."""
    if not isinstance(value, list):
        raise ValueError(f"{where}: notices must be an array of tables")
    out, ids = [], set()
    for i, notice in enumerate(value):
        at = f"{where}: notices[{i}]"
        if not isinstance(notice, dict):
            raise ValueError(f"{at}: a notice must be a table")
        unknown = sorted(set(notice) - NOTICE_KEYS)
        if unknown:
            raise ValueError(f"{at}: unknown key {unknown[0]!r}")
        nid, message = notice.get("id"), notice.get("message")
        if not isinstance(nid, str) or not nid.strip():
            raise ValueError(f"{at}: a notice needs an id")
        if nid in ids:
            raise ValueError(f"{at}: notice id {nid!r} is used twice")
        ids.add(nid)
        if not isinstance(message, str) or not message.strip():
            raise ValueError(f"{at} ({nid}): a notice needs a message")
        level = notice.get("level", "info")
        if level not in LEVELS:
            raise ValueError(f"{at} ({nid}): level {level!r} is not one of {', '.join(LEVELS)}")
        item: dict[str, Any] = {"id": nid, "level": level, "message": message}
        if "created_at" in notice:
            item["created_at"] = _timestamp(notice["created_at"], "created_at", at)
        expires = notice.get("expires_at", notice.get("expired_at"))
        if expires is not None:
            item["expires_at"] = _timestamp(expires, "expires_at", at)
        if "interval" in notice:
            interval = notice["interval"]
            if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
                raise ValueError(f"{at} ({nid}): interval must be a non-negative integer (hours)")
            item["interval"] = interval
        out.append(item)
    return out


def notices_json(items: list[dict[str, Any]]) -> bytes:
    """notices.json as CEP-6 has it: {"notices": [...]} (sorted keys, an end-of-line)."""
    return (json.dumps({"notices": items}, sort_keys=True, indent=2) + "\n").encode()
