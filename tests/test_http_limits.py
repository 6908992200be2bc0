"""The HTTP listener under idle, slow and hostile clients (issue 17), with the real daemon:
connections never cost a task, are capped and timed, garbage gets 400/431, and health,
metrics and publishing carry on while hundreds of connections are held open."""

from __future__ import annotations

import errno
import json
import os
import selectors
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

import pkgfactory as f
from daemonproc import DaemonProcess, all_records, repodata, wait_for
from pidscgroup import PidsCgroup, Unavailable, create

pytestmark = pytest.mark.timeout(120)

HEAD_TIMEOUT = 5.0  # the listener's default (conda_indexd.daemon.http.server.HEAD_TIMEOUT)


class HeldConnections(threading.Thread):
    """Holds `idle` connections that send nothing and `half` that send a request head one
    byte at a time and never finish it; each is reopened as soon as the server drops it
    (at most `reopen_per_pass` per 20 ms pass)."""

    def __init__(self, port: int, idle: int, half: int, reopen_per_pass: int = 50):
        super().__init__(name="held-connections", daemon=True)
        self.addr = ("127.0.0.1", port)
        self.wanted = {"idle": idle, "half": half}
        self.reopen_per_pass = reopen_per_pass
        self.stopping = threading.Event()
        self.opened = 0
        self.dropped_by_server = 0
        self.open_now = 0

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        socks: dict[socket.socket, list] = {}  # sock -> [kind, next drip time, bytes sent]
        head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        try:
            while not self.stopping.is_set():
                pass_end = time.monotonic() + 0.02
                opened = 0
                for kind, n in self.wanted.items():
                    while sum(1 for v in socks.values() if v[0] == kind) < n and opened < self.reopen_per_pass:
                        s = socket.socket()
                        s.setblocking(False)
                        s.connect_ex(self.addr)
                        socks[s] = [kind, time.monotonic() + 0.05, 0]
                        sel.register(s, selectors.EVENT_READ)
                        opened += 1
                        self.opened += 1
                now = time.monotonic()
                for s, state in socks.items():
                    if state[0] == "half" and now >= state[1]:
                        chunk = head if state[2] == 0 else b"a"
                        try:
                            s.send(chunk)
                            state[2] += len(chunk)
                        except OSError:
                            pass
                        state[1] = now + 0.5
                for key, _ in sel.select(0.02):
                    s = cast(socket.socket, key.fileobj)
                    try:
                        data = s.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(s)
                        s.close()
                        del socks[s]
                        self.dropped_by_server += 1
                self.open_now = len(socks)
                time.sleep(max(0.0, pass_end - time.monotonic()))
        finally:
            for s in socks:
                s.close()
            sel.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


def timed_get(port: int, path: str) -> tuple[int, float]:
    start = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as resp:
        resp.read()
        return resp.status, time.monotonic() - start


def upload(src: Path, folder: Path) -> None:
    tmp = folder / f".{src.name}.part"
    shutil.copyfile(src, tmp)
    os.replace(tmp, folder / src.name)


@pytest.fixture
def pids64() -> Iterator[PidsCgroup]:
    try:
        cgroup = create(64)
    except Unavailable as exc:
        pytest.skip(f"no pids cgroup to run the daemon in: {exc}")
    try:
        yield cgroup
    finally:
        cgroup.remove()


def test_held_connections_under_a_pids_limit_of_64(channel: Path, tmp_path: Path, pids64: PidsCgroup) -> None:
    """300 idle and 50 half-sent connections, reopened as fast as they are dropped, against
    a daemon in a cgroup with pids.max=64 (systemd's TasksMax)."""
    noarch = channel / "noarch"
    noarch.mkdir()
    f.make_package(noarch / "first-1.0-0.conda", f.index_json("first"))
    late = f.make_package(tmp_path / "late-1.0-0.conda", f.index_json("late"))
    cgroup = pids64
    attack: HeldConnections | None = None
    d = DaemonProcess(channel, cgroup_procs=cgroup.procs)
    try:
        d.start()
        assert d.proc is not None
        pid = d.proc.pid
        baseline = threads_of(pid)
        attack = HeldConnections(d.port, idle=300, half=50)
        attack.start()
        wait_for(lambda: attack.opened >= 350, 10, what="350 connections opened")
        wait_for(lambda: "http connection cap reached" in d.log_text(), 10, what="the cap log line")

        probes = []
        for _ in range(5):
            for path in ("/healthz", "/metrics"):
                status, seconds = timed_get(d.port, path)
                assert status == 200, path
                probes.append(seconds)
            time.sleep(0.2)
        assert max(probes) < 1.0, probes

        start = time.monotonic()
        upload(late, noarch)
        wait_for(lambda: "late-1.0-0.conda" in all_records(repodata(channel, "noarch")), d.debounce + 2, what="late published")
        publish_seconds = time.monotonic() - start

        time.sleep(HEAD_TIMEOUT + 1)  # a full round of head timeouts under the attack
        for path in ("/healthz", "/metrics", "/readyz"):
            status, seconds = timed_get(d.port, path)
            assert status == 200 and seconds < 1.0, (path, seconds)
        threads = threads_of(pid)
        tasks = cgroup.current()
        print(
            f"\nheld connections: baseline threads {baseline}, under attack {threads}, cgroup tasks {tasks}, "
            f"peak {cgroup.peak()}, limit hits {cgroup.limit_hits()}; attacker opened {attack.opened}, "
            f"server dropped {attack.dropped_by_server}; probes max {max(probes):.3f} s; publish {publish_seconds:.2f} s"
        )
        assert threads <= baseline + 2, (baseline, threads)  # +2: the extraction pool's threads
        assert cgroup.limit_hits() == 0, "a thread or process of the daemon was refused for the pids limit"
        assert attack.dropped_by_server > 0  # the cap and the timeouts did close connections
        logs = d.log_text()
        assert "Traceback" not in logs, logs[-3000:]
        cap_lines = [r for r in d.log_records() if r.get("event", "").startswith("http connection cap reached")]
        assert 1 <= len(cap_lines) <= 2, cap_lines  # at most once a minute
        assert cap_lines[0]["cap"] == 256
    finally:
        if attack is not None:
            attack.stop()
        d.stop()


