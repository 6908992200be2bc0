"""Which published packages advertise an attestation sidecar (docs/attestations.md).

Nothing is stored for this: the sidecars beside the packages are the state. A full run
lists the subdir's files once and reads a `.sigs` (and its immutable copy) only when its
state (size, mtime, identity) or its copy's differs from what the memo remembers of the
last look; a run over touched names looks only at the packages those names belong to (a
sidecar's name, or a package's own). The verdicts live in the memo (`RecordMemo.sidecars`),
so a new memo (a restart, a failed run) starts with a full look.

A refused sidecar is logged once per look, with its reason; the package is published
without the field.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Container, Iterable
from dataclasses import dataclass, field

from conda_indexd.formats import attestations
from conda_indexd.formats.attestations import Verdict
from conda_indexd.names import SIGS, is_package_name, sidecar_of
from conda_indexd.stores.base import ChannelStore, FileState, key
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

Signature = tuple[float, int, str]  # mtime, size, identity


def _sig(state: FileState | None) -> Signature | None:
    return None if state is None else (state.mtime, state.size, state.identity)


@dataclass
class Known:
    sigs: Signature  # the .sigs file as it was looked at
    copy: Signature | None  # its immutable copy (None: none under the name its bytes give)
    sha256: str | None  # the .sigs bytes' sha256 (None: not read, too large)
    verdict: Verdict


@dataclass
class Sidecars:
    """The last look at each published package's sidecar. `complete`: a full look was
    made into this memo, so runs over touched names may update it name by name."""

    complete: bool = False
    known: dict[str, Known] = field(default_factory=dict)

    def advertised(self) -> dict[str, str]:
        """{package filename: attestations_sha256}."""
        return {fn: k.verdict.sha256 for fn, k in self.known.items() if k.verdict.sha256 is not None}

    def refused(self) -> dict[str, int]:
        """{reason: packages whose sidecar is currently refused for it}."""
        return dict(Counter(k.verdict.reason for k in self.known.values() if k.verdict.reason is not None))


def update(
    sidecars: Sidecars,
    store: ChannelStore,
    subdir: str,
    published: Container[str],
    *,
    touched: Collection[str] | None,
    hold: Collection[str] = (),
    listed: list[FileState] | None = None,
) -> set[str]:
    """Bring `sidecars` in line with the store for the packages in `published`; returns
    the package filenames whose advertised value changed. `touched` as SubdirRun's
    (None: the whole subdir); a package with a name in `hold` (an upload in progress,
    the sidecar's or its own) keeps its last verdict. `listed`: the sidecars the run's
    own listing of the subdir saw (`Listing.sidecars`), so a full look lists nothing
    again; None lists them here."""
    before = sidecars.advertised()
    held = {_package_of(n) for n in hold}
    if touched is None or not sidecars.complete:
        _full(sidecars, store, subdir, published, held, listed)
    else:
        wanted = {_package_of(n) for n in touched} - held
        _some(sidecars, store, subdir, published, sorted(wanted))
    after = sidecars.advertised()
    return {fn for fn in before.keys() | after.keys() if before.get(fn) != after.get(fn)}


def _package_of(name: str) -> str:
    found = sidecar_of(name)
    return found[0] if found is not None else name


def _full(sidecars: Sidecars, store: ChannelStore, subdir: str, published: Container[str], held: set[str], listed: list[FileState] | None) -> None:
    present = listed if listed is not None else store.stat_files(subdir)[0]
    sigs: dict[str, FileState] = {}
    copies: dict[str, FileState] = {}
    for f in present:
        found = sidecar_of(f.path)
        if found is None:
            continue
        if found[1] is None:
            sigs[found[0]] = f
        else:
            copies[f.path] = f
    known: dict[str, Known] = {fn: k for fn, k in sidecars.known.items() if fn in held and fn in published}
    for fn, state in sigs.items():
        if fn in held or fn not in published:
            continue
        prev = sidecars.known.get(fn)
        if prev is not None and prev.sigs == _sig(state):
            copy = copies.get(attestations.copy_name(fn, prev.sha256)) if prev.sha256 else None
            if prev.copy == _sig(copy):
                known[fn] = prev
                continue
        looked = _look(store, subdir, fn, state, copies)
        if looked is not None:
            known[fn] = looked
    sidecars.known = known
    sidecars.complete = True


def _some(sidecars: Sidecars, store: ChannelStore, subdir: str, published: Container[str], packages: Iterable[str]) -> None:
    wanted = [fn for fn in packages if is_package_name(fn)]
    for fn in wanted:
        sidecars.known.pop(fn, None)
    looking = [fn for fn in wanted if fn in published]
    if not looking:
        return
    present, _ = store.stat_files(subdir, [fn + SIGS for fn in looking])
    for state in present:
        fn = state.path[: -len(SIGS)]
        looked = _look(store, subdir, fn, state, None)
        if looked is not None:
            sidecars.known[fn] = looked


def _look(store: ChannelStore, subdir: str, fn: str, state: FileState, copies: dict[str, FileState] | None) -> Known | None:
    """Read and check one package's `.sigs` and its copy (None: the sidecar went away)."""
    name = fn + SIGS
    if state.size > attestations.CAP:
        return _said(subdir, fn, Known(_sig(state) or (0.0, 0, ""), None, None, attestations.too_large(state.size)))
    try:
        data = store.read(key(subdir, name))
    except OSError as exc:  # a store that cannot be reached raises StoreError: the run fails
        return _said(subdir, fn, Known(_sig(state) or (0.0, 0, ""), None, None, Verdict(None, attestations.UNREADABLE, f"{type(exc).__name__}: {exc}")))
    if data is None:
        return None
    sha = attestations.digest(data)
    copy = attestations.copy_name(fn, sha)
    if copies is not None:
        copy_state = copies.get(copy)
    else:
        found, _ = store.stat_files(subdir, [copy])
        copy_state = found[0] if found else None
    # only a plain file is read (stat_files lists no folder, symlink or FIFO), and only
    # one no larger than the cap
    copy_bytes = store.read(key(subdir, copy)) if copy_state is not None and copy_state.size <= attestations.CAP else None
    return _said(subdir, fn, Known(_sig(state) or (0.0, 0, ""), _sig(copy_state), sha, attestations.check(data, copy_bytes)))


def _said(subdir: str, fn: str, known: Known) -> Known:
    v = known.verdict
    if v.sha256 is None:
        log.warning("attestation sidecar refused; the package is published without it", subdir=subdir, path=fn + SIGS, reason=v.reason, detail=v.detail)
    else:
        log.debug("attestation sidecar advertised", subdir=subdir, path=fn + SIGS, sha256=v.sha256)
    return known
