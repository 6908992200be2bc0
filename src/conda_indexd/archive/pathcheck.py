"""Which path names a package may hold: every name must stay inside the install prefix.

A name is unsafe when it is empty, absolute (`/x`, `\\x`, `C:x`) or has a `..`
component (`/` and `\\` both count as separators: Windows clients split on either).
`.` components, doubled slashes and a trailing slash are harmless and allowed (real
packages have `./info/...` members and a `./` root entry).

Checked by the archive reader on every member name it passes over and on every path
declared in `info/paths.json` and `info/files` (see docs/reliability.md for what is not
read, and so not checked).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_SEPARATORS = re.compile(r"[/\\]")
_SHOWN = 120  # characters of an offending name quoted in the message


def why_unsafe(name: str) -> str | None:
    """None for a name that stays inside the prefix, else what is wrong with it."""
    if not name:
        return "is empty"
    if name[0] in "/\\":
        return "is an absolute path"
    if len(name) > 1 and name[1] == ":" and name[0].isascii() and name[0].isalpha():
        return "is an absolute path (a drive letter)"
    if ".." in name and ".." in _SEPARATORS.split(name):
        return "has a '..' component"
    return None


def describe(where: str, name: str, why: str) -> str:
    shown = name if len(name) <= _SHOWN else name[:_SHOWN] + "..."
    return f"{where} {shown!r} {why}"


def first_unsafe(names: Iterable[str], where: str) -> str | None:
    """The message for the first unsafe name, or None when all are safe."""
    for name in names:
        why = why_unsafe(name)
        if why is not None:
            return describe(where, name, why)
    return None


def paths_json_names(parsed: Any) -> Iterable[str]:
    """The `_path` of every entry of a parsed info/paths.json (malformed parts skipped:
    paths.json is otherwise optional metadata)."""
    entries = parsed.get("paths") if isinstance(parsed, dict) else None
    if not isinstance(entries, list):
        return
    for entry in entries:
        if isinstance(entry, dict):
            path = entry.get("_path")
            if isinstance(path, str):
                yield path


def files_names(raw: bytes) -> Iterable[str]:
    """The paths listed in info/files, one a line, read as conda reads them: stripped,
    blank lines and `#` comments skipped."""
    for line in raw.decode("utf-8", errors="surrogateescape").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line
