"""A fault-injecting HTTP/1.1 proxy in front of the tests' RGW (plain sockets and threads
on 127.0.0.1), for publishing through faults: point AWS_ENDPOINT_URL at `proxy.endpoint`.

Requests pass through unchanged (the Host header too: the SigV4 signature covers it, and
RGW checks it against the header it receives). A `Rule` switched on at runtime answers
the requests it matches instead of forwarding them:

    proxy.fail(Rule("PUT", r"/repodata\\.json$", status=503))   # every PUT of a repodata.json
    proxy.fail(Rule("PUT", r"/shards/", after=3, action="drop"))  # shards after the third: connection dropped
    proxy.clear()

`status` answers with an S3 error document; `drop` reads the request and closes the
connection without an answer (what a client sees when a load balancer's idle timeout or
a crashed backend cuts it), after `stall` seconds. `times` limits how many requests a
rule faults (None: until cleared). `proxy.seen` counts what each rule faulted.
`proxy.journal` lists every request forwarded upstream as `Forwarded(at, method, target,
status)`, `at` the wall-clock time it was sent on (who wrote what, seen from outside the
client); `proxy.listeners` are called with each one as it is sent on.
`Expect: 100-continue` is answered by the proxy itself, so the whole body is read before
a rule decides.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO
from urllib.parse import urlsplit


@dataclass
class Rule:
    method: str  # "PUT", "GET", ... or "*"
    path: str  # a regular expression searched in the request target (path and query)
    status: int = 503
    action: str = "status"  # or "drop"
    after: int = 0  # let this many matching requests through first
    times: int | None = None  # fault this many, then pass (None: until cleared)
    stall: float = 0.0  # seconds before the answer (or the drop)
    matched: int = field(default=0, init=False)
    faulted: int = field(default=0, init=False)

    def applies(self, method: str, target: str) -> bool:
        """Counts the request when it matches; True when this one is to be faulted."""
        if self.method not in ("*", method) or not re.search(self.path, target):
            return False
        self.matched += 1
        if self.matched <= self.after or (self.times is not None and self.faulted >= self.times):
            return False
        self.faulted += 1
        return True


class ConnectionGone(Exception):
    pass


@dataclass
class Forwarded:
    at: float  # time.time() when sent upstream
    method: str
    target: str
    status: int = 0  # the upstream's answer (0 until it came)


def _head(reader: IO[bytes]) -> list[bytes]:
    lines = []
    while True:
        line = reader.readline(65537)
        if not line:
            raise ConnectionGone
        if line in (b"\r\n", b"\n"):
            return lines
        lines.append(line.rstrip(b"\r\n"))


def _headers(lines: list[bytes]) -> dict[str, str]:
    out = {}
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        out[name.strip().lower()] = value.strip()
    return out


def _body(reader: IO[bytes], headers: dict[str, str]) -> bytes:
    """The raw body bytes (chunked bodies as they came, with their framing)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raw = bytearray()
        while True:
            size_line = reader.readline(1024)
            raw += size_line
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (trailer := reader.readline(65537)) not in (b"\r\n", b"\n", b""):
                    raw += trailer
                raw += b"\r\n"
                return bytes(raw)
            raw += _exactly(reader, size + 2)
    return _exactly(reader, int(headers.get("content-length", "0") or 0))


def _exactly(reader: IO[bytes], count: int) -> bytes:
    data = reader.read(count) if count else b""
    if len(data) != count:
        raise ConnectionGone
    return data


class FaultProxy:
    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rules: list[Rule] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._stopped = threading.Event()
        self._open: set[socket.socket] = set()
        self.requests = 0
        self.journal: list[Forwarded] = []
        self.listeners: list[Callable[[Forwarded], None]] = []

    # --- switching faults at runtime -----------------------------------------------------------

    def fail(self, *rules: Rule) -> None:
        with self._lock:
            self.rules = list(rules)

    def clear(self) -> None:
        self.fail()

    def faulted(self) -> int:
        with self._lock:
            return sum(r.faulted for r in self.rules)

    def _decide(self, method: str, target: str) -> Rule | None:
        with self._lock:
            self.requests += 1
            for rule in self.rules:
                if rule.applies(method, target):
                    return rule
        return None

    # --- serving -----------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        threading.Thread(target=self._accept, name="faultproxy", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._server.close()
        with self._lock:
            for s in list(self._open):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self._open.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        up_reader: IO[bytes] | None = None
        reader = client.makefile("rb")
        try:
            while not self._stopped.is_set():
                lines = _head(reader)
                method, target, _version = lines[0].decode("latin-1").split(" ", 2)
                headers = _headers(lines[1:])
                if headers.get("expect", "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = _body(reader, headers)
                rule = self._decide(method, target)
                if rule is not None:
                    if rule.stall:
                        time.sleep(rule.stall)
                    if rule.action == "drop":
                        return
                    client.sendall(_error(rule.status))
                    return  # the answer says Connection: close
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=120)
                    up_reader = upstream.makefile("rb")
                kept = [ln for ln in lines[1:] if not ln.lower().startswith(b"expect:")]
                sent = Forwarded(time.time(), method, target)
                with self._lock:
                    self.journal.append(sent)
                    listeners = list(self.listeners)
                for listener in listeners:
                    listener(sent)
                upstream.sendall(b"\r\n".join([lines[0], *kept]) + b"\r\n\r\n" + body)
                assert up_reader is not None
                status_head = _head(up_reader)
                status = sent.status = int(status_head[0].split(b" ", 2)[1])
                answer = _headers(status_head[1:])
                if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                    payload = b""
                elif "transfer-encoding" in answer or "content-length" in answer:
                    payload = _body(up_reader, answer)
                else:  # until the upstream closes: then so does this connection
                    client.sendall(b"\r\n".join(status_head) + b"\r\n\r\n" + up_reader.read())
                    return
                client.sendall(b"\r\n".join(status_head) + b"\r\n\r\n" + payload)
                if answer.get("connection", "").lower() == "close":
                    upstream.close()
                    upstream = up_reader = None
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionGone, OSError, ValueError, IndexError):
            return
        finally:
            with self._lock:
                self._open.discard(client)
            for s in (client, upstream):
                if s is not None:
                    s.close()


def _error(status: int) -> bytes:
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{"ServiceUnavailable" if status == 503 else "InternalError"}</Code>'
            f"<Message>injected by the test's fault proxy</Message></Error>").encode()  # fmt: skip
    reason = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}.get(status, "Error")
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body
