"""Channel folders that look like a platform subdir but are not one conda knows.

conda-indexd indexes only noarch and conda's known platforms (docs/spec §1); a
typo such as `linux-fake/` or `osx-arm65/` would otherwise be skipped without a word.
They are logged once at start and listed on the status page.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from conda_indexd.config import KNOWN_SUBDIRS
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

# `os-arch` (linux-fake, Linux-64, win_64 aside) or starting like a platform (linux64, noarch2)
_PLATFORM_LIKE = re.compile(r"^[A-Za-z0-9]+-[A-Za-z0-9_]+$")
_PREFIXES = ("noarch", "linux", "osx", "win", "zos", "emscripten", "wasi", "freebsd")


def looks_like_platform(name: str) -> bool:
    return bool(_PLATFORM_LIKE.match(name)) or name.lower().startswith(_PREFIXES)


def ignored_folders(channel: Path) -> list[dict[str, str]]:
    """[{folder, reason}] for each platform-like folder that is not a known subdir, sorted."""
    out = []
    try:
        entries = list(os.scandir(channel))
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        if name in KNOWN_SUBDIRS or name.startswith(".") or not looks_like_platform(name):
            continue
        try:
            if not entry.is_dir():
                continue
        except OSError:
            continue
        import difflib  # only for a folder that is ignored (a slow import)

        close = difflib.get_close_matches(name.lower(), sorted(KNOWN_SUBDIRS), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        out.append({"folder": name, "reason": f"not a platform conda knows{hint}"})
    return sorted(out, key=lambda d: d["folder"])


def log_ignored(channel: Path) -> list[dict[str, str]]:
    """Log each ignored folder once (one line each); returns them."""
    found = ignored_folders(channel)
    for item in found:
        log.warning("folder ignored", folder=item["folder"], reason=item["reason"])
    return found
