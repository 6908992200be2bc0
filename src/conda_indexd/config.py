"""Settings shared by the one-shot `index` command and the daemon."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# conda's known platform subdirs (channel-format.md §1); noarch is always indexed.
KNOWN_SUBDIRS = frozenset(
    {
        "noarch",
        "linux-32",
        "linux-64",
        "linux-aarch64",
        "linux-armv6l",
        "linux-armv7l",
        "linux-ppc64",
        "linux-ppc64le",
        "linux-riscv64",
        "linux-s390x",
        "osx-64",
        "osx-arm64",
        "win-32",
        "win-64",
        "win-arm64",
        "zos-z",
        "emscripten-wasm32",
        "wasi-wasm32",
        "freebsd-64",
    }
)

# CEP-16: keep unreferenced shards about a week (clients cache the shard index).
DEFAULT_SHARD_RETENTION = 7 * 24 * 3600.0


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


@dataclass(frozen=True)
class IndexConfig:
    channel: Path
    output: Path | None = None
    subdirs: tuple[str, ...] = ()
    channel_name: str | None = None
    zst: bool = True
    zst_level: int = 3
    bz2: bool = False
    run_exports: bool = False
    base_url: str | None = None
    threads: int = field(default_factory=default_threads)
    patch_generator: Path | None = None  # .py generator or a package with patch_instructions.json
    current_repodata: bool = False
    channeldata: bool = False  # channeldata.json, rss.xml (with rss), index.html pages
    rss: bool = True
    html_dependencies: bool = False
    current_index_versions: Path | None = None  # -m: YAML {name: [version, ...]} pins
    write_shards: bool = True
    shard_retention: float = DEFAULT_SHARD_RETENTION
    db: str = "sqlite3"  # or "postgresql": the cache in db_url's database (pgcache.py)
    db_url: str | None = None
    pkgs_dirs: tuple[Path, ...] = ()  # --from-pkgs-dir: conda package caches served as this channel (pkgsplace.py)
    origin_overlay: bool = False  # --from-pkgs-dir: apply CHANNEL/.pkgs-dirs/origin-<subdir>.json (origin.py)
    # s3://BUCKET/PREFIX: the packages live there and `channel` is the local state
    # folder holding the caches (--cache-dir); `output_url`: publish to an s3:// prefix
    channel_url: str | None = None
    output_url: str | None = None
    # a bucket: our unfinished multipart uploads older than this are aborted (None: s3upload.STALE_UPLOAD_AGE)
    stale_upload_age: float | None = None

    @property
    def remote(self) -> bool:
        return self.channel_url is not None

    @property
    def location(self) -> str:
        """The channel as logs and the status page name it."""
        return self.channel_url or str(self.channel)

    @property
    def output_root(self) -> Path:
        return self.output or self.channel


def detect_subdirs(config: IndexConfig, present: Iterable[str]) -> list[str]:
    """The subdirs to index: the ones asked for, or noarch plus every known platform
    among the channel's `present` folders."""
    if config.subdirs:
        return sorted(set(config.subdirs))
    return sorted({name for name in present if name in KNOWN_SUBDIRS} | {"noarch"})
