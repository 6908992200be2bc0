"""Two columns conda-index derives from a package's info members (docs/spec
§3.2): the `post_install` flags from info/paths.json and the parsed recipe. Pure."""

from __future__ import annotations

import fnmatch
import json
import threading
from typing import Any


def post_install_flags(parsed: Any) -> str:
    """`post_install_json` from an already parsed paths.json (None when absent)."""
    flags = {
        "binary_prefix": False,
        "text_prefix": False,
        "activate.d": False,
        "deactivate.d": False,
        "pre_link": False,
        "post_link": False,
        "pre_unlink": False,
    }
    paths = parsed.get("paths", []) if isinstance(parsed, dict) else []
    if not isinstance(paths, list):
        paths = []
    for entry in paths:
        if not isinstance(entry, dict):
            continue
        if entry.get("prefix_placeholder"):
            mode = entry.get("file_mode")
            if mode == "binary":
                flags["binary_prefix"] = True
            elif mode == "text":
                flags["text_prefix"] = True
        p = str(entry.get("_path", ""))
        for k in ("activate.d", "deactivate.d"):
            if not flags[k] and p.startswith(f"etc/conda/{k}"):
                flags[k] = True
        for pat in ("pre-link", "post-link", "pre-unlink"):
            key = pat.replace("-", "_")
            if not flags[key] and fnmatch.fnmatch(p, f"*/.*-{pat}.*"):
                flags[key] = True
    return json.dumps(flags)


_local = threading.local()


def recipe_json(raw: bytes) -> str:
    """The recipe parsed as conda-index parses it (ruamel safe, pure), as JSON; {} on error."""
    import ruamel.yaml

    parser = getattr(_local, "yaml", None)
    if parser is None:  # ruamel's YAML objects are not thread-safe: one per thread
        parser = _local.yaml = ruamel.yaml.YAML(typ="safe", pure=True)
    try:
        recipe = parser.load(raw)
    except Exception:  # ruamel raises many error types on bad YAML (RecursionError too)
        recipe = {}
    try:
        return json.dumps(recipe, allow_nan=False)
    except (TypeError, ValueError):  # dates, NaN: sqlite's json() would refuse the row
        try:
            return json.dumps(recipe, default=str, allow_nan=False)
        except (ValueError, RecursionError):
            return "{}"
    except RecursionError:
        return "{}"
