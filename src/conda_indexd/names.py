"""One home for the names and small encodings every stage shares.

File names of the outputs, the package-name rules, the `.tar.bz2` <-> `.conda` twin,
conda-index's compact JSON, and UTC timestamps. Nothing here does I/O.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

CONDA, TAR_BZ2 = ".conda", ".tar.bz2"
PACKAGE_EXTENSIONS = (CONDA, TAR_BZ2)

REPODATA = "repodata.json"
REPODATA_FROM_PACKAGES = "repodata_from_packages.json"
RUN_EXPORTS = "run_exports.json"
CURRENT = "current_repodata.json"
PATCH_INSTRUCTIONS = "patch_instructions.json"
COMPRESSED = (REPODATA, REPODATA_FROM_PACKAGES, CURRENT)  # the outputs with .zst/.bz2 copies
COMPRESSED_SUFFIXES = (".zst", ".bz2")
SHARD_INDEX = "repodata_shards.msgpack.zst"
SHARDS_DIR = "shards"
SHARD_STATE = "shards-state.json"  # what the shard upkeep remembers, kept with the cache
CHANNELDATA, RSS, INDEX_HTML = "channeldata.json", "rss.xml", "index.html"
NOTICES = "notices.json"  # CEP-6, at the channel root
# what a subdir's index.html lists when present
SUBDIR_FILES = (REPODATA, REPODATA + ".zst", REPODATA + ".bz2", REPODATA_FROM_PACKAGES,
                REPODATA_FROM_PACKAGES + ".zst", REPODATA_FROM_PACKAGES + ".bz2", PATCH_INSTRUCTIONS,
                CURRENT, SHARD_INDEX, RUN_EXPORTS)  # fmt: skip

# a shard's file name in `shards/`: its sha256 in hex (CEP-16); group 1 is the digest
SHARD_FILE = re.compile(r"^([0-9a-f]{64})\.msgpack\.zst$")

# the temporary name a file is written under before its rename: `.<name>.<8 hex>.tmp`
TEMP_FILE = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


def temp_file_name(name: str) -> str:
    """A fresh temporary name for `name`, in the same folder (matches TEMP_FILE)."""
    return f".{name}.{secrets.token_hex(4)}.tmp"


# every file the indexer publishes in a subdir (shards aside): watched for outside changes
PUBLISHED_NAMES = frozenset([*(n + sfx for n in COMPRESSED for sfx in ("", *COMPRESSED_SUFFIXES)), SHARD_INDEX, RUN_EXPORTS, PATCH_INSTRUCTIONS])


def is_output_key(key: str) -> bool:
    """A key (relative to the channel) this indexer publishes, never a package: the channel
    files at the top, a subdir's published names and index.html, its shard files."""
    parts = key.split("/")
    if len(parts) == 1:
        return key in (CHANNELDATA, RSS, INDEX_HTML)
    if len(parts) == 2:
        return parts[1] in PUBLISHED_NAMES or parts[1] == INDEX_HTML
    return len(parts) == 3 and parts[1] == SHARDS_DIR and SHARD_FILE.match(parts[2]) is not None


# Keys conda-index drops from info/index.json (docs/spec §2.2).
FILTERED_KEYS = frozenset(
    {
        "arch",
        "has_prefix",
        "mtime",
        "platform",
        "ucs",
        "requires_features",
        "binstar",
        "target-triplet",
        "machine",
        "operatingsystem",
    }
)


def is_package_name(name: str) -> bool:
    """A file name that counts as a package: `*.conda` or `*.tar.bz2`, not a dotfile."""
    return name.endswith(PACKAGE_EXTENSIONS) and not name.startswith(".")


# attestation sidecars (docs/attestations.md): `<package>.sigs` and its immutable copy
# `<package>.sigs.<sha256 hex of its bytes>`, beside the package
SIGS = ".sigs"
_SIGS_COPY = re.compile(r"^(.+)\.sigs\.([0-9a-f]{64})$")


def sidecar_of(name: str) -> tuple[str, str | None] | None:
    """(package file name, the copy's sha256 hex or None for the mutable `.sigs`) when
    `name` is an attestation sidecar of a package file name, else None."""
    if name.endswith(SIGS):
        package = name[: -len(SIGS)]
        return (package, None) if is_package_name(package) else None
    m = _SIGS_COPY.match(name)
    if m is not None and is_package_name(m.group(1)):
        return m.group(1), m.group(2)
    return None


def is_sidecar_name(name: str) -> bool:
    return sidecar_of(name) is not None


def stem(filename: str) -> str:
    """`name-version-build` of a package file name."""
    return filename.removesuffix(CONDA).removesuffix(TAR_BZ2)


def conda_twin(filename: str) -> str:
    """The `.conda` name of a `.tar.bz2` (other names unchanged), as patches key them."""
    return filename[: -len(TAR_BZ2)] + CONDA if filename.endswith(TAR_BZ2) else filename


def tar_twin(filename: str) -> str:
    """The `.tar.bz2` name of a `.conda` (other names unchanged)."""
    return filename[: -len(CONDA)] + TAR_BZ2 if filename.endswith(CONDA) else filename


def section_of(filename: str) -> str | None:
    """The repodata section a package file belongs in."""
    if filename.endswith(CONDA):
        return "packages.conda"
    if filename.endswith(TAR_BZ2):
        return "packages"
    return None


def compact_json(obj: Any) -> str:
    """conda-index's serialisation: sorted keys, no spaces, ensure_ascii."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def utc_timestamp(seconds: float | None = None) -> str:
    """ISO 8601 UTC to the second (`2026-12-01T23:05:35Z`)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
