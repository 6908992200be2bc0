"""Stage 5: channel-level files, channeldata.json, rss.xml and the index.html pages, from
every subdir's published repodata.json and cache (docs/spec §6.3-6.5), written last (§8.2)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from conda_indexd.caches.base import SubdirCache
from conda_indexd.config import IndexConfig
from conda_indexd.formats import channeldata
from conda_indexd.names import CHANNELDATA, INDEX_HTML, NOTICES, REPODATA, RSS, SUBDIR_FILES
from conda_indexd.pipeline.seams import Backends
from conda_indexd.stores.base import key


def publish_channel(config: IndexConfig, backends: Backends, subdirs: Iterable[str]) -> list[str]:
    """Returns the files written (relative to the output root)."""
    out = backends.outputs
    written = []
    if config.notices is not None and out.write(NOTICES, config.notices):  # CEP-6, from configuration
        written.append(NOTICES)
    if not config.channeldata:
        return written
    repodatas: dict[str, dict[str, Any]] = {}
    for subdir in subdirs:
        published = out.read(key(subdir, REPODATA))
        if published is not None:
            repodatas[subdir] = json.loads(published)
    caches: dict[str, SubdirCache] = {}

    def load(subdir: str, fn: str) -> dict[str, Any]:
        if subdir not in caches:
            caches[subdir] = backends.caches.open(subdir)
        return channeldata.merged_metadata(*caches[subdir].metadata_texts(fn))

    try:
        data = channeldata.build(repodatas, load)
    finally:
        for cache in caches.values():
            cache.close()
    name = config.channel_name or config.channel.name
    files = {CHANNELDATA: channeldata.serialize(data)}
    if config.rss:
        files[RSS] = channeldata.rss(name, data)
    files[INDEX_HTML] = channeldata.root_html(name, data)
    for file, content in files.items():
        if out.write(file, content):
            written.append(file)
    for subdir, doc in repodatas.items():
        present = [f for f in SUBDIR_FILES if out.exists(key(subdir, f))]
        page = channeldata.subdir_html(name, subdir, present, doc, config.html_dependencies)
        if out.write(key(subdir, INDEX_HTML), page):
            written.append(key(subdir, INDEX_HTML))
    return written
