"""CEP-48 repodata revisions: which records go into the top-level `v3` map (pure).

A record goes into `v3` (and only there) when its index.json asks for it
(`repodata_revision: 3`) or when it needs it: `extra_depends` or `flags` (CEP-44/45), or a
match spec in `depends`/`constrains` with a `when=` condition (CEP-43), `extras=` or
`flags=` in brackets. The others stay in `packages`/`packages.conda`, where every client
reads them. This is rattler_conda_types' `IndexJson::required_repodata_revision` (the
`from-index-json` assignment of rattler-index), restated over the record dict.

In `v3` a record is keyed by its filename without the extension, in the section named
by the extension (`conda`, `tar.bz2`; `whl` is written empty, as conda-index does).
`info.repodata_revisions.v3` says how many records there are and the oldest and newest
indexed_timestamp among them (CEP-48: MUST be the indexed_timestamp bounds).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

LEGACY, V3 = 0, 3
V3_KEYS = ("extra_depends", "flags")
# bracket keys only v3 readers know (rattler's match spec parser: extras, flags, when)
_V3_BRACKET = re.compile(r"[\[,]\s*(when|extras|flags)\s*=")
_HINTS = ('"repodata_revision"', '"extra_depends"', '"flags"', "when=", "extras=", "flags=")
V3_SECTIONS = {"packages.conda": "conda", "packages": "tar.bz2"}
EXTENSIONS = {".conda": "conda", ".tar.bz2": "tar.bz2"}


def may_need_v3(index_json_text: str) -> bool:
    """A cheap test on the cached text: False means the record is surely legacy."""
    return any(hint in index_json_text for hint in _HINTS)


def spec_needs_v3(spec: object) -> bool:
    return isinstance(spec, str) and "[" in spec and _V3_BRACKET.search(spec) is not None


def _specs(record: dict[str, Any]) -> Iterable[object]:
    for key in ("depends", "constrains"):
        value = record.get(key)
        if isinstance(value, list):
            yield from value


def uses_v3_syntax(record: dict[str, Any]) -> bool:
    return any(record.get(k) for k in V3_KEYS) or any(spec_needs_v3(s) for s in _specs(record))


def required(record: dict[str, Any]) -> int:
    """The revision a record needs (rattler's rule): its own `repodata_revision` when it
    has one, else v3 for v3 fields or syntax, else legacy."""
    declared = record.get("repodata_revision")
    if isinstance(declared, int) and not isinstance(declared, bool):
        return declared
    return V3 if uses_v3_syntax(record) else LEGACY


def problem(record: dict[str, Any]) -> str | None:
    """Why a package cannot be published by the revision rules, or None: a declared
    revision that is not 0 or 3, a legacy package with v3 fields or syntax, or (in a v3
    package) a match spec that is not one."""
    declared = record.get("repodata_revision")
    if "repodata_revision" in record and (isinstance(declared, bool) or declared not in (LEGACY, V3)):
        return f"repodata_revision {declared!r} is not a revision this indexer knows (0 or 3)"
    revision = required(record)
    if revision == LEGACY and uses_v3_syntax(record):
        return "repodata_revision 0 but the package uses v3 fields or match spec syntax (extra_depends, flags, when=, extras=)"
    if revision != V3:
        return None
    for key in V3_KEYS:
        value = record.get(key)
        if key == "flags" and value is not None and not (isinstance(value, list) and all(isinstance(f, str) and f for f in value)):
            return "flags must be a list of non-empty strings"
        if (
            key == "extra_depends"
            and value is not None
            and not (isinstance(value, dict) and all(isinstance(v, list) and all(isinstance(s, str) for s in v) for v in value.values()))
        ):
            return "extra_depends must map names to lists of match specs"
    specs = [*_specs(record), *(s for v in (record.get("extra_depends") or {}).values() for s in v)]
    for spec in specs:
        reason = _bad_spec(spec)
        if reason:
            return f"match spec {spec!r}: {reason}"
    return None


def _bad_spec(spec: object) -> str | None:
    if not isinstance(spec, str) or not spec.strip():
        return "not a match spec"
    if "; if " in spec:
        return "the '; if' condition syntax is not CEP-43's (use [when=\"...\"])"
    depth, quote = 0, ""
    for ch in spec:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                return "unbalanced brackets"
    if depth or quote:
        return "unbalanced brackets or quotes"
    return None


def v3_key(filename: str) -> tuple[str, str] | None:
    """(v3 section, key) of a package filename."""
    for ext, section in EXTENSIONS.items():
        if filename.endswith(ext):
            return section, filename[: -len(ext)]
    return None


def revision_info(n_packages: int, oldest: int | None, newest: int | None, message: str | None = None) -> dict[str, Any]:
    """`info.repodata_revisions` (keys sorted as the whole document is)."""
    info: dict[str, Any] = {}
    if message:
        info["message"] = message
    info.update(n_packages=n_packages, newest=newest, oldest=oldest)
    return {"v3": info}
