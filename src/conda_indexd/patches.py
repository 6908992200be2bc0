"""Repodata patches (channel-format.md §6.6), as conda-index 0.13 applies them.

Sources, per subdir:
- `--patch-generator FILE.py`: `_patch_repodata(repodata, subdir) -> instructions`. It is
  given a copy of the unpatched repodata (conda-index passes the live dict, so a
  generator's in-place changes leak into its output; here they do not);
- `--patch-generator PKG.conda|PKG.tar.bz2`: `<subdir>/patch_instructions.json` from the
  package's pkg component;
- neither: `<channel>/gen_patch.py` when it exists (conda-index does the same).
When the source gives nothing for a subdir, an existing `<subdir>/patch_instructions.json`
is applied again (conda-index's behaviour: patches persist).

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
import json
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from typing import Any

from conda_package_streaming import package_streaming

from .names import CONDA, PACKAGE_EXTENSIONS, PATCH_INSTRUCTIONS, TAR_BZ2, compact_json, conda_twin

INSTRUCTIONS = PATCH_INSTRUCTIONS
REVOKED_DEP = "package_has_been_revoked"


class PatchError(Exception):
    """The patch source failed for a subdir (one line, for logs and metrics)."""


def generator_path(channel: Path, configured: Path | None) -> Path | None:
    if configured is not None:
        return configured
    implicit = channel / "gen_patch.py"
    return implicit if implicit.is_file() else None


def identity(path: Path | None) -> tuple[int, int] | None:
    """What tells the daemon that a generator changed (mtime, size)."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


_modules: dict[tuple[str, tuple[int, int] | None], Any] = {}


def _module(path: Path) -> Any:
    key = (str(path), identity(path))
    if key not in _modules:
        spec = spec_from_file_location("conda_indexd_patch_generator", path)
        if spec is None or spec.loader is None:
            raise PatchError(f"cannot load patch generator {path}")
        module = module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - user code
            raise PatchError(f"patch generator {path.name} failed to load: {type(exc).__name__}: {exc}") from exc
        if not callable(getattr(module, "_patch_repodata", None)):
            raise PatchError(f"patch generator {path.name} defines no _patch_repodata(repodata, subdir)")
        _modules.clear()  # one generator at a time; an edited file replaces the old module
        _modules[key] = module
    return _modules[key]


def from_package(path: Path, subdir: str) -> dict[str, Any]:
    target = f"{subdir}/{INSTRUCTIONS}"
    try:
        for tar, member in package_streaming.stream_conda_component(str(path), component="pkg"):
            if member.name.removeprefix("./") == target:
                reader = tar.extractfile(member)
                if reader is None:
                    raise PatchError(f"{target} in {path.name} is not a file")
                return json.loads(reader.read())
    except PatchError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable package
        raise PatchError(f"cannot read {target} from {path.name}: {type(exc).__name__}: {exc}") from exc
    return {}


def from_generator(path: Path, repodata: dict[str, Any], subdir: str, *, owned: bool = False) -> dict[str, Any]:
    """`owned`: the caller made `repodata` for this call only (no copy is needed)."""
    if not path.is_file():
        raise PatchError(f"patch generator {path} does not exist")
    if path.name.endswith(PACKAGE_EXTENSIONS):
        return from_package(path, subdir)
    module = _module(path)
    try:
        return module._patch_repodata(repodata if owned else copy.deepcopy(repodata), subdir)
    except Exception as exc:  # noqa: BLE001 - user code
        raise PatchError(f"_patch_repodata failed for {subdir}: {type(exc).__name__}: {exc}") from exc


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


def instructions_for(
    subdir: str, repodata: dict[str, Any], generator: Path | None, existing: bytes | None, *, owned: bool = False
) -> tuple[dict[str, Any], bool]:
    """(instructions, fresh): fresh ones came from the generator and are to be written;
    else the `existing` patch_instructions.json (its bytes, None when absent) applies."""
    if generator is not None:
        fresh = check(from_generator(generator, repodata, subdir, owned=owned), generator.name)
        if fresh:
            return fresh, True
    if existing is None:
        return {}, False
    try:
        return check(json.loads(existing), f"{subdir}/{INSTRUCTIONS}"), False
    except ValueError as exc:
        raise PatchError(f"{subdir}/{INSTRUCTIONS} is not valid JSON ({exc})") from exc


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
