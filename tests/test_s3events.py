"""POST /s3-events on the real listener (in-process, real sockets; no RGW needed): the
token, the event JSON as AWS and RGW send it, keys routed to (subdir, name), bodies that
arrive in pieces, and the limits. Then the real daemon on a real bucket (Ceph RGW): bad
intake refused by status code, and events that change nothing but packages."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conda_indexd.daemon.http.server import MAX_POST_BODY, StatusServer
from conda_indexd.daemon.intake.s3 import S3EventsEndpoint, route_key
from conda_indexd.daemon.queue import EventKind
from pkgfactory import index_json, make_conda

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


# --- the real daemon on a real bucket (Ceph RGW) -----------------------------------------------


def raw_request(port: int, data: bytes) -> tuple[int, dict[str, str]]:
    """Send `data` as it is; (status, lower-cased headers) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
    return int(head[0].split(" ")[1]), headers


def bucket_state(s3: Any, bucket: str) -> dict[str, str]:
    """Every key and its ETag, but the writer lease (renewed while the daemon runs)."""
    from conda_indexd.ha.s3lease import LEASE_KEY

    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        found.update({o["Key"]: o["ETag"] for o in page.get("Contents", ()) if not o["Key"].endswith(LEASE_KEY)})
    return found


def test_daemon_intake_changes_nothing_but_packages(tmp_path: Path, s3: Any, bucket: str) -> None:
    """Bad intake on the real daemon is refused by status code, and an authorised event
    naming a key that is not there, in a platform without objects, publishes nothing
    and creates no state; a real package in a new platform still is published."""
    from daemonproc import free_port, wait_for
    from test_s3 import TOKEN, package, post_events, records, s3_daemon

    real = package(tmp_path / "p", "real")
    s3.upload_file(str(real), bucket, f"chan/noarch/{real.name}")
    port = free_port()
    daemon = s3_daemon(tmp_path, bucket, port=port).start()
    try:
        wait_for(lambda: real.name in records(s3, bucket, "chan/noarch/repodata.json"), 10.0, what="first publish")
        before, state = bucket_state(s3, bucket), tmp_path / "state"
        files_before = sorted(p.relative_to(state).as_posix() for p in state.rglob("*"))
        auth = {"X-Conda-Indexd-Token": TOKEN}

        def events(*records: tuple[str, str]) -> bytes:
            return json.dumps({"Records": [record(key, name, bucket) for key, name in records]}).encode()

        # authorised events for keys that are not there, in platforms without objects
        forged = events(("chan/win-64/ghost-1.0-0.conda", "ObjectCreated:Put"), ("chan/linux-64/ghost-1.0-0.tar.bz2", "ObjectRemoved:Delete"))
        assert post_events(port, forged, headers=auth) == 200
        # and one in the platform that exists: an ordinary re-check
        assert post_events(port, events(("chan/noarch/ghost-1.0-0.conda", "ObjectRemoved:Delete")), headers=auth) == 200

        def post_raw(body: bytes, length: str) -> tuple[int, dict[str, str]]:
            head = f"POST /s3-events HTTP/1.1\r\nHost: x\r\nX-Conda-Indexd-Token: {TOKEN}\r\nContent-Length: {length}\r\n\r\n"
            return raw_request(port, head.encode() + body)

        deep = b'{"Records": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        assert post_events(port, deep, headers=auth) == 400  # was a 500 (RecursionError)
        assert post_events(port, b'{"Records": [{"s3": {"bucket": {"name": [[[]]]}, "object": {"key": 1}}}]}', headers=auth) == 400
        assert post_events(port, b"\xff\xfe\x00", headers=auth) == 400
        for length in ("abc", "-1", "+5", "1_0", "0x10", ""):
            assert post_raw(b"{}", length)[0] == 400, length
        assert post_raw(b"", "99999999999999999999999999")[0] == 413
        for method in ("GET", "HEAD", "PUT", "DELETE"):
            status, headers = raw_request(port, f"{method} /s3-events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert (status, headers.get("allow")) == (405, "POST"), method
        assert raw_request(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")[0] == 405  # as before
        assert raw_request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200

        def skipped() -> set[str]:
            return {r.get("subdir", "") for r in daemon.log_records() if r.get("event", "").startswith("nothing to index")}

        time.sleep(1.5)  # the debounce (0.2 s) and a run that would publish
        wait_for(lambda: daemon.metric("conda_indexd_queue_pending") == 0, 10.0, what="the queue drained")
        assert bucket_state(s3, bucket) == before
        wait_for(lambda: skipped() >= {"win-64", "linux-64"}, 10.0, what="the forged events looked at")
        files_after = sorted(p.relative_to(state).as_posix() for p in state.rglob("*"))
        assert [f for f in files_after if "win-64" in f or "linux-64" in f] == []
        assert set(files_after) <= set(files_before) | {f for f in files_after if f.startswith("noarch/")}, (files_before, files_after)
        status = json.loads(daemon.get("/status.json")[1])
        assert "win-64" not in json.dumps(status) and "linux-64" not in json.dumps(status)
        assert daemon.metric("conda_indexd_s3_events_total", outcome="rejected") == 3  # the three bodies; the listener refuses the rest
        intake = status["intake"]["bucket"]  # the status page's bucket section: the same counters
        assert intake["address"] == f"s3://{bucket}/chan" and intake["notifications"]["rejected"] == 3 and intake["requests"] > 0, intake
        assert b"<h2>Bucket</h2>" in daemon.get("/")[1]
        code, body = daemon.get("/status/noarch.json?q=REAL")  # the package view reads the bucket's published shards
        view = json.loads(body)
        assert code == 200 and view["source"] == "shards" and [f["filename"] for f in view["files"]] == [real.name], view
        assert view["files"][0]["size"] == real.stat().st_size and view["files"][0]["indexed_timestamp"], view

        # a real package in a new platform is published as before
        new = make_conda(tmp_path / "q" / "newplat-1.0-0.conda", index_json("newplat", subdir="linux-64"), {"f.txt": b"x"})
        s3.upload_file(str(new), bucket, f"chan/linux-64/{new.name}")
        assert post_events(port, events((f"chan/linux-64/{new.name}", "ObjectCreated:Put")), headers=auth) == 200
        wait_for(lambda: new.name in records(s3, bucket, "chan/linux-64/repodata.json"), 10.0, what="new platform published")
    finally:
        daemon.stop()
