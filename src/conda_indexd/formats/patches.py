"""Repodata patches (docs/spec §6.6), as conda-index 0.13 applies them: the pure
half (checked, applied, serialised); where instructions come from is pipeline/patchsource.py.

Instructions: `packages` (also re-keyed from .tar.bz2 to .conda), then `packages.conda`,
each merged into existing records only (nested dicts merged, lists replaced, null
deletes); `revoke` (revoked: true, depends += package_has_been_revoked); `remove` (the
record and its twin leave, their names go to `removed`, sorted).

A generator that raises, or instructions of the wrong shape, raise `PatchError`: the
caller publishes nothing for that subdir, so its last good repodata stays.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from conda_indexd.errors import IndexdError
from conda_indexd.formats import attestations
from conda_indexd.names import CONDA, PACKAGE_EXTENSIONS, PATCH_INSTRUCTIONS, TAR_BZ2, compact_json, conda_twin

INSTRUCTIONS = PATCH_INSTRUCTIONS
REVOKED_DEP = "package_has_been_revoked"


class PatchError(IndexdError):
    """The patch source failed for a subdir (one line, for logs and metrics)."""


def check(instructions: Any, origin: str) -> dict[str, Any]:
    """Instructions of the documented shape, or PatchError."""
    if instructions is None:
        return {}
    if not isinstance(instructions, dict):
        raise PatchError(f"{origin}: instructions are a {type(instructions).__name__}, not an object")
    version = instructions.get("patch_instructions_version", 0)
    if not isinstance(version, int) or version > 1:
        raise PatchError(f"{origin}: patch_instructions_version {version!r} is not supported (at most 1)")
    for key in ("packages", "packages.conda"):
        value = instructions.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise PatchError(f"{origin}: {key!r} must map filenames to objects")
    for key in ("revoke", "remove"):
        value = instructions.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PatchError(f"{origin}: {key!r} must be a list of filenames")
    return instructions


def serialize(instructions: dict[str, Any]) -> bytes:
    """patch_instructions.json as conda-index writes it (compact, sorted, final newline)."""
    return (compact_json(instructions) + "\n").encode()


def _merge(record: dict[str, Any], fix: dict[str, Any]) -> None:
    """conda-index's merge_or_update_dict at record level (merge=False): nested dicts are
    merged, lists and scalars replace, null deletes an existing key. As in conda-index,
    a null for a key the record lacks adds it as null."""
    for key, value in fix.items():
        if isinstance(value, dict):
            if isinstance(record.get(key), dict):
                _merge(record[key], value)
            else:
                record[key] = value
        elif value is None and key in record:
            del record[key]
        else:
            record[key] = value


def apply(repodata: dict[str, Any], instructions: dict[str, Any]) -> dict[str, Any]:
    """Patch `repodata` (or a shard: the same two sections) in place and return it."""
    removed = repodata.setdefault("removed", [])
    tar = repodata.get("packages", {})
    conda = repodata.get("packages.conda", {})
    fixes = instructions.get("packages", {})
    for fn, fix in fixes.items():
        if fn in tar:
            _merge(tar[fn], copy.deepcopy(fix))
    for fn, fix in fixes.items():
        if conda_twin(fn) in conda and fn.endswith(".tar.bz2"):
            _merge(conda[conda_twin(fn)], copy.deepcopy(fix))
    for fn, fix in instructions.get("packages.conda", {}).items():
        if fn in conda:
            _merge(conda[fn], copy.deepcopy(fix))
    for fn, sha in instructions.get(attestations.KEY, {}).items():
        section = tar if fn.endswith(TAR_BZ2) else conda
        if fn in section:
            section[fn][attestations.FIELD] = sha
    for fn in instructions.get("revoke", ()):
        for section, name in ((tar, fn), (conda, conda_twin(fn))):
            if name in section:
                section[name]["revoked"] = True
                section[name].setdefault("depends", []).append(REVOKED_DEP)
    for fn in instructions.get("remove", ()):
        for section, name in ((tar, fn), (conda, conda_twin(fn))):
            if section.pop(name, None) is not None:
                removed.append(name)
    removed.sort()
    return repodata


# --- per record: the same instructions, indexed by the record file they touch -----------
#
# `apply` on a whole document and `patch_record` on each record give the same records:
# every instruction names one file (or its .tar.bz2/.conda twin) and changes only that
# record, and per record the operations run in `apply`'s order (the `packages` fix, its
# `.tar.bz2` twin's fix for a `.conda`, the `packages.conda` fix, revokes, removes).

Op = tuple[str, Any]  # ("merge", fix) | ("revoke", None) | ("remove", None)


def per_record(instructions: dict[str, Any] | None) -> dict[str, list[Op]]:
    """{record filename: its operations}; records without any are left out, so empty
    instructions (conda-index's `{"name": {}}` entries, `{}` fixes) give nothing."""
    ops: dict[str, list[Op]] = {}
    if not instructions:
        return ops
    fixes = instructions.get("packages", {})
    for fn, fix in fixes.items():  # apply(): .tar.bz2 records first
        if fix and fn.endswith(TAR_BZ2):
            ops.setdefault(fn, []).append(("merge", fix))
    for fn, fix in fixes.items():  # then their .conda twins
        if fix and fn.endswith(TAR_BZ2):
            ops.setdefault(conda_twin(fn), []).append(("merge", fix))
    for fn, fix in instructions.get("packages.conda", {}).items():
        if fix and fn.endswith(CONDA):
            ops.setdefault(fn, []).append(("merge", fix))
    for fn, sha in instructions.get(attestations.KEY, {}).items():  # the sidecars': this very file only
        if fn.endswith(PACKAGE_EXTENSIONS):
            ops.setdefault(fn, []).append(("merge", {attestations.FIELD: sha}))
    for kind in ("revoke", "remove"):
        for fn in instructions.get(kind, ()):
            for name in {fn, conda_twin(fn)}:
                if name.endswith(PACKAGE_EXTENSIONS):
                    ops.setdefault(name, []).append((kind, None))
    return ops


def patch_record(record: dict[str, Any], ops: list[Op]) -> bool:
    """Patch one record in place; True when an instruction removes it."""
    for kind, fix in ops:
        if kind == "merge":
            _merge(record, copy.deepcopy(fix))
        elif kind == "revoke":
            record["revoked"] = True
            record.setdefault("depends", []).append(REVOKED_DEP)
        else:
            return True
    return False


def ops_digest(ops: list[Op]) -> str:
    """What a record's operations are, for shard fingerprints."""
    return hashlib.sha256(compact_json(ops).encode()).hexdigest()[:16]
