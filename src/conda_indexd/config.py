"""Settings shared by the one-shot `index` command and the daemon."""

from __future__ import annotations

import os
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

PACKAGE_EXTENSIONS = (".conda", ".tar.bz2")

# CEP-16: keep unreferenced shards about a week (clients cache the shard index).
DEFAULT_SHARD_RETENTION = 7 * 24 * 3600.0


def is_package_name(name: str) -> bool:
    """A file name that counts as a package: `*.conda` or `*.tar.bz2`, not a dotfile."""
    return name.endswith(PACKAGE_EXTENSIONS) and not name.startswith(".")


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

    @property
    def output_root(self) -> Path:
        return self.output or self.channel

    def subdir_path(self, subdir: str) -> Path:
        """Where the packages and the cache of a subdir live."""
        return self.channel / subdir

    def output_dir(self, subdir: str) -> Path:
        """Where the repodata of a subdir is published."""
        return self.output_root / subdir

    def cache_db(self, subdir: str) -> Path:
        """cache.db always lives under the input channel, even with --output (as conda-index)."""
        return self.channel / subdir / ".cache" / "cache.db"

    def current_pins(self) -> dict[str, list[str]]:
        if self.current_index_versions is None:
            return {}
        from .current import load_pins

        return load_pins(self.current_index_versions)

    def shard_state(self, subdir: str) -> Path:
        """What the shard upkeep remembers between runs, next to cache.db."""
        return self.cache_db(subdir).with_name("shards-state.json")


def detect_subdirs(config: IndexConfig) -> list[str]:
    """The subdirs to index: the ones asked for, or noarch plus every known platform folder."""
    if config.subdirs:
        return sorted(set(config.subdirs))
    found = {
        entry.name
        for entry in os.scandir(config.channel)
        if entry.name in KNOWN_SUBDIRS and entry.is_dir()
    }
    return sorted(found | {"noarch"})
