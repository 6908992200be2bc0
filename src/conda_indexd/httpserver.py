"""The daemon's HTTP listener: /metrics, /healthz, /readyz (GET and HEAD), and the POST
routes a store asks for (/s3-events): each takes (query, headers, body of at most
MAX_POST_BODY bytes)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = Callable[[], tuple[int, str, bytes]]  # -> status, content type, body
PostRoute = Callable[[str, Any, bytes], tuple[int, str, bytes]]  # (query, headers, body) -> the same
MAX_POST_BODY = 1 << 20


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, Route] = {}
    post_routes: dict[str, PostRoute] = {}
    server_version = "conda-indexd"

    def _answer(self, head: bool) -> None:
        route = self.routes.get(self.path.split("?", 1)[0])
        if route is None:
            status, ctype, body = 404, "text/plain; charset=utf-8", b"not found\n"
        else:
            status, ctype, body = route()
        self._send(status, ctype, body, head)

    def _send(self, status: int, ctype: str, body: bytes, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def _not_allowed(self) -> None:
        body = b"method not allowed\n"
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        path, _, query = self.path.partition("?")
        route = self.post_routes.get(path)
        if route is None:
            return self._not_allowed()
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._send(411, "text/plain; charset=utf-8", b"Content-Length required\n")
        if not 0 <= length <= MAX_POST_BODY:
            self.close_connection = True
            return self._send(413, "text/plain; charset=utf-8", b"body too large\n")
        self._send(*route(query, self.headers, self.rfile.read(length)))

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:  # quiet: scrapes are frequent
        pass


class StatusServer:
    def __init__(self, host: str, port: int, routes: dict[str, Route], post_routes: dict[str, PostRoute] | None = None):
        handler = type("Handler", (_Handler,), {"routes": routes, "post_routes": post_routes or {}})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def text(status: int, body: str) -> tuple[int, str, bytes]:
    return status, "text/plain; charset=utf-8", body.encode()
