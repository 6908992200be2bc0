"""What an object in a channel's bucket is named and sent with, pure: the s3:// address,
the Content-Type and Cache-Control of each published key (as the nginx config serves a
folder), the published names written only over what this process last saw (FENCED_NAMES),
and how a HEAD tells that an object already holds some bytes (our sha256 in
its metadata, else a single-part ETag)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from conda_indexd.errors import Fenced
from conda_indexd.names import REPODATA, SHARD_FILE, SHARD_INDEX
from conda_indexd.stores.base import StoreError

SHA256_META = "sha256"  # x-amz-meta-sha256: what `write` compares before a PUT
# the names whose write makes a subdir's publish visible: written only over what this process last saw
FENCED_NAMES = frozenset({SHARD_INDEX, REPODATA, REPODATA + ".zst"})


class WriterFenced(StoreError, Fenced):
    """A conditional write of a published name was refused (412): another writer replaced
    the object since this process last wrote or read it. This writer is deposed."""


def fenced_key(key: str) -> bool:
    """`subdir/<one of FENCED_NAMES>`."""
    subdir, _, name = key.rpartition("/")
    return bool(subdir) and "/" not in subdir and name in FENCED_NAMES


def condition(expected: str | None) -> dict[str, Any]:
    """The request's precondition: the object still has `expected`, or is absent (None)."""
    return {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}


_REVALIDATE = re.compile(r"(^|/)(repodata[a-z_]*|current_repodata|run_exports|channeldata|patch_instructions)\.(json|json\.zst|json\.bz2|msgpack\.zst)$")
_TYPES = {".json": "application/json", ".zst": "application/zstd", ".bz2": "application/x-bzip2",
          ".conda": "application/octet-stream", ".html": "text/html", ".xml": "application/rss+xml",
          ".png": "image/png", ".txt": "text/plain"}  # fmt: skip
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "public, max-age=0, must-revalidate"
SHORT = "public, max-age=60"


def object_headers(key: str) -> tuple[str, str]:
    """(Content-Type, Cache-Control) of a published object, as the nginx config serves it."""
    ctype = _TYPES.get(os.path.splitext(key)[1], "application/octet-stream")
    if SHARD_FILE.match(key.rpartition("/")[2]) or key.endswith((".conda", ".tar.bz2")):
        return ctype, IMMUTABLE
    if _REVALIDATE.search(key):
        return ctype, REVALIDATE
    return ctype, SHORT


def is_s3_url(text: str | os.PathLike[str]) -> bool:
    return isinstance(text, str) and text.startswith("s3://")


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://BUCKET/PREFIX` -> (bucket, prefix without slashes at either end)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"expected s3://BUCKET/PREFIX, got {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"an s3:// address has no query or fragment: {url!r}")
    bucket = parts.netloc
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-_]{1,254}", bucket):
        raise ValueError(f"not a valid bucket name: {bucket!r}")
    prefix = parts.path.strip("/")
    if any(p in ("", ".", "..") for p in prefix.split("/")) and prefix:
        raise ValueError(f"the prefix has an empty, '.' or '..' part: {url!r}")
    return bucket, prefix


def etag(value: str | None) -> str:
    return (value or "").strip('"')


def holds(head: dict[str, Any], size: int, digest: str, md5: Callable[[], str]) -> bool:
    """Whether the object HEAD describes holds bytes of this size and sha256: our sha256
    in its metadata, else the ETag of a single-part object as their MD5 (`md5()`, only
    computed then)."""
    if int(head.get("ContentLength", -1)) != size:
        return False
    remembered = head.get("Metadata", {}).get(SHA256_META)
    if remembered:
        return bool(remembered == digest)
    tag = etag(head.get("ETag"))
    return "-" not in tag and tag == md5()
