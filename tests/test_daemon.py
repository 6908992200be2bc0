"""The real daemon, as a subprocess, on a temporary channel."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zstandard

from daemonproc import DaemonProcess, all_records, free_port, repodata, wait_for
from pkgfactory import conda_bytes, index_json, make_package, tar_bz2_bytes

pytestmark = pytest.mark.timeout(240)


def pkg_bytes(filename: str, subdir: str = "noarch", payload: bytes = b"") -> bytes:
    stem = filename.removesuffix(".conda").removesuffix(".tar.bz2")
    name, version, build = stem.rsplit("-", 2)
    idx = index_json(name, version, build, subdir)
    files = {"lib/data.bin": payload or stem.encode()}
    if filename.endswith(".conda"):
        return conda_bytes(filename, idx, files)
    return tar_bz2_bytes(idx, files)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def channel(tmp_path: Path) -> Path:
    ch = tmp_path / "channel"
    for subdir in ("noarch", "linux-64"):
        (ch / subdir).mkdir(parents=True)
    make_package(ch / "noarch" / "base-1.0-0.conda", index_json("base", "1.0", "0", "noarch"))
    make_package(ch / "linux-64" / "lib-1.0-0.tar.bz2", index_json("lib", "1.0", "0", "linux-64"))
    return ch


def test_each_kind_of_change_is_published_within_debounce_plus_2s(channel: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with DaemonProcess(channel) as d:
        limit = d.debounce + 2
        noarch = channel / "noarch"
        # files younger than --settle at start-up are held back briefly, then published
        wait_for(lambda: set(all_records(repodata(channel, "noarch"))) == {"base-1.0-0.conda"}, limit)

        def published(fn: str, digest: str | None) -> bool:
            rec = all_records(repodata(channel, "noarch")).get(fn)
            return rec is not None and (digest is None or rec["sha256"] == digest)

        def gone(fn: str) -> bool:
            return fn not in all_records(repodata(channel, "noarch"))

        # copy in (written in place)
        data = pkg_bytes("copied-1.0-0.conda")
        (noarch / "copied-1.0-0.conda").write_bytes(data)
        wait_for(lambda: published("copied-1.0-0.conda", sha(data)), limit, what="copied file")

        # write-then-rename (temporary name inside the subdir)
        data = pkg_bytes("renamed-1.0-0.tar.bz2")
        tmp = noarch / ".renamed-1.0-0.tar.bz2.part"
        tmp.write_bytes(data)
        os.rename(tmp, noarch / "renamed-1.0-0.tar.bz2")
        wait_for(lambda: published("renamed-1.0-0.tar.bz2", sha(data)), limit, what="renamed file")

        # move in from outside the channel
        data = pkg_bytes("moved-1.0-0.conda")
        (outside / "moved-1.0-0.conda").write_bytes(data)
        shutil.move(outside / "moved-1.0-0.conda", noarch / "moved-1.0-0.conda")
        wait_for(lambda: published("moved-1.0-0.conda", sha(data)), limit, what="moved-in file")

        # overwrite with new bytes
        data = pkg_bytes("copied-1.0-0.conda", payload=b"new content " * 100)
        (noarch / "copied-1.0-0.conda").write_bytes(data)
        wait_for(lambda: published("copied-1.0-0.conda", sha(data)), limit, what="overwritten file")

        # delete
        (noarch / "renamed-1.0-0.tar.bz2").unlink()
        wait_for(lambda: gone("renamed-1.0-0.tar.bz2"), limit, what="deleted file gone")

        # move out of the channel
        shutil.move(noarch / "moved-1.0-0.conda", outside / "moved-1.0-0.conda")
        wait_for(lambda: gone("moved-1.0-0.conda"), limit, what="moved-out file gone")

        # a new subdir folder is picked up
        (channel / "osx-arm64").mkdir()
        data = pkg_bytes("arm-1.0-0.conda", "osx-arm64")
        (channel / "osx-arm64" / "arm-1.0-0.conda").write_bytes(data)
        wait_for(lambda: "arm-1.0-0.conda" in all_records(repodata(channel, "osx-arm64")), limit + 1, what="new subdir")
        # the other subdir was never disturbed, and nothing but packages triggered work
        assert set(all_records(repodata(channel, "linux-64"))) == {"lib-1.0-0.tar.bz2"}
        published_logs = [r for r in d.log_records() if r.get("event") == "published"]
        assert all({"added", "removed", "changed", "seconds", "subdir"} <= r.keys() for r in published_logs)
        assert d.metric("conda_indexd_events_total", kind="deleted") >= 2
    assert d.proc.returncode == 0


def test_slow_writer_is_not_indexed_before_complete(channel: Path) -> None:
    fn = "slow-1.0-0.tar.bz2"
    data = pkg_bytes(fn, payload=os.urandom(400_000))
    seen: list[str] = []
    with DaemonProcess(channel) as d:
        target = channel / "noarch" / fn
        stop = threading.Event()

        def watch_repodata() -> None:
            while not stop.is_set():
                try:
                    rec = all_records(repodata(channel, "noarch")).get(fn)
                except ValueError:
                    seen.append("PARTIAL repodata.json")
                    continue
                if rec:
                    seen.append(rec["sha256"])
                time.sleep(0.02)

        poller = threading.Thread(target=watch_repodata)
        poller.start()
        with open(target, "wb") as f:
            chunks = [data[i : i + len(data) // 30 + 1] for i in range(0, len(data), len(data) // 30 + 1)]
            for chunk in chunks:  # appended over ~3 s
                f.write(chunk)
                f.flush()
                time.sleep(0.1)
        wait_for(lambda: all_records(repodata(channel, "noarch")).get(fn, {}).get("sha256") == sha(data), d.debounce + 3)
        time.sleep(0.3)  # let the poller see the published record too
        stop.set()
        poller.join()
    assert seen and set(seen) == {sha(data)}, set(seen)


def test_burst_of_2000_packages_in_few_publishes(channel: Path) -> None:
    with DaemonProcess(channel) as d:
        before = d.metric("conda_indexd_publish_duration_seconds_count", subdir="linux-64")
        folder = channel / "linux-64"
        blobs = [(f"burst-1.0-{i}.tar.bz2", pkg_bytes(f"burst-1.0-{i}.tar.bz2", "linux-64")) for i in range(2000)]
        for fn, data in blobs:  # each file's index.json matches its name
            (folder / fn).write_bytes(data)
        wait_for(lambda: len(all_records(repodata(channel, "linux-64"))) == 2001, 60, interval=0.2, what="2001 records")
        publishes = d.metric("conda_indexd_publish_duration_seconds_count", subdir="linux-64") - before
        assert publishes <= 6, publishes
        assert d.metric("conda_indexd_packages", subdir="linux-64") == 2001


def test_stopped_daemon_catches_up_on_5000_files(channel: Path) -> None:
    with DaemonProcess(channel) as d:
        d.signal(signal.SIGSTOP)
        try:
            folder = channel / "noarch"
            for i in range(5000):
                (folder / f"many-1.0-{i}.tar.bz2").write_bytes(pkg_bytes(f"many-1.0-{i}.tar.bz2"))
        finally:
            d.signal(signal.SIGCONT)
        wait_for(lambda: len(all_records(repodata(channel, "noarch"))) == 5001, 120, interval=0.5, what="5001 records")
        assert d.get("/healthz")[0] == 200


def _check_outputs_complete(channel: Path, problems: list[str], stop: threading.Event) -> None:
    while not stop.is_set():
        for subdir in ("noarch",):
            for name in ("repodata.json", "repodata_from_packages.json"):
                try:
                    json.loads((channel / subdir / name).read_bytes())
                    zstandard.ZstdDecompressor().decompress((channel / subdir / (name + ".zst")).read_bytes())
                except FileNotFoundError:
                    pass
                except Exception as exc:  # noqa: BLE001 - any parse error is the failure we look for
                    problems.append(f"{name}: {type(exc).__name__}: {exc}")


def test_kill_9_mid_publish_then_restart(channel: Path) -> None:
    folder = channel / "noarch"
    problems: list[str] = []
    stop = threading.Event()
    checker = threading.Thread(target=_check_outputs_complete, args=(channel, problems, stop))
    checker.start()
    try:
        expected = {"base-1.0-0.conda"}
        for round_ in range(3):
            d = DaemonProcess(channel, debounce=0.1, settle=0)
            d.start()
            for i in range(400):
                fn = f"k{round_}-1.0-{i}.conda"
                (folder / fn).write_bytes(pkg_bytes(fn, payload=os.urandom(2000)))
                expected.add(fn)
            # kill while it is busy extracting / publishing the new files
            wait_for(lambda d=d: d.metric("conda_indexd_packages_indexed_total", subdir="noarch") > 0, 30, interval=0.01)
            d.proc.kill()
            d.proc.wait()
            d.stop()
        with DaemonProcess(channel) as d:
            wait_for(lambda: set(all_records(repodata(channel, "noarch"))) == expected, d.debounce + 5)
            leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
            assert leftovers == []
    finally:
        stop.set()
        checker.join()
    assert problems == []


def test_lock_signals_metrics_health(channel: Path) -> None:
    d = DaemonProcess(channel).start()
    try:
        second = subprocess.run(
            [sys.executable, "-m", "conda_indexd", "watch", str(channel), "--listen", f"127.0.0.1:{free_port()}"],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert second.returncode != 0
        assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
        one_shot = subprocess.run(
            [sys.executable, "-m", "conda_indexd", "index", str(channel)],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert one_shot.returncode != 0 and "being indexed" in one_shot.stderr

        assert d.get("/healthz") == (200, b"ok\n")
        assert d.get("/readyz")[0] == 200
        assert d.get("/nope")[0] == 404
        assert d.get("/metrics", method="POST")[0] == 405
        assert d.get("/metrics", method="HEAD") == (200, b"")
        metrics = d.metrics()  # parsed by prometheus-client's text parser
        names = {name for name, _ in metrics}
        for expected in (
            "conda_indexd_events_total",
            "conda_indexd_queue_pending",
            "conda_indexd_packages",
            "conda_indexd_packages_indexed_total",
            "conda_indexd_publish_duration_seconds_count",
            "conda_indexd_last_publish_timestamp_seconds",
            "conda_indexd_rescans_total",
            "conda_indexd_repodata_bytes",
            "process_resident_memory_bytes",
        ):
            assert expected in names, expected
        wait_for(lambda: d.metric("conda_indexd_packages", subdir="noarch") == 1, 5)
        assert d.metric("conda_indexd_rescans_total", reason="startup") == 1

        d.signal(signal.SIGHUP)
        wait_for(lambda: d.metric("conda_indexd_rescans_total", reason="signal") == 1, 10)

        # a broken archive is counted with its reason and does not stop the rest
        (channel / "noarch" / "broken-1.0-0.conda").write_bytes(b"not a zip")
        (channel / "noarch" / "fine-1.0-0.conda").write_bytes(pkg_bytes("fine-1.0-0.conda"))
        wait_for(lambda: "fine-1.0-0.conda" in all_records(repodata(channel, "noarch")), d.debounce + 2)
        # counted when the run that published "fine" returns, a moment after the rename
        wait_for(lambda: d.metric("conda_indexd_package_errors_total", subdir="noarch", reason="not-a-zip") == 1, 5)
        skipped = [r for r in d.log_records() if r.get("event") == "skipped archive"]
        assert skipped and skipped[0]["path"] == "broken-1.0-0.conda" and skipped[0]["reason"] == "not-a-zip"

        started = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.proc.wait(10) == 0
        assert time.monotonic() - started < 10
    finally:
        d.stop()


def test_readyz_is_503_until_startup_reconcile_is_done(tmp_path: Path) -> None:
    ch = tmp_path / "big"
    (ch / "noarch").mkdir(parents=True)
    for i in range(1500):
        (ch / "noarch" / f"r-1.0-{i}.tar.bz2").write_bytes(pkg_bytes(f"r-1.0-{i}.tar.bz2"))
    old = time.time() - 60
    for p in (ch / "noarch").iterdir():
        os.utime(p, (old, old))
    d = DaemonProcess(ch).start(wait_ready=False)
    try:
        statuses = []
        wait_for(lambda: d.get("/healthz")[0] == 200, 30)
        statuses.append(d.get("/readyz")[0])
        wait_for(lambda: d.get("/readyz")[0] == 200, 60)
        assert statuses[0] == 503
        assert len(all_records(repodata(ch, "noarch"))) == 1500
    finally:
        d.stop()


def test_subdir_emptied_waits_for_a_second_listing(channel: Path) -> None:
    with DaemonProcess(channel) as d:
        wait_for(lambda: "lib-1.0-0.tar.bz2" in all_records(repodata(channel, "linux-64")), d.debounce + 2)
        (channel / "linux-64" / "lib-1.0-0.tar.bz2").unlink()
        wait_for(lambda: all_records(repodata(channel, "linux-64")) == {}, d.debounce + 4, what="empty subdir published")
        assert any(r.get("event", "").startswith("subdir lists empty") for r in d.log_records())
