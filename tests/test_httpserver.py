"""The HTTP listener in-process, with real sockets and short timeouts: which connection the
cap drops, timeouts of slow readers and writers, the drop callback."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator

import pytest

from conda_indexd.daemon.http.server import StatusServer, text

pytestmark = pytest.mark.timeout(60)
BIG = b"x" * (8 << 20)  # bigger than the socket buffers


@pytest.fixture
def server() -> Iterator[tuple[StatusServer, Counter[str]]]:
    drops: Counter[str] = Counter()
    srv = StatusServer(
        "127.0.0.1", 0, {"/healthz": lambda: text(200, "ok\n"), "/big": lambda: (200, "application/octet-stream", BIG)},
        max_connections=4, head_timeout=0.5, write_timeout=0.5, on_drop=lambda reason: drops.update([reason]),
    )  # fmt: skip
    srv.start()
    try:
        yield srv, drops
    finally:
        srv.stop()
    assert not srv.thread.is_alive()


def get(srv: StatusServer, path: str) -> bytes:
    host, port = srv.address
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=2) as resp:
        return resp.read()


def closed_by_server(s: socket.socket, timeout: float = 3) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_the_cap_drops_the_oldest_idle_connection(server: tuple[StatusServer, Counter[str]]) -> None:
    srv, drops = server
    idle = [socket.create_connection(srv.address) for _ in range(4)]
    time.sleep(0.1)
    assert srv.open_connections == 4
    assert get(srv, "/healthz") == b"ok\n"  # served at the cap
    assert closed_by_server(idle[0], 1)  # the oldest made room
    assert drops["cap"] == 1
    for s in idle:
        s.close()


def test_silent_and_slow_clients_time_out(server: tuple[StatusServer, Counter[str]]) -> None:
    srv, drops = server
    silent = socket.create_connection(srv.address)
    slow = socket.create_connection(srv.address)
    slow.sendall(b"GET /healthz HTTP/1.1\r\n")
    start = time.monotonic()
    assert closed_by_server(silent) and closed_by_server(slow)
    assert time.monotonic() - start < 1.5
    assert drops["head-timeout"] == 2
    assert srv.open_connections == 0
    silent.close()
    slow.close()


def test_a_client_that_never_reads_its_answer_is_dropped(server: tuple[StatusServer, Counter[str]]) -> None:
    srv, drops = server
    s = socket.create_connection(srv.address)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET /big HTTP/1.1\r\n\r\n")
    deadline = time.monotonic() + 3
    while drops["write-timeout"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert drops["write-timeout"] == 1 and srv.open_connections == 0
    assert get(srv, "/healthz") == b"ok\n"
    s.close()


def test_a_big_answer_arrives_whole_to_a_client_that_reads(server: tuple[StatusServer, Counter[str]]) -> None:
    srv, _ = server
    srv.write_timeout = 10
    assert get(srv, "/big") == BIG


def test_prefix_routes_and_the_csp_of_html_answers() -> None:
    """A prefix route gets the rest of the path and the query; every HTML answer carries
    the status page's Content-Security-Policy, other answers do not."""
    seen: list[tuple[str, str]] = []

    def view(rest: str, query: str) -> tuple[int, str, bytes]:
        seen.append((rest, query))
        return 200, "text/html; charset=utf-8", b"<p>view</p>"

    srv = StatusServer("127.0.0.1", 0, {"/healthz": lambda: text(200, "ok\n")}, prefix_routes={"/status/": view})
    srv.start()
    try:
        host, port = srv.address
        with urllib.request.urlopen(f"http://{host}:{port}/status/noarch?q=a%20b", timeout=5) as resp:
            assert resp.read() == b"<p>view</p>"
            assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'; style-src 'unsafe-inline'")
        assert seen == [("noarch", "q=a%20b")]
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as resp:
            assert "Content-Security-Policy" not in resp.headers
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://{host}:{port}/statusx", timeout=5)
        assert err.value.code == 404
    finally:
        srv.stop()
