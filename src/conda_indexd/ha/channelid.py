"""Which channel id a cache shared in PostgreSQL (and the pair's lease) is kept under.

A local channel keeps it in `<channel>/.cache/cache.json` (conda-index's file,
caches/pg/schema.channel_id). A channel in a bucket keeps the same file in the bucket,
`<prefix>/.cache/cache.json`, not in the local state folder: every host indexing that
prefix against the same database then shares its cache rows and competes for the same
pair lease (a state folder would give each host an id, and a cache, of its own). The
first indexer makes it with a PUT `If-None-Match: *`; the others read the winner's.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from conda_indexd.caches.base import CacheError
from conda_indexd.caches.pg.schema import CHANNEL_ID_PATTERN, channel_id
from conda_indexd.config import IndexConfig

if TYPE_CHECKING:
    from conda_indexd.stores.s3.store import S3Store

BUCKET_KEY = ".cache/cache.json"


def channel_identity(config: IndexConfig) -> Callable[[], str]:
    """The id, looked up on first use (a bucket unreachable at start-up is retried by
    the caller) and then remembered."""
    if config.channel_url is None:
        return functools.cache(lambda: channel_id(config.channel))
    from conda_indexd.stores.s3.store import S3Store

    store = S3Store(config.channel_url)
    return functools.cache(lambda: bucket_channel_id(store))


def bucket_channel_id(store: S3Store) -> str:
    where = f"{store.url}/{BUCKET_KEY}"
    for _ in range(3):
        found = store.get_versioned(BUCKET_KEY)
        if found is None:
            store.put_if(BUCKET_KEY, json.dumps({"channel_id": os.urandom(8).hex()}).encode(), etag=None)
            continue  # made it, or another indexer was first: read whichever is there
        try:
            value = json.loads(found[0]).get("channel_id")
        except (ValueError, AttributeError) as exc:
            raise CacheError(f"{where}: not conda-index's cache.json ({exc})") from None
        if not isinstance(value, str) or not re.fullmatch(CHANNEL_ID_PATTERN, value):
            raise CacheError(f'{where} contains invalid channel_id="{value}"')
        return value
    raise CacheError(f"{where}: written but not readable back")