def raw_exchange(port: int, data: bytes, *, timeout: float = 10) -> tuple[bytes, float]:
    """Send data, read until the server closes; (what came back, seconds until closed)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if data:
            s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            out += b"<reset>"
    return out, time.monotonic() - start


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1."), answer[:100]
    return int(answer.split(b" ", 2)[1])


def test_garbage_oversized_and_slow_requests(channel: Path) -> None:
    (channel / "noarch").mkdir()
    f.make_package(channel / "noarch" / "one-1.0-0.conda", f.index_json("one"))
    with DaemonProcess(channel) as d:
        results: dict[str, tuple[bytes, float]] = {}

        def slow_headers() -> None:  # one header byte every 0.4 s, never finished
            start = time.monotonic()
            with socket.create_connection(("127.0.0.1", d.port), timeout=15) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\n")
                closed = b""
                try:
                    while time.monotonic() - start < 14:
                        s.sendall(b"X")
                        s.settimeout(0.4)
                        try:
                            if s.recv(1024) == b"":
                                closed = b"closed"
                                break
                        except TimeoutError:
                            pass
                except (BrokenPipeError, ConnectionResetError):
                    closed = b"closed"
            results["slow"] = (closed, time.monotonic() - start)

        def silent() -> None:
            results["silent"] = raw_exchange(d.port, b"", timeout=15)

        waiters = [threading.Thread(target=slow_headers), threading.Thread(target=silent)]
        for t in waiters:
            t.start()

        cases = {
            "binary garbage": (b"\x00\xff\x13\x37" * 64, 400),
            "a TLS ClientHello": (bytes.fromhex("16030100f4010000f00303") + os.urandom(64), 400),
            "no HTTP version": (b"GET /metrics\r\n\r\n", 400),
            "bad version": (b"GET /metrics HTTP/9.9\r\n\r\n", 400),
            "bad header line": (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
            "control bytes in the target": (b"GET /met\x01rics HTTP/1.1\r\n\r\n", 400),
            "a 20 KB header": (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
            "a 100 KB request line": (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n", 431),
            "many headers": (b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 2000 + b"\r\n", 431),
            "POST with a body": (b"POST /metrics HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world", 405),
            "DELETE": (b"DELETE / HTTP/1.1\r\n\r\n", 405),
            "unknown path": (b"GET /nope HTTP/1.1\r\n\r\n", 404),
            "query string": (b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", 200),
            "HTTP/1.0, bare LF": (b"GET /healthz HTTP/1.0\n\n", 200),
        }
        for what, (request, expected) in cases.items():
            answer, seconds = raw_exchange(d.port, request)
            assert status_of(answer) == expected, (what, answer[:200])
            assert seconds < 2, (what, seconds)
        allow = raw_exchange(d.port, b"PUT /metrics HTTP/1.1\r\n\r\n")[0]
        assert b"\r\nAllow: GET, HEAD\r\n" in allow

        # the existing routes keep their answers
        assert d.get("/healthz") == (200, b"ok\n")
        assert d.get("/readyz") == (200, b"ready\n")
        assert d.get("/metrics", method="HEAD") == (200, b"")
        assert d.get("/", method="HEAD") == (200, b"")
        status, page = d.get("/")
        assert status == 200 and b"noarch" in page
        assert json.loads(d.get("/status.json")[1])["ready"] is True
        head = raw_exchange(d.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[0]
        assert b"\r\nContent-Type: text/plain; charset=utf-8\r\n" in head and b"\r\nCache-Control: no-store\r\n" in head

        for t in waiters:
            t.join(20)
        closed, seconds = results["silent"]
        assert closed == b"" and HEAD_TIMEOUT - 0.5 < seconds < HEAD_TIMEOUT + 2, results["silent"]
        closed, seconds = results["slow"]
        assert closed == b"closed" and seconds < HEAD_TIMEOUT + 2, results["slow"]
        assert d.metric("conda_indexd_ready") == 1
        logs = d.log_text()
        assert "Traceback" not in logs, logs[-3000:]


def test_many_connections_never_exhaust_file_descriptors(channel: Path) -> None:
    """With the cap, 1,000 connections held open cost the daemon at most cap + a few fds."""
    (channel / "noarch").mkdir()
    with DaemonProcess(channel) as d:
        assert d.proc is not None
        before = len(os.listdir(f"/proc/{d.proc.pid}/fd"))
        socks = []
        try:
            for _ in range(1000):
                try:
                    socks.append(socket.create_connection(("127.0.0.1", d.port), timeout=2))
                except OSError as exc:  # a full accept backlog: the rest is refused by the kernel
                    assert exc.errno in (errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EAGAIN, None), exc
                    break
            time.sleep(0.5)
            fds = len(os.listdir(f"/proc/{d.proc.pid}/fd"))
            assert fds <= before + 256 + 2, (before, fds)
            status, seconds = timed_get(d.port, "/healthz")
            assert status == 200 and seconds < 1.0
        finally:
            for s in socks:
                s.close()
