"""conda-index 0.13's files that conda-indexd supersedes, found and (on request) removed.

What `python -m conda_index --write-shards` writes in each subdir that conda-indexd does
not (docs/spec §1, §5.2; checked by running conda-index 0.13):

- `<sha256>.msgpack.zst` shard files directly in the subdir: conda-indexd's shards live
  in `shards/` (its index says `shards_base_url: "./shards/"`), so no client of a
  conda-indexd channel asks for these.
- `repodata_shards_from_packages.msgpack.zst`: the unpatched shard index; no client reads
  it and conda-indexd does not write it.
- `index.html`, conda-index's subdir page (recognised by its template), when
  conda-indexd writes none (`--channeldata` off). With `--channeldata` conda-indexd
  replaces it.
- `patch_instructions.json` holding only conda-index's shards-pass map `{name: {}}`
  (written when no patch generator is set): it patches nothing. Real patch instructions
  are never counted.

They are removed only with `--clean-conda-index-leftovers`, and in a subdir only once
conda-indexd's own shard index is published there and every shard it names exists in
`shards/`: a client holding conda-index's old index keeps finding its shards until then.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from conda_indexd.config import IndexConfig, detect_subdirs
from conda_indexd.formats.shards import decode, shard_digests
from conda_indexd.names import SHARD_FILE, SHARD_INDEX, SHARDS_DIR
from conda_indexd.stores.local import LocalStore
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

UNPATCHED_SHARD_INDEX = "repodata_shards_from_packages.msgpack.zst"
INDEX_HTML = "index.html"
PATCH_INSTRUCTIONS = "patch_instructions.json"
LIST_AT_MOST = 20  # names in one log record; the rest are counted
_INSTRUCTION_KEYS = frozenset({"patch_instructions_version", "packages", "packages.conda", "revoke", "remove"})
_READ_AT_MOST = 1 << 20  # a conda-index subdir page or shards-pass map larger than this is not looked into


@dataclass
class SubdirLeftovers:
    subdir: str
    folder: Path
    files: list[str] = field(default_factory=list)

    def log_fields(self) -> dict[str, object]:
        return {"subdir": self.subdir, "count": len(self.files), "files": shown(self.files)}


def shown(names: list[str]) -> list[str]:
    """The first LIST_AT_MOST names, then '... and N more'."""
    if len(names) <= LIST_AT_MOST:
        return names
    return [*names[:LIST_AT_MOST], f"... and {len(names) - LIST_AT_MOST} more"]


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(_READ_AT_MOST + 1)
    except OSError:
        return b""


def is_conda_index_page(path: Path) -> bool:
    """conda-index's subdir-index.html.j2: a Filename/SHA256/MD5 table and an `Updated:` address."""
    data = _head(path)
    return len(data) <= _READ_AT_MOST and b"<th>SHA256</th>" in data and b"<address>Updated:" in data


def is_shards_pass_map(path: Path) -> bool:
    """conda-index's `{name: {}}` map from its shards pass, which patches nothing."""
    data = _head(path)
    if len(data) > _READ_AT_MOST:
        return False
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and bool(doc) and not (doc.keys() & _INSTRUCTION_KEYS) and all(value == {} for value in doc.values())


def find_in(folder: Path, write_html: bool) -> list[str]:
    """The leftover names in one subdir output folder, sorted."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        name = entry.name  # names first: a big subdir has many entries, few candidates
        if not (SHARD_FILE.match(name) or name in (UNPATCHED_SHARD_INDEX, INDEX_HTML, PATCH_INSTRUCTIONS)):
            continue
        if not entry.is_file(follow_symlinks=False):
            continue
        path = folder / name
        if (
            SHARD_FILE.match(name)
            or name == UNPATCHED_SHARD_INDEX
            or (name == INDEX_HTML and not write_html and is_conda_index_page(path))
            or (name == PATCH_INSTRUCTIONS and is_shards_pass_map(path))
        ):
            found.append(name)
    return sorted(found)


def find(config: IndexConfig, subdirs: Iterable[str] | None = None) -> list[SubdirLeftovers]:
    """Every subdir (of those indexed) that holds conda-index leftovers."""
    out = []
    for subdir in detect_subdirs(config, LocalStore(config.channel).subdirs()) if subdirs is None else subdirs:
        folder = config.output_root / subdir
        files = find_in(folder, write_html=config.channeldata)
        if files:
            out.append(SubdirLeftovers(subdir, folder, files))
    return out


def our_shards_published(folder: Path) -> str | None:
    """None when conda-indexd's shard index is in `folder` and every shard it names is in
    `shards/`; otherwise why not."""
    try:
        index = decode((folder / SHARD_INDEX).read_bytes())
        base = index["info"]["shards_base_url"]
        names = index["shards"]
    except FileNotFoundError:
        return f"no {SHARD_INDEX} yet"
    except Exception:  # noqa: BLE001 - unreadable or foreign
        return f"{SHARD_INDEX} is not readable"
    if base != f"./{SHARDS_DIR}/":
        return f"{SHARD_INDEX} is not conda-indexd's (shards_base_url {base!r})"
    present = shard_digests(LocalStore(folder).list_files(SHARDS_DIR))
    missing = sum(1 for digest in names.values() if bytes(digest).hex() not in present)
    if missing:
        return f"{missing} shards named by {SHARD_INDEX} are not in {SHARDS_DIR}/ yet"
    return None


def clean(found: SubdirLeftovers) -> tuple[list[str], str | None]:
    """Remove one subdir's leftovers once our shards are there: (removed, why not)."""
    why_not = our_shards_published(found.folder)
    if why_not is not None:
        return [], why_not
    removed = []
    for name in found.files:
        try:
            os.unlink(found.folder / name)
        except FileNotFoundError:
            continue
        removed.append(name)
    return removed, None


def report(config: IndexConfig, remove: bool, subdirs: Iterable[str] | None = None) -> list[str]:
    """Log the leftovers once per subdir; with `remove`, remove them where that is safe.
    Returns the removed paths, relative to the output root."""
    removed_all: list[str] = []
    for found in find(config, subdirs):
        if not remove:
            log.info("conda-index leftovers (remove with --clean-conda-index-leftovers)", **found.log_fields())
            continue
        removed, why_not = clean(found) if config.write_shards else ([], "--no-write-shards: conda-indexd writes no shards")
        if why_not is not None:
            log.warning("conda-index leftovers kept: conda-indexd's shards are not published yet",
                        reason=why_not, **found.log_fields())  # fmt: skip
            continue
        log.info("conda-index leftovers removed", subdir=found.subdir, count=len(removed), files=shown(removed))
        removed_all += [f"{found.subdir}/{name}" for name in removed]
    return removed_all
