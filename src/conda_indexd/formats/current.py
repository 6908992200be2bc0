"""current_repodata.json (docs/spec §4) without conda, for conda's classic solver.

Version order and match specs come from py-rattler (`Version`, `VersionSpec`,
`MatchSpec`), which implements conda's rules; it is an optional extra
(`pip install conda-indexd[outputs]`) because only `--current-repodata` needs it.

From the (patched) repodata:
1. `.tar.bz2` files with a `.conda` twin are set aside (conda's SubdirData does this).
2. For each name, every record of its newest version is kept.
3. Pins (`-m FILE`: YAML `{name: [version, ...]}`): all records of the newest version
   matching `name=<pin>` (a prefix match) are added.
4. Missing dependencies, one pass, not transitive: a `depends` spec that nothing kept
   satisfies brings in all records of the newest version in the full index that does.
5. Features: a name whose kept records use `track_features`/`features` also gets the
   newest earlier-or-equal record that uses none.
6. Output: `info`, `removed`, `repodata_version` as in repodata.json, the kept records,
   and every kept `.conda` record gets `legacy_bz2_md5` (its twin's md5, or null).
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from conda_indexd.errors import IndexdError
from conda_indexd.names import conda_twin, tar_twin

Match = Callable[[Any, str], bool]  # (version, filename) -> bool


class CurrentRepodataUnavailable(IndexdError):
    pass


def rattler_module() -> Any:
    try:
        import rattler
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise CurrentRepodataUnavailable("--current-repodata needs py-rattler: pip install 'conda-indexd[outputs]'") from exc
    return rattler


def available() -> bool:
    try:
        rattler_module()
    except CurrentRepodataUnavailable:
        return False
    return True


def parse_pins(text: str, origin: str) -> dict[str, list[str]]:
    """The -m/--current-index-versions-file YAML (`text`, read from `origin`):
    {name: [version, ...]} (or one version)."""
    import ruamel.yaml

    data = ruamel.yaml.YAML(typ="safe", pure=True).load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: expected a mapping of package names to versions")
    pins: dict[str, list[str]] = {}
    for name, versions in data.items():
        values = versions if isinstance(versions, list) else [versions]
        pins[str(name)] = [str(v) for v in values]
    return pins


def build(repodata: dict[str, Any], pins: dict[str, list[str]] | None = None) -> dict[str, Any]:
    r = rattler_module()
    Version, VersionSpec, MatchSpec = r.Version, r.VersionSpec, r.MatchSpec

    tar, conda = repodata.get("packages", {}), repodata.get("packages.conda", {})
    candidates: dict[str, dict[str, Any]] = {}  # fn -> record, twins set aside
    for fn, rec in tar.items():
        if conda_twin(fn) not in conda:
            candidates[fn] = rec
    candidates.update(conda)

    by_name: dict[str, list[tuple[Any, str]]] = defaultdict(list)
    for fn, rec in candidates.items():
        try:
            by_name[rec["name"]].append((Version(str(rec["version"])), fn))
        except Exception:  # noqa: BLE001 - an unparsable version is never "current"
            continue
    for entries in by_name.values():
        entries.sort(key=lambda e: (e[0], candidates[e[1]].get("build_number", 0), candidates[e[1]].get("timestamp", 0)))

    keep: set[str] = set()

    def newest_matching(name: str, matches: Match) -> set[str]:
        entries = [(v, fn) for v, fn in by_name.get(name, ()) if matches(v, fn)]
        top = max((v for v, _ in entries), default=None)
        return {fn for v, fn in entries if v == top}

    def spec_matcher(ms: Any) -> Match:
        spec = VersionSpec(ms.version) if ms.version else None
        build = str(ms.build) if ms.build else None
        return lambda v, fn: (spec is None or spec.matches(v)) and (build is None or fnmatch.fnmatchcase(str(candidates[fn].get("build", "")), build))

    for entries in by_name.values():
        top = entries[-1][0]
        keep |= {fn for v, fn in entries if v == top}
    for name, versions in (pins or {}).items():
        for pin in versions:
            spec = VersionSpec(f"{pin}.*") if "*" not in pin else VersionSpec(pin)
            keep |= newest_matching(name, _pin_matcher(spec, pin))

    added: set[str] = set()
    for fn in sorted(keep):
        for dep in candidates[fn].get("depends", ()):
            try:
                ms = MatchSpec(dep)
            except Exception:  # noqa: BLE001 - a spec conda could not parse either
                continue
            matches = spec_matcher(ms)
            name = ms.name.normalized
            if not any(f in keep and matches(v, f) for v, f in by_name.get(name, ())):
                added |= newest_matching(name, matches)
    keep |= added

    for entries in by_name.values():
        kept = [(v, fn) for v, fn in entries if fn in keep]
        if not any(_featured(candidates[fn]) for _, fn in kept):
            continue
        ceiling = max(v for v, _ in kept)
        plain = [(v, fn) for v, fn in entries if v <= ceiling and not _featured(candidates[fn])]
        if plain:
            keep.add(plain[-1][1])

    out_tar = {fn: tar[fn] for fn in sorted(keep) if fn in tar}
    out_conda = {}
    for fn in sorted(keep):
        if fn in conda:
            rec = dict(conda[fn])
            twin = tar.get(tar_twin(fn))
            rec["legacy_bz2_md5"] = twin.get("md5") if twin else None
            out_conda[fn] = rec
    doc = {k: v for k, v in repodata.items() if k not in ("packages", "packages.conda")}
    doc["packages"] = out_tar
    doc["packages.conda"] = out_conda
    return doc


def _featured(rec: dict[str, Any]) -> bool:
    return bool(rec.get("track_features") or rec.get("features"))


def _pin_matcher(spec: Any, pin: str) -> Match:
    """A pin keeps the versions its spec matches, and the version spelled as the pin."""
    return lambda version, _fn: bool(spec.matches(version) or str(version) == pin)
