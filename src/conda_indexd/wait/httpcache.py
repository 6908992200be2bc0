"""HTTP GET with normal caching between polls: ETag/If-None-Match, Last-Modified/
If-Modified-Since, gzip, and immutable bodies (content-addressed shards) kept for good.

Standard library only (urllib); used by `conda-indexd wait`.
"""

from __future__ import annotations

import gzip
import urllib.error
import urllib.request
from dataclasses import dataclass

from conda_indexd import __version__
from conda_indexd.errors import IndexdError

USER_AGENT = f"conda-indexd-wait/{__version__}"


class FetchError(IndexdError):
    """The server could not be reached (status None), or answered with an error status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Entry:
    body: bytes
    etag: str | None
    last_modified: str | None


class HttpCache:
    """One cache per `wait` run. `get` returns the body, or None for a 404 (a missing
    optional file such as the shard index)."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._entries: dict[str, _Entry] = {}
        self.requests = 0
        self.not_modified = 0

    def get(self, url: str, immutable: bool = False, missing: tuple[int, ...] = (404, 410)) -> bytes | None:
        """The body (the cached one after a 304); None when the answer is one of `missing`."""
        cached = self._entries.get(url)
        if cached is not None and immutable:
            return cached.body
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip"}
        if cached is not None:
            if cached.etag:
                headers["If-None-Match"] = cached.etag
            if cached.last_modified:
                headers["If-Modified-Since"] = cached.last_modified
        request = urllib.request.Request(url, headers=headers)
        self.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                raw = resp.read()
                encoding = resp.headers.get("Content-Encoding", "")
                etag, last_modified = (
                    resp.headers.get("ETag"),
                    resp.headers.get("Last-Modified"),
                )
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 304 and cached is not None:
                self.not_modified += 1
                return cached.body
            if err.code in missing:
                self._entries.pop(url, None)
                return None
            raise FetchError(f"{url}: HTTP {err.code} {err.reason}", err.code) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise FetchError(f"{url}: {reason}") from None
        try:
            body = gzip.decompress(raw) if encoding.lower() == "gzip" else raw
        except (OSError, EOFError) as err:
            raise FetchError(f"{url}: bad gzip body ({err})") from None
        self._entries[url] = _Entry(body, etag, last_modified)
        return body
