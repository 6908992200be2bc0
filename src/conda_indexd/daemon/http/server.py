"""The daemon's HTTP listener: /metrics, /healthz, /readyz, the status page (GET and HEAD).

Bounded and timed, so that clients can never starve the indexer:
- One thread runs a selector loop: it accepts, reads each request head, answers from the
  routes and closes. There is no thread per connection, so idle or slow clients cost a
  file descriptor and a few KiB each, never a task (systemd's TasksMax counts threads).
- At most `max_connections` are open at once. A connection arriving at the cap evicts the
  oldest one that has not sent a complete request yet. So a client that sends its request
  at once (a Prometheus scrape, a health probe) is always served, however many idle ones
  are held open. The cap being reached is logged (a warning, at most once a minute, with
  the number of connections dropped since the last one).
- A client has `head_timeout` seconds from connecting to send its whole request head, and
  `write_timeout` seconds to take the answer; after that it is dropped.
- A request head over `MAX_HEAD` bytes gets 431, a malformed one 400, a method other than
  GET or HEAD 405, except POST on a POST route (/s3-events for a bucket), where any other
  method is 405 with `Allow: POST`: its body, by Content-Length (decimal digits only, else
  400; missing 411) and at most MAX_POST_BODY (else 413), must arrive within the same
  head timeout. Every answer closes the connection (no keep-alive).
- Routes run on the loop thread: they answer from memory in milliseconds, except the
  package view (daemon/packageview.py), which reads a bounded number of published files
  (a shard index and at most 50 shards, none started after 2 s). One that raises gets a
  500 and an error log line. A prefix route (`/status/` for the package view) is handed
  the rest of the path and the query string. Every HTML answer carries the status
  page's Content-Security-Policy (statuspage.CSP).
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus

from conda_indexd.daemon.http.proto import MAX_HEAD, Headers, Request, RequestError, parse_head, render_response
from conda_indexd.daemon.http.statuspage import CSP
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

Route = Callable[[], tuple[int, str, bytes]]  # -> status, content type, body
# POST routes a store asks for (/s3-events): (query, headers, body) -> the same; the body
# (Content-Length, at most MAX_POST_BODY) must arrive within the head timeout
PostRoute = Callable[[str, Headers, bytes], tuple[int, str, bytes]]
# GET routes under a prefix: (the rest of the path, the query string) -> the same
PrefixRoute = Callable[[str, str], tuple[int, str, bytes]]
MAX_POST_BODY = 1 << 20

DEFAULT_MAX_CONNECTIONS = 256
HEAD_TIMEOUT = 5.0  # seconds from connect to a complete request head
WRITE_TIMEOUT = 10.0  # seconds to take the answer
LINGER = 1.0  # seconds to drain what a client still sends after its answer (no RST)
CAP_LOG_INTERVAL = 60.0
ACCEPT_BURST = 64  # accepts per loop pass, so reads and writes are not starved
_ACCEPT_PAUSE = 0.1  # seconds without accepting when out of file descriptors
_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

READING, WRITING, DRAINING = "reading", "writing", "draining"


class _Conn:
    __slots__ = ("buf", "deadline", "out", "sent", "sock", "state")

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.state = READING
        self.buf = bytearray()
        self.out = b""
        self.sent = 0
        self.deadline = deadline


class StatusServer:
    def __init__(
        self,
        host: str,
        port: int,
        routes: dict[str, Route],
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        head_timeout: float = HEAD_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        on_drop: Callable[[str], None] | None = None,
        post_routes: dict[str, PostRoute] | None = None,
        prefix_routes: dict[str, PrefixRoute] | None = None,
    ):
        """on_drop(reason) is called on the loop thread for every connection dropped before
        its answer was sent: "cap", "head-timeout", "write-timeout" (for a metric)."""
        self.routes = dict(routes)
        self.post_routes = dict(post_routes or {})
        self.prefix_routes = dict(prefix_routes or {})
        self.on_drop = on_drop
        self.max_connections = max(1, max_connections)
        self.head_timeout = head_timeout
        self.write_timeout = write_timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, port), family=family, backlog=128)
        self.listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._conns: dict[int, _Conn] = {}  # insertion order = accept order
        self._stopping = threading.Event()
        self._accept_paused_until = 0.0
        self._listening = False
        self._evicted_since_log = 0
        self._last_cap_log = -CAP_LOG_INTERVAL
        self.thread = threading.Thread(target=self._serve, name="http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        for conn in list(self._conns.values()):
            self._close(conn)
        for s in (self.listener, self._wake_r, self._wake_w):
            s.close()
        self._selector.close()

    # --- the loop -----------------------------------------------------------------------------

    def _serve(self) -> None:
        self._selector.register(self.listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._listening = True
        while not self._stopping.is_set():
            try:
                self._pass()
            except Exception as exc:  # noqa: BLE001 - the listener must outlive any one bad pass
                log.error("http listener error", error=f"{type(exc).__name__}: {exc}")
                time.sleep(0.1)

    def _pass(self) -> None:
        """One selector pass: resume accepting if paused, wait, handle the events, expire."""
        now = time.monotonic()
        if not self._listening and now >= self._accept_paused_until:
            self._selector.register(self.listener, selectors.EVENT_READ, None)
            self._listening = True
        for key, mask in self._selector.select(self._next_timeout(now)):
            if key.fileobj is self.listener:
                if not self._accept():
                    self._selector.unregister(self.listener)
                    self._listening = False
            elif key.fileobj is self._wake_r:
                self._drain_wake()
            else:
                conn = key.data
                if conn.sock.fileno() in self._conns:
                    self._step(conn, mask)
        self._expire(time.monotonic())

    def _next_timeout(self, now: float) -> float:
        timeout = 1.0
        for conn in self._conns.values():
            timeout = min(timeout, conn.deadline - now)
        if not self._listening:
            timeout = min(timeout, self._accept_paused_until - now)
        return max(0.0, timeout)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass

    def _accept(self) -> bool:
        """Accept what is waiting; False when out of file descriptors (pause accepting)."""
        for _ in range(ACCEPT_BURST):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    if self._evict_oldest_idle(time.monotonic()):
                        continue
                    log.warning("http listener is out of file descriptors; accepting paused", error=exc.strerror)
                    self._accept_paused_until = time.monotonic() + _ACCEPT_PAUSE
                    return False
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            now = time.monotonic()
            if len(self._conns) >= self.max_connections and not self._evict_oldest_idle(now):
                sock.close()  # every slot is answering: this one has to try again
                self._note_cap(now)
                self._dropped("cap")
                continue
            sock.setblocking(False)
            conn = _Conn(sock, now + self.head_timeout)
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)
        return True

    def _evict_oldest_idle(self, now: float) -> bool:
        """Close the oldest connection that is not being answered (still sending its head,
        or already answered); False when every open one is being answered."""
        for conn in self._conns.values():
            if conn.state != WRITING:
                if conn.state == READING:
                    self._dropped("cap")
                self._close(conn)
                self._note_cap(now)
                return True
        return False

    def _dropped(self, reason: str) -> None:
        if self.on_drop is not None:
            try:
                self.on_drop(reason)
            except Exception as exc:  # noqa: BLE001 - a failing callback must not stop the listener
                log.error("http on_drop callback failed", error=f"{type(exc).__name__}: {exc}")

    def _note_cap(self, now: float) -> None:
        self._evicted_since_log += 1
        if now - self._last_cap_log >= CAP_LOG_INTERVAL:
            log.warning(
                "http connection cap reached: dropping the oldest connections that have not sent a request",
                cap=self.max_connections, dropped=self._evicted_since_log, interval_seconds=int(CAP_LOG_INTERVAL),
            )  # fmt: skip
            self._last_cap_log = now
            self._evicted_since_log = 0

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            if conn.state == READING:
                self._dropped("head-timeout")
            elif conn.state == WRITING:
                self._dropped("write-timeout")
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if self._conns.pop(fd, None) is not None:
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        conn.sock.close()

    # --- one connection -----------------------------------------------------------------------

    def _step(self, conn: _Conn, mask: int) -> None:
        try:
            if conn.state == READING and mask & selectors.EVENT_READ:
                self._read(conn)
            elif conn.state == WRITING and mask & selectors.EVENT_WRITE:
                self._write(conn)
            elif conn.state == DRAINING and mask & selectors.EVENT_READ:
                self._drain(conn)
        except OSError:  # reset by the peer, broken pipe: that client is gone
            self._close(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(MAX_HEAD + 1)
        except BlockingIOError:
            return
        if not data:
            self._close(conn)
            return
        conn.buf += data
        try:
            request = parse_head(conn.buf)
        except RequestError as err:
            self._respond(conn, err.status, "text/plain; charset=utf-8", err.body, head=False)
            return
        if request is not None and request.path in self.post_routes:
            if request.method == "POST":
                self._post(conn, request)
            else:  # a POST-only route: named in Allow, as RFC 9110 asks of a 405
                body = b"method not allowed: POST only\n"
                self._respond(conn, 405, "text/plain; charset=utf-8", body, head=request.method == "HEAD", extra={"Allow": "POST"})
        elif request is not None:
            self._answer(conn, request)

    def _answer(self, conn: _Conn, request: Request) -> None:
        if request.method not in ("GET", "HEAD"):
            body = b"method not allowed\n"
            self._respond(conn, 405, "text/plain; charset=utf-8", body, head=False, extra={"Allow": "GET, HEAD"})
            return
        route = self.routes.get(request.path)
        prefix = next((p for p in self.prefix_routes if request.path.startswith(p)), None) if route is None else None
        if route is None and prefix is None:
            status, ctype, body = 404, "text/plain; charset=utf-8", b"not found\n"
        else:
            try:
                if route is not None:
                    status, ctype, body = route()
                else:
                    assert prefix is not None
                    status, ctype, body = self.prefix_routes[prefix](request.path[len(prefix) :], request.target.partition("?")[2])
            except Exception as exc:  # noqa: BLE001 - a failing route answers 500, the listener lives on
                log.error("http route failed", path=request.path, error=f"{type(exc).__name__}: {exc}")
                status, ctype, body = 500, "text/plain; charset=utf-8", b"internal error\n"
        self._respond(conn, status, ctype, body, head=request.method == "HEAD")

    def _post(self, conn: _Conn, request: Request) -> None:
        """A POST route, once its whole body is in (the connection stays READING until then)."""
        if "content-length" not in request.headers:
            self._respond(conn, 411, "text/plain; charset=utf-8", b"Content-Length required\n", head=False)
            return
        given = request.headers.get("Content-Length")
        if not given.isascii() or not given.isdigit():  # int() would take "-1", " 1", "+1" and "1_0"
            self._respond(conn, 400, "text/plain; charset=utf-8", b"Content-Length is not a number of bytes\n", head=False)
            return
        length = int(given) if len(given) <= 20 else MAX_POST_BODY + 1
        if length > MAX_POST_BODY:
            self._respond(conn, 413, "text/plain; charset=utf-8", b"body too large\n", head=False)
            return
        body = bytes(conn.buf[request.body_start : request.body_start + length])
        if len(body) < length:
            return  # more to come
        query = request.target.partition("?")[2]
        try:
            status, ctype, answer = self.post_routes[request.path](query, request.headers, body)
        except Exception as exc:  # noqa: BLE001 - a failing route answers 500, the listener lives on
            log.error("http route failed", path=request.path, error=f"{type(exc).__name__}: {exc}")
            status, ctype, answer = 500, "text/plain; charset=utf-8", b"internal error\n"
        self._respond(conn, status, ctype, answer, head=False)

    def _respond(self, conn: _Conn, status: int, ctype: str, body: bytes, *, head: bool, extra: dict[str, str] | None = None) -> None:
        headers = {
            "Server": "conda-indexd",
            "Date": formatdate(usegmt=True),
            "Content-Type": ctype,
            "Content-Length": str(len(body)),
            "Cache-Control": "no-store",
            "Connection": "close",
            **({"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"} if ctype.startswith("text/html") else {}),
            **(extra or {}),
        }
        conn.out = render_response(status, HTTPStatus(status).phrase, headers, b"" if head else body)
        conn.sent = 0
        conn.buf = bytearray()
        conn.state = WRITING
        conn.deadline = time.monotonic() + self.write_timeout
        self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            conn.sent += conn.sock.send(memoryview(conn.out)[conn.sent :])
        except BlockingIOError:
            return
        if conn.sent < len(conn.out):
            return
        # all sent: half-close, then read what the client still sends until it closes, so
        # that unread request bytes never turn the close into a reset that loses the answer
        conn.sock.shutdown(socket.SHUT_WR)
        conn.state = DRAINING
        conn.deadline = min(conn.deadline, time.monotonic() + LINGER)
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _drain(self, conn: _Conn) -> None:
        try:
            if not conn.sock.recv(65536):
                self._close(conn)
        except BlockingIOError:
            pass


def text(status: int, body: str) -> tuple[int, str, bytes]:
    return status, "text/plain; charset=utf-8", body.encode()
