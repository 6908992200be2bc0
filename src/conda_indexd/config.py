"""Settings: `IndexConfig` for the one-shot `index` command and the daemon's indexing,
`WatchConfig` for the daemon around it. Built by the command line (the only place that
reads the environment); frozen.

`IndexConfig.output_shape()` is what shapes the published files: every field but the
ones marked `WHERE` (where the channel, its outputs and its cache are, and how many
threads read it). A no-op rescan is only skipped while that shape is unchanged
(pipeline/quiet.py), so a new output flag is part of it without being listed anywhere."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path

# conda's known platform subdirs (docs/spec §1); noarch is always indexed.
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
DEFAULT_DB_URL = "postgresql:///conda_index"  # conda-index's default
# CEP-47: a build `timestamp` this much later than the package's indexed_timestamp (or
# than now) is still taken as clock skew between the build machine and the indexer.
TIMESTAMP_SKEW = 300.0

# A field marked WHERE says where things are or how fast to go, not what is published.
WHERE = {"shapes_outputs": False}


class Db(StrEnum):
    """--db: where the cache lives."""

    SQLITE3 = "sqlite3"  # <subdir>/.cache/cache.db (caches/sqlite/)
    POSTGRESQL = "postgresql"  # conda-index's tables in db_url's database (caches/pg/)


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


@dataclass(frozen=True)
class IndexConfig:
    channel: Path = field(metadata=WHERE)
    output: Path | None = field(default=None, metadata=WHERE)
    subdirs: tuple[str, ...] = field(default=(), metadata=WHERE)
    channel_name: str | None = None
    zst: bool = True
    zst_level: int = 3
    bz2: bool = False
    run_exports: bool = False
    base_url: str | None = None
    threads: int = field(default_factory=default_threads, metadata=WHERE)
    patch_generator: Path | None = None  # .py generator or a package with patch_instructions.json
    current_repodata: bool = False
    channeldata: bool = False  # channeldata.json, rss.xml (with rss), index.html pages
    rss: bool = True
    html_dependencies: bool = False
    current_index_versions: Path | None = None  # -m: YAML {name: [version, ...]} pins
    write_shards: bool = True
    shard_retention: float = DEFAULT_SHARD_RETENTION
    db: Db = field(default=Db.SQLITE3, metadata=WHERE)
    db_url: str | None = field(default=None, metadata=WHERE)
    pkgs_dirs: tuple[Path, ...] = field(default=(), metadata=WHERE)  # --from-pkgs-dir: conda package caches served as this channel (pkgs/)
    origin_overlay: bool = False  # --from-pkgs-dir: apply CHANNEL/.pkgs-dirs/origin-<subdir>.json (formats/origin.py)
    # s3://BUCKET/PREFIX: the packages live there and `channel` is the local state
    # folder holding the caches (--cache-dir); `output_url`: publish to an s3:// prefix
    channel_url: str | None = field(default=None, metadata=WHERE)
    output_url: str | None = field(default=None, metadata=WHERE)
    lease: float | None = field(default=None, metadata=WHERE)  # the pair's lease in seconds (None: ha/leader.DEFAULT_LEASE)
    # a bucket: our unfinished multipart uploads older than this are aborted (None: stores/s3/upload.STALE_UPLOAD_AGE)
    stale_upload_age: float | None = field(default=None, metadata=WHERE)
    # CEP-47 (docs/indexed-timestamp.md): `indexed_timestamp` on every record (off:
    # conda-index 0.13's exact bytes); packages whose build `timestamp` is later than
    # their indexed_timestamp (past TIMESTAMP_SKEW) are flagged, or left out when rejected
    indexed_timestamp: bool = True
    # --update-only (conda-index's meaning): add and update packages, keep the records of
    # packages no longer on disk (for machines that hold only the new files)
    update_only: bool = False
    reject_future_timestamps: bool = False
    # CEP-48 (docs/repodata-revisions.md): records that need it go into the top-level `v3`
    # map only; --repodata-next (conda-index's meaning) puts every record there
    repodata_next: bool = False
    v3_message: str | None = None  # info.repodata_revisions.v3.message
    v3_always: bool = False  # advertise v3 (the map and its revision info) even with no v3 record ([index-config] repodata-revisions)
    # CEP-42 info.channel_relations: sorted (base|overrides, "../channel") pairs (None: none)
    channel_relations: tuple[tuple[str, str], ...] | None = None
    notices: bytes | None = None  # CEP-6: notices.json at the channel root (None: an existing one is left alone)

    def __post_init__(self) -> None:
        object.__setattr__(self, "db", Db(self.db))  # "postgresql" from a caller is Db.POSTGRESQL

    def output_shape(self) -> tuple[tuple[str, object], ...]:
        """Every setting that shapes the published files, as (name, value) pairs."""
        return tuple((f.name, getattr(self, f.name)) for f in fields(self) if f.metadata.get("shapes_outputs", True))

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


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8650


@dataclass(frozen=True)
class WatchConfig:
    index: IndexConfig
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    debounce: float = 1.0
    max_delay: float = 10.0
    settle: float = 1.0
    upload_timeout: float = 600.0  # an upload never closed is read after this long unchanged
    rescan_interval: float = 600.0
    polling: bool = False
    poll_interval: float = 1.0
    events_token: str | None = None  # POST /s3-events needs it (s3:// channels)
    # systemd's sd_notify protocol, read from the environment by the command line:
    # $NOTIFY_SOCKET, $WATCHDOG_USEC, $WATCHDOG_PID (None: not run by systemd)
    notify_socket: str | None = None
    watchdog_usec: str | None = None
    watchdog_pid: str | None = None
