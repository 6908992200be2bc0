"""Attestation sidecars (rattler PR #2773, the ceps#142 draft): the pure rules
(docs/attestations.md).

Beside a package `<package>` sits `<package>.sigs`, a non-empty JSON array of Sigstore
bundles, and its immutable copy `<package>.sigs.<sha256>` (the sha256 of those very
bytes, 64 lowercase hex digits). A pair that checks out is advertised in the package's
record as `attestations_sha256`; anything else leaves the record without the field,
with a reason. The bundles themselves are not verified here (that is the client's job).

The field reaches every published record through the one patch path: `layer` adds it to
the instructions the build applies (under an internal key that is never written to
patch_instructions.json), and `strip` keeps the channel's own patches from setting or
deleting it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

FIELD = "attestations_sha256"
CAP = 1 << 20  # bytes: a larger .sigs is refused without being read
KEY = "_conda_indexd_attestations"  # {filename: sha256} inside the applied instructions, never written

# why a sidecar is not advertised (the log's `reason`, the metric's label)
TOO_LARGE = "too-large"
NOT_JSON = "not-json"
NOT_ARRAY = "not-array"
EMPTY = "empty-array"
NOT_OBJECTS = "not-objects"
NO_COPY = "missing-copy"
COPY_DIFFERS = "copy-differs"
UNREADABLE = "unreadable"
REASONS = (TOO_LARGE, NOT_JSON, NOT_ARRAY, EMPTY, NOT_OBJECTS, NO_COPY, COPY_DIFFERS, UNREADABLE)


@dataclass(frozen=True)
class Verdict:
    sha256: str | None  # advertised when set
    reason: str | None = None  # one of REASONS when refused
    detail: str = ""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def copy_name(package: str, sha256: str) -> str:
    """The immutable copy's file name."""
    return f"{package}.sigs.{sha256}"


def too_large(size: int) -> Verdict:
    return Verdict(None, TOO_LARGE, f"{size} bytes, more than the cap of {CAP}")


def check(sigs: bytes, copy_bytes: bytes | None) -> Verdict:
    """The verdict on a `.sigs` file's bytes and its immutable copy's (None: there is no
    copy under the name its sha256 gives)."""
    if len(sigs) > CAP:
        return too_large(len(sigs))
    try:
        doc = json.loads(sigs)
    except (ValueError, RecursionError) as exc:
        return Verdict(None, NOT_JSON, _one_line(exc))
    if not isinstance(doc, list):
        return Verdict(None, NOT_ARRAY, f"a JSON {type(doc).__name__}, not an array")
    if not doc:
        return Verdict(None, EMPTY, "the array holds no bundle")
    if not all(isinstance(item, dict) for item in doc):
        return Verdict(None, NOT_OBJECTS, "every element must be a Sigstore bundle (a JSON object)")
    sha = digest(sigs)
    if copy_bytes is None:
        return Verdict(None, NO_COPY, f"no immutable copy .sigs.{sha}")
    if copy_bytes != sigs:
        return Verdict(None, COPY_DIFFERS, f"the immutable copy .sigs.{sha} holds other bytes")
    return Verdict(sha)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def strip(instructions: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Instructions without any change to attestations_sha256 (only the sidecars decide
    it) and without our internal key, and the filenames whose instruction tried one."""
    touched = sorted(
        fn for section in ("packages", "packages.conda") for fn, fix in instructions.get(section, {}).items() if isinstance(fix, dict) and FIELD in fix
    )
    if not touched and KEY not in instructions:
        return instructions, []
    clean = {k: v for k, v in instructions.items() if k != KEY}
    for section in ("packages", "packages.conda"):
        fixes = instructions.get(section)
        if isinstance(fixes, dict):
            clean[section] = {fn: ({k: v for k, v in fix.items() if k != FIELD} if isinstance(fix, dict) else fix) for fn, fix in fixes.items()}
    return clean, touched


def layer(attested: dict[str, str], instructions: dict[str, Any]) -> dict[str, Any]:
    """Instructions that also give each attested filename its attestations_sha256 (see
    patches.per_record: per file, never through a .tar.bz2's .conda twin)."""
    if not attested:
        return instructions
    out = copy.copy(instructions)
    out[KEY] = dict(attested)
    return out
