"""Origin metadata of packages served from conda package caches (pure, no I/O).

conda writes `info/repodata_record.json` into each extracted folder: the record as the
origin channel served it, repodata patches included (a tightened `depends`, an added
`constrains`, a corrected `license`). A package's own `info/index.json` has none of that.
When the record belongs to the tarball we serve (its md5, and its sha256 when it has
one, match the tarball's), the keys where it differs from index.json are kept as the
package's *origin overlay*; a record that does not match is stale and is not used.

Why patch instructions: an overlay is expressed as conda patch instructions keyed by
filename (`packages` / `packages.conda`) and layered under the channel's own patches
(`layer`), so the one path that already reaches repodata.json, every shard and
current_repodata applies it too, and a per-record rework of patches applies it with
the rest. It is never written into `patch_instructions.json` (conda-index keeps applying
that file when its source goes away; an overlay must go when its package goes), and
`repodata_from_packages.json` stays what the tarballs say.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from conda_indexd.names import CONDA, FILTERED_KEYS, tar_twin

OVERLAY_DIR = ".pkgs-dirs"  # channel-level, dotted: never watched, never served by our nginx config

# Keys of repodata_record.json that describe a file or a download, not the package: the
# served record takes md5/sha256/size from the tarball, and fn/url/channel name the origin.
FILE_KEYS = frozenset({"fn", "url", "channel", "schannel", "md5", "sha256", "size", "legacy_bz2_md5", "legacy_bz2_size", "auth"})
# Keys conda derives or normalises when it writes the record (not origin metadata):
# package_type from noarch, timestamp converted to milliseconds.
DERIVED_KEYS = frozenset({"package_type", "timestamp"})
IGNORED_KEYS = FILE_KEYS | DERIVED_KEYS | FILTERED_KEYS
_EMPTY: tuple[Any, ...] = ([], {}, "", None)


def overlay_key(subdir: str) -> str:
    """The channel store key of a subdir's overlay instructions."""
    return f"{OVERLAY_DIR}/origin-{subdir}.json"


def matches(record: dict[str, Any], md5: str, sha256: str) -> bool:
    """The record was made from this tarball: md5 equal, and sha256 when it has one."""
    if record.get("md5") != md5:
        return False
    recorded = record.get("sha256")
    return not recorded or recorded == sha256


def differences(record: dict[str, Any], served: dict[str, Any]) -> dict[str, Any]:
    """{key: origin value} where the origin record says something the served record
    (index.json as conda-index serves it) does not. A key conda fills with an empty
    default (`constrains: []`) while index.json lacks it is no difference."""
    found: dict[str, Any] = {}
    for k, value in record.items():
        if k in IGNORED_KEYS:
            continue
        if k in served:
            if served[k] != value and not _normalised(k, served[k], value):
                found[k] = value
        elif value not in _EMPTY:
            found[k] = value
    return found


def _normalised(k: str, packaged: Any, recorded: Any) -> bool:
    """conda's own rewrites of a value (noarch: true becomes "generic")."""
    return k == "noarch" and packaged is True and recorded == "generic"


def instructions(overlays: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{filename: differences} as patch instructions (one section per format)."""
    doc: dict[str, Any] = {"patch_instructions_version": 1, "packages": {}, "packages.conda": {}}
    for fn, fix in sorted(overlays.items()):
        doc["packages.conda" if fn.endswith(CONDA) else "packages"][fn] = fix
    return doc


def parse(data: bytes | None) -> dict[str, Any] | None:
    """A stored overlay; None when absent or unreadable (the records stay as packaged)."""
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _compose(first: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """One fix equal to merging `first`, then `then` (patches._merge's rules)."""
    out = copy.deepcopy(first)
    for k, value in then.items():
        if isinstance(value, dict) and isinstance(out.get(k), dict):
            out[k] = _compose(out[k], value)
        else:
            out[k] = copy.deepcopy(value)
    return out


def layer(overlay: dict[str, Any] | None, channel: dict[str, Any]) -> dict[str, Any]:
    """Instructions equal to applying `overlay`, then the channel's own `channel`
    instructions: the channel's patches win where both touch a key. patches.apply merges
    `packages` fixes into the `.conda` twins before `packages.conda`, so a `.conda`
    overlay is composed with the twin's `packages` fix, then its own `packages.conda` fix."""
    if not overlay or not (overlay.get("packages") or overlay.get("packages.conda")):
        return channel
    out = copy.deepcopy(channel)
    out.setdefault("patch_instructions_version", overlay.get("patch_instructions_version", 1))
    tar_fixes = out.setdefault("packages", {})
    conda_fixes = out.setdefault("packages.conda", {})
    for fn, fix in overlay.get("packages", {}).items():
        tar_fixes[fn] = _compose(fix, tar_fixes.get(fn, {}))
    for fn, fix in overlay.get("packages.conda", {}).items():
        twin_fix = channel.get("packages", {}).get(tar_twin(fn))
        composed = _compose(fix, twin_fix) if twin_fix else fix
        conda_fixes[fn] = _compose(composed, conda_fixes.get(fn, {}))
    return out


def channel_of(url: str) -> str:
    """The channel URL of a package URL (`.../corpus/noarch/x-1-0.conda` -> `.../corpus`)."""
    parts = url.strip().rsplit("/", 2)
    return parts[0] if len(parts) == 3 else url.strip()
