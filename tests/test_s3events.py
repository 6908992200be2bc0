"""POST /s3-events on the real listener (in-process, real sockets; no RGW needed): the
token, the event JSON as AWS and RGW send it, keys routed to (subdir, name), bodies that
arrive in pieces, and the limits."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conda_indexd.daemon.http.server import MAX_POST_BODY, StatusServer
from conda_indexd.daemon.intake.s3 import S3EventsEndpoint, route_key
from conda_indexd.daemon.queue import EventKind

TOKEN = "s3cr3t-token"


def record(key: str, event: str = "ObjectCreated:Put", bucket: str = "chan-bucket") -> dict[str, Any]:
    return {"eventName": event, "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1, "eTag": "x"}}}


@pytest.fixture
def served() -> Iterator[tuple[int, list[tuple[str, str, EventKind]], dict[str, int]]]:
    queued: list[tuple[str, str, EventKind]] = []
    counts: dict[str, int] = {}

    def count(outcome: str, n: int) -> None:
        counts[outcome] = counts.get(outcome, 0) + n

    endpoint = S3EventsEndpoint(TOKEN, "chan-bucket", "conda/main", {"noarch", "linux-64"}, lambda *a: queued.append(a), count)
    server = StatusServer("127.0.0.1", 0, {}, post_routes={"/s3-events": endpoint.handle}, head_timeout=2.0)
    server.start()
    try:
        yield server.address[1], queued, counts
    finally:
        server.stop()


def post(port: int, body: bytes, target: str = "/s3-events", headers: dict[str, str] | None = None, pieces: int = 1) -> int:
    head = f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()) + "\r\n"
    data = head.encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        step = max(1, len(data) // pieces)
        for i in range(0, len(data), step):
            s.sendall(data[i : i + step])
            if pieces > 1:
                time.sleep(0.05)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_token_required_and_nothing_queued_without_it(served: Any) -> None:
    port, queued, counts = served
    body = json.dumps({"Records": [record("conda/main/noarch/a-1-0.conda")]}).encode()
    assert post(port, body) == 401
    assert post(port, body, "/s3-events?token=wrong") == 401
    assert post(port, body, headers={"Authorization": "Bearer wrong"}) == 401
    assert queued == [] and counts == {"rejected": 3}
    assert post(port, body, f"/s3-events?token={TOKEN}") == 200
    assert post(port, body, headers={"authorization": f"Bearer {TOKEN}"}) == 200
    assert post(port, body, headers={"X-Conda-Indexd-Token": TOKEN}, pieces=5) == 200  # a body in pieces
    assert queued == [("noarch", "a-1-0.conda", EventKind.CLOSED)] * 3


def test_records_routed_and_the_rest_ignored(served: Any) -> None:
    port, queued, counts = served
    records = [
        record("conda/main/linux-64/b-1-0.tar.bz2", "s3:ObjectRemoved:Delete"),  # AWS spells it with s3:
        record("conda/main/noarch/c%2B1-1-0.conda"),  # AWS URL-encodes keys: both readings are re-checked
        record("conda/main/noarch/repodata.json"),  # our own output
        record("conda/main/win-64/d-1-0.conda"),  # not watched
        record("conda/other/noarch/e-1-0.conda"),  # another prefix
        record("conda/main/noarch/f-1-0.conda", bucket="another-bucket"),
        record("conda/main/noarch/g-1-0.conda", "s3:TestEvent"),
    ]
    assert post(port, json.dumps({"Records": records}).encode(), headers={"X-Conda-Indexd-Token": TOKEN}) == 200
    assert sorted(queued) == [("linux-64", "b-1-0.tar.bz2", EventKind.DELETED), ("noarch", "c%2B1-1-0.conda", EventKind.CLOSED),
                              ("noarch", "c+1-1-0.conda", EventKind.CLOSED)]  # fmt: skip
    assert counts == {"received": 7, "ignored": 5, "queued": 3}


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"Records": [{"s3": {}}]}'])
def test_not_event_json_is_400(served: Any, body: bytes) -> None:
    port, queued, counts = served
    assert post(port, body, headers={"X-Conda-Indexd-Token": TOKEN}) == 400
    assert queued == [] and counts == {"rejected": 1}


def test_limits(served: Any) -> None:
    port, queued, _ = served
    assert post(port, b"x" * (MAX_POST_BODY + 1), headers={"X-Conda-Indexd-Token": TOKEN}) == 413
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # no Content-Length
        s.sendall(b"POST /s3-events HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100).split(b" ")[1] == b"411"
    assert post(port, b"{}", "/elsewhere") == 405  # POST only on its routes
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # a body that never comes
        s.sendall(b"POST /s3-events HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        started = time.monotonic()
        assert s.recv(100) == b""  # dropped at the head timeout
        assert time.monotonic() - started < 4
    assert queued == []


def test_route_key() -> None:
    assert route_key("p/noarch/a-1-0.conda", "p", {"noarch"}) == ("noarch", "a-1-0.conda")
    assert route_key("noarch/a-1-0.conda", "", {"noarch"}) == ("noarch", "a-1-0.conda")
    for key in ("p/noarch/.a-1-0.conda", "p/noarch/shards/a-1-0.conda", "px/noarch/a-1-0.conda", "p/noarch/a.txt"):
        assert route_key(key, "p", {"noarch"}) is None, key
