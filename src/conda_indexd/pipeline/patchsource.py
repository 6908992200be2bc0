"""Where a subdir's patch instructions come from (the I/O half of formats/patches.py).

Sources, per subdir:
- `--patch-generator FILE.py`: `_patch_repodata(repodata, subdir) -> instructions`. It is
  given a copy of the unpatched repodata (conda-index passes the live dict, so a
  generator's in-place changes leak into its output; here they do not);
- `--patch-generator PKG.conda|PKG.tar.bz2`: `<subdir>/patch_instructions.json` from the
  package's pkg component;
- neither: `<channel>/gen_patch.py` when it exists (conda-index does the same).
When the source gives nothing for a subdir, an existing `<subdir>/patch_instructions.json`
is applied again (conda-index's behaviour: patches persist).

A generator that raises, or instructions of the wrong shape, raise `PatchError`: the
caller publishes nothing for that subdir, so its last good repodata stays.
"""

from __future__ import annotations

import copy
import json
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from typing import Any

from conda_package_streaming import package_streaming

from conda_indexd.formats.patches import INSTRUCTIONS, PatchError, check
from conda_indexd.names import PACKAGE_EXTENSIONS


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
