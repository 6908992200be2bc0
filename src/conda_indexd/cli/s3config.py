"""The command line's s3:// addresses: which prefix, and where its local state lives.

A channel in a bucket keeps its caches in a local state folder: `--cache-dir`, else
`$XDG_STATE_HOME/conda-indexd/BUCKET/PREFIX` (XDG_STATE_HOME defaults to
~/.local/state), one `<subdir>/cache.db` each. Nothing here talks to the network.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from conda_indexd.stores.s3.objects import is_s3_url, parse_s3_url
from conda_indexd.util.fsio import writable_folder


def state_folder(url: str, cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir).absolute()
    bucket, prefix = parse_s3_url(url)
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return (base / "conda-indexd" / bucket / prefix).absolute()


def remote_settings(channel: str, output: str | None, cache_dir: str | None) -> tuple[Path, str | None, str | None] | None:
    """(state or channel folder, channel URL, output URL), None for a local channel with
    a local output. Raises ValueError with one line."""
    channel_url = channel if is_s3_url(channel) else None
    output_url = output if output and is_s3_url(output) else None
    if channel_url is None and output_url is None:
        if cache_dir:
            raise ValueError("--cache-dir is only for s3:// channels (a local channel keeps cache.db in <subdir>/.cache)")
        return None
    for url in (channel_url, output_url):
        if url is not None:
            parse_s3_url(url)
    if importlib.util.find_spec("boto3") is None:
        raise ValueError("s3:// addresses need boto3: pip install 'conda-indexd[s3]'")
    if channel_url is None:
        if cache_dir:
            raise ValueError("--cache-dir is only for s3:// channels (a local channel keeps cache.db in <subdir>/.cache)")
        return Path(channel).absolute(), None, output_url
    state = state_folder(channel_url, cache_dir)
    if problem := writable_folder(state):
        raise ValueError(f"the cache folder: {problem}")
    return state, channel_url, output_url
