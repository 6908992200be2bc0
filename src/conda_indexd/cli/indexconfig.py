"""`--config FILE`: the `[index-config]` section of a pixi / rattler config file
(docs/index-config.md), so one file configures rattler-index and conda-indexd.

Keys (all optional): write-zst, write-shards, base-url, repodata-revisions,
package-revision-assignment, channel-relations, notices. A top-level key of the section
whose value is a table and that is not one of these names a channel: a URL (`s3://bucket/
prefix`) or an absolute folder path. Every table whose key is the channel or a prefix of it
on a `/` boundary applies, the longest last (it wins); the section's own keys come first.
Flags given on the command line win over the file. Other sections of the file are ignored.
An unknown key or a bad value is a ValueError with one line (exit 2).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conda_indexd.formats import channelmeta

SECTION = "index-config"
KEYS = frozenset({"write-zst", "write-shards", "base-url", "repodata-revisions", "package-revision-assignment", "channel-relations", "notices"})
ASSIGNMENTS = ("from-index-json", "latest")


@dataclass(frozen=True)
class Settings:
    """What the file says for one channel (None: not set there)."""

    zst: bool | None = None
    write_shards: bool | None = None
    base_url: str | None = None
    v3_always: bool = False
    v3_message: str | None = None
    all_v3: bool = False
    channel_relations: tuple[tuple[str, str], ...] | None = None
    notices: bytes | None = None


def load(path: Path, target: str) -> Settings:
    """The settings for the channel `target` (its s3:// URL or absolute folder path)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ValueError(f"--config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--config {path}: not valid TOML ({exc})") from None
    section = data.get(SECTION, {})
    if not isinstance(section, dict):
        raise ValueError(f"--config {path}: [{SECTION}] must be a table")
    defaults: dict[str, Any] = {}
    channels: dict[str, dict[str, Any]] = {}
    for key, value in section.items():
        if key in KEYS:
            defaults[key] = value
        elif isinstance(value, dict):
            channels[key] = value
        else:
            raise ValueError(f"--config {path}: unknown key {SECTION}.{key} (known: {', '.join(sorted(KEYS))}, or a channel table)")
    for key, table in channels.items():
        unknown = sorted(set(table) - KEYS)
        if unknown:
            raise ValueError(f'--config {path}: unknown key {SECTION}."{key}".{unknown[0]}')
    merged = dict(defaults)
    where = f"{path} [{SECTION}]"
    goal = target.rstrip("/")
    for key in sorted((k for k in channels if _matches(_norm(k), goal)), key=lambda k: len(_norm(k))):
        merged.update(channels[key])
        where = f'{path} [{SECTION}."{key}"]'
    return _settings(merged, where)


def _norm(key: str) -> str:
    return os.path.expanduser(key).rstrip("/") if not key.startswith(("s3://", "http://", "https://", "file://")) else key.rstrip("/")


def _matches(key: str, target: str) -> bool:
    return key == target or (target.startswith(key) and target[len(key) :].startswith("/"))


def _bool(value: object, key: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}: {key} must be true or false, not {value!r}")
    return value


def _settings(cfg: dict[str, Any], where: str) -> Settings:
    out: dict[str, Any] = {}
    if "write-zst" in cfg:
        out["zst"] = _bool(cfg["write-zst"], "write-zst", where)
    if "write-shards" in cfg:
        out["write_shards"] = _bool(cfg["write-shards"], "write-shards", where)
    if "base-url" in cfg:
        url = cfg["base-url"]
        if not isinstance(url, str) or not url.strip():
            raise ValueError(f"{where}: base-url must be a non-empty string")
        out["base_url"] = url
    revisions = cfg.get("repodata-revisions")
    if revisions is not None:
        if not isinstance(revisions, list):
            raise ValueError(f'{where}: repodata-revisions must be a list such as ["v3"]')
        for item in revisions:
            name, message = (item, None) if isinstance(item, str) else (item.get("revision"), item.get("message")) if isinstance(item, dict) else (item, None)
            if name != "v3":
                raise ValueError(f"{where}: repodata-revisions: {name!r}: only v3 can be configured (the legacy layout is implicit)")
            if message is not None and not isinstance(message, str):
                raise ValueError(f"{where}: repodata-revisions: message must be a string")
            out["v3_always"], out["v3_message"] = True, message
    assignment = cfg.get("package-revision-assignment")
    if assignment is not None:
        if assignment not in ASSIGNMENTS:
            raise ValueError(f"{where}: package-revision-assignment {assignment!r}: choose {' or '.join(ASSIGNMENTS)}")
        if assignment == "latest":
            if not out.get("v3_always"):
                raise ValueError(f'{where}: package-revision-assignment = "latest" needs repodata-revisions = ["v3"]')
            out["all_v3"] = True
    if "channel-relations" in cfg:
        out["channel_relations"] = channelmeta.relations(cfg["channel-relations"], where) or None
    if "notices" in cfg:
        out["notices"] = channelmeta.notices_json(channelmeta.notices(cfg["notices"], where))
    return Settings(**out)
