"""The debounced queue's timing rules (with a fake clock) and sd_notify with a real socket."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from conda_indexd.daemon.queue import DebounceQueue
from daemonproc import DaemonProcess
from pkgfactory import index_json, make_package


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_quiet_period_then_ready() -> None:
    clock = Clock()
    q = DebounceQueue(debounce=1.0, max_delay=10.0, clock=clock)
    q.add("noarch", "a.conda", "created")
    clock.now += 0.5
    q.add("noarch", "b.conda", "closed")
    clock.now += 0.9  # 0.9 s since the last event: not yet
    assert q.take(timeout=0) is None
    clock.now += 0.2
    item = q.take(timeout=0)
    assert item is not None and item.subdir == "noarch"
    assert item.names == {"a.conda": "created", "b.conda": "closed"}
    assert q.take(timeout=0) is None


def test_steady_stream_is_published_by_max_delay() -> None:
    clock = Clock()
    q = DebounceQueue(debounce=1.0, max_delay=3.0, clock=clock)
    for i in range(29):  # an event every 0.1 s never leaves 1 s of quiet
        q.add("linux-64", f"p{i}.conda", "closed")
        clock.now += 0.1
        assert q.take(timeout=0) is None  # 2.9 s after the first event at most
    clock.now += 0.11  # 3 s after the first event: due despite the stream
    item = q.take(timeout=0)
    assert item is not None and len(item.names) == 29


def test_subdirs_are_independent_and_retries_wait() -> None:
    clock = Clock()
    q = DebounceQueue(debounce=1.0, max_delay=10.0, clock=clock)
    q.add("noarch", "a.conda", "modified")
    clock.now += 0.5
    q.add("linux-64", "b.conda", "closed")
    clock.now += 0.6
    assert q.take(timeout=0).subdir == "noarch"
    assert q.take(timeout=0) is None
    clock.now += 0.5
    assert q.take(timeout=0).subdir == "linux-64"
    q.retry("noarch", {"a.conda": "modified"}, delay=2.0)
    clock.now += 1.5
    assert q.take(timeout=0) is None
    clock.now += 0.6
    assert q.take(timeout=0).names == {"a.conda": "modified"}


def test_scan_merges_with_file_events() -> None:
    clock = Clock()
    q = DebounceQueue(debounce=0.0, max_delay=1.0, clock=clock)
    q.add("noarch", "a.conda", "closed")
    q.add_scan("noarch", "periodic")
    item = q.take(timeout=0)
    assert item.full_scan and item.scan_reason == "periodic" and "a.conda" in item.names
    assert q.pending_count() == 0


def test_sd_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    channel = tmp_path / "channel"
    (channel / "noarch").mkdir(parents=True)
    make_package(channel / "noarch" / "a-1.0-0.conda", index_json("a", "1.0", "0"))
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.2)
    messages: list[str] = []

    def drain() -> None:
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                return

    d = DaemonProcess(channel)
    old = {k: os.environ.get(k) for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    os.environ["NOTIFY_SOCKET"] = sock_path
    os.environ["WATCHDOG_USEC"] = "1000000"  # ping every 0.5 s
    try:
        d.start()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        time.sleep(1.5)
        drain()
        assert any(m.startswith("READY=1") and "STATUS=" in m for m in messages), messages
        assert sum(m == "WATCHDOG=1" for m in messages) >= 2, messages
        assert d.stop() == 0
        drain()
        assert "STOPPING=1" in messages
    finally:
        d.stop()
        sock.close()


@pytest.mark.parametrize("flag", ["--debounce=-1", "--listen=nohost", "--rescan-interval=0", "--max-delay=0.1"])
def test_watch_bad_flags_are_one_line_errors(tmp_path: Path, flag: str) -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "conda_indexd", "watch", str(tmp_path), flag],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_a_close_that_came_while_held_does_not_wait() -> None:
    """The worker puts a held upload back after its close event already arrived (the
    entry was taken meanwhile): the close wins and nothing waits."""
    now = [0.0]
    q = DebounceQueue(debounce=0.1, max_delay=1.0, clock=lambda: now[0])
    q.add("noarch", "a.conda", "modified")
    now[0] = 0.2
    item = q.take(timeout=0)
    assert item is not None and item.names == {"a.conda": "modified"}
    q.add("noarch", "a.conda", "closed")  # arrives while the worker looks at the file
    q.retry("noarch", {"a.conda": "modified"}, delay=30.0)  # the worker holds it
    now[0] = 0.35
    again = q.take(timeout=0)
    assert again is not None and again.names == {"a.conda": "closed"}


def test_held_names_alone_wait_for_their_recheck() -> None:
    now = [0.0]
    q = DebounceQueue(debounce=0.1, max_delay=1.0, clock=lambda: now[0])
    q.retry("noarch", {"a.conda": "modified"}, delay=5.0)
    now[0] = 1.0
    assert q.take(timeout=0) is None
    now[0] = 5.1
    assert q.take(timeout=0) is not None
