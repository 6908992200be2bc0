"""HTTP/1.x request heads in, responses out: the protocol part of the listener, no I/O.

`parse_head(buf)` returns None while the head is incomplete, a `Request` once it is, or
raises `RequestError` with the status to answer: 431 when the head grows over
`MAX_HEAD` bytes, 400 when it is not an HTTP/1.x request (binary garbage, TLS, a bad
request line or header line). The request body is only read for a POST route
(daemon/http/server.py): `Request.body_start` says where it begins in the buffer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from conda_indexd.errors import IndexdError

MAX_HEAD = 8192  # bytes of request line + headers
_METHOD = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_VERSION = re.compile(rb"HTTP/1\.[0-9]")
_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class Headers(dict[str, str]):
    """Header fields by lower-cased name; `get` takes any case (the last value wins)."""

    def get(self, name: str, default: str = "", /) -> str:  # type: ignore[override]
        return super().get(name.lower(), default)


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    version: str
    headers: Headers = field(default_factory=Headers)
    body_start: int = 0  # index of the first body byte in the buffer the head was parsed from

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class RequestError(IndexdError):
    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status
        self.body = f"{why}\n".encode()


def _head_end(buf: bytes | bytearray) -> int:
    """Index just past the blank line ending the head, or -1."""
    crlf = buf.find(b"\r\n\r\n")
    lf = buf.find(b"\n\n")
    ends = [i + 4 for i in (crlf,) if i >= 0] + [i + 2 for i in (lf,) if i >= 0]
    return min(ends) if ends else -1


def parse_head(buf: bytes | bytearray) -> Request | None:
    # an early look at the request line: garbage is refused before a whole head arrives
    first_end = buf.find(b"\n")
    first = bytes(buf if first_end < 0 else buf[:first_end])
    if first and not _plausible_start(first):
        raise RequestError(400, "bad request")
    end = _head_end(buf)
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise RequestError(431, "request header fields too large")
        return None
    if end > MAX_HEAD:
        raise RequestError(431, "request header fields too large")
    lines = bytes(buf[:end]).split(b"\n")
    lines = [line.removesuffix(b"\r") for line in lines]
    request_line, header_lines = lines[0], [line for line in lines[1:] if line]
    parts = request_line.split(b" ")
    if len(parts) != 3 or not _METHOD.fullmatch(parts[0]) or not _VERSION.fullmatch(parts[2]):
        raise RequestError(400, "bad request line")
    target = parts[1]
    if not target or any(b < 0x21 or b > 0x7E for b in target):
        raise RequestError(400, "bad request target")
    headers = Headers()
    for line in header_lines:
        name, colon, value = line.partition(b":")
        if not colon or not _HEADER_NAME.fullmatch(name):
            raise RequestError(400, "bad header line")
        headers[name.decode("ascii").lower()] = value.strip().decode("latin-1")
    return Request(parts[0].decode("ascii"), target.decode("ascii"), parts[2].decode("ascii"), headers, end)


def _plausible_start(first: bytes) -> bool:
    """The beginning of a request line: a token method, then a space (if seen so far)."""
    head = first[:32].split(b" ", 1)[0].removesuffix(b"\r")
    if not head:
        return False
    return bool(_METHOD.fullmatch(head))


def render_response(status: int, phrase: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"HTTP/1.0 {status} {phrase}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
