"""Resource faults (reliability issue): disk full while publishing, a damaged or deleted
cache.db, the channel folder removed and recreated, a read-only channel."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_index
from daemonproc import DaemonProcess, all_records, repodata, wait_for
from pkgfactory import index_json, make_package

pytestmark = pytest.mark.timeout(180)


def fill(channel: Path, n: int = 5) -> list[Path]:
    return [make_package(channel / "noarch" / f"p{i}-1.0-0.conda", index_json(f"p{i}", "1.0", "0")) for i in range(n)]


def outputs(channel: Path) -> dict[str, bytes]:
    noarch = channel / "noarch"
    return {n: (noarch / n).read_bytes() for n in ("repodata.json", "repodata.json.zst", "repodata_shards.msgpack.zst")}


# --- cache.db --------------------------------------------------------------------------------


def test_deleted_cache_is_rebuilt_with_identical_outputs(channel: Path) -> None:
    fill(channel)
    run_index(channel)
    before = json.loads((channel / "noarch" / "repodata.json").read_text())
    (channel / "noarch" / ".cache" / "cache.db").unlink()
    result = run_index(channel)
    assert result.subdir("noarch")["extracted"] == 5
    assert json.loads((channel / "noarch" / "repodata.json").read_text()) == before
    assert result.subdir("noarch")["written"] == []  # same bytes: nothing replaced


@pytest.mark.parametrize("damage", ["garbage", "mid-file"])
def test_damaged_cache_is_moved_aside_and_rebuilt(channel: Path, damage: str) -> None:
    fill(channel, 30)
    run_index(channel)
    before = outputs(channel)
    db = channel / "noarch" / ".cache" / "cache.db"
    data = bytearray(db.read_bytes())
    if damage == "garbage":
        data = bytearray(b"this is not sqlite" * 100)
    else:  # keep the header, wreck the pages after it
        for i in range(4096 + 100, len(data), 7):
            data[i] = 0xA5
    db.write_bytes(bytes(data))
    result = run_index(channel)
    assert any(r.get("event", "").startswith("cache.db is damaged") for r in result.records), result
    assert result.subdir("noarch")["extracted"] == 30 and result.subdir("noarch")["packages"] == 30
    assert outputs(channel) == before
    assert list((channel / "noarch" / ".cache").glob("cache.db.corrupt-*")), "the damaged file is kept for inspection"
    assert run_index(channel).subdir("noarch")["extracted"] == 0  # the new cache works


def test_daemon_survives_a_damaged_cache(channel: Path) -> None:
    fill(channel, 3)
    with DaemonProcess(channel) as d:
        (channel / "noarch" / ".cache" / "cache.db").write_bytes(b"\0garbage" * 512)
        make_package(channel / "noarch" / "late-1.0-0.conda", index_json("late", "1.0", "0"))
        wait_for(lambda: len(all_records(repodata(channel, "noarch"))) == 4, 10, what="4 records after the damage")
        assert d.get("/healthz")[0] == 200
        assert any(r.get("event", "").startswith("cache.db is damaged") for r in d.log_records())


# --- the channel folder ------------------------------------------------------------------------


def test_channel_removed_and_recreated(channel: Path, tmp_path: Path) -> None:
    fill(channel, 2)
    with DaemonProcess(channel) as d:
        shutil.rmtree(channel)
        wait_for(lambda: any(r.get("event", "").startswith("channel folder is gone") for r in d.log_records()), 5)
        assert d.get("/healthz")[0] == 200
        assert not channel.exists(), "the daemon must not recreate a vanished channel folder"
        (channel / "noarch").mkdir(parents=True)
        make_package(channel / "noarch" / "back-1.0-0.conda", index_json("back", "1.0", "0"))
        wait_for(lambda: set(all_records(repodata(channel, "noarch"))) == {"back-1.0-0.conda"}, 10, what="recreated channel published")
        # events flow again from the new folder (not only the rescan)
        make_package(channel / "noarch" / "next-1.0-0.conda", index_json("next", "1.0", "0"))
        wait_for(lambda: "next-1.0-0.conda" in all_records(repodata(channel, "noarch")), 5, what="event after recreate")
        assert (channel / ".conda-indexd.lock").exists()
        assert d.metric("conda_indexd_rescans_total", reason="replaced") == 1


def _in_private_mounts(script: str) -> subprocess.CompletedProcess:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a private mount namespace")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_read_only_channel_is_one_clear_error(channel: Path) -> None:
    fill(channel, 1)
    py = sys.executable
    out = _in_private_mounts(
        f"mount --bind {channel} {channel}; mount -o remount,ro,bind {channel}; "
        f"for cmd in index watch; do {py} -m conda_indexd $cmd {channel} --listen 127.0.0.1:0 2>&1 >/dev/null | head -5; echo rc=$?; done".replace(
            " --listen 127.0.0.1:0", ""
        )
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines.count("rc=0") == 2  # (head's status)
    messages = [line for line in lines if not line.startswith("rc=")]
    assert len(messages) == 2 and all("not writable" in m and "Traceback" not in m for m in messages), out.stdout


def test_disk_full_keeps_old_repodata_and_recovers(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        channel = mnt / "channel"
        fill(channel, 3)
        with DaemonProcess(channel, log=tmp_path / "daemon.log") as d:
            old = outputs(channel)
            late = make_package(tmp_path / "late-1.0-0.conda", index_json("late", "1.0", "0"), {"lib/blob": os.urandom(20_000)})
            filler = mnt / "filler"
            d.signal(signal.SIGSTOP)  # the package lands, then the disk fills, then it looks
            try:
                shutil.copy(late, channel / "noarch" / late.name)
                try:
                    with open(filler, "wb") as f:
                        while True:
                            f.write(b"\0" * 65536)
                            f.flush()
                except OSError:
                    pass
                assert shutil.disk_usage(mnt).free < 8192
            finally:
                d.signal(signal.SIGCONT)
            wait_for(lambda: d.metric("conda_indexd_subdir_errors_total", subdir="noarch", reason="OperationalError")
                     + d.metric("conda_indexd_subdir_errors_total", subdir="noarch", reason="OSError") >= 1, 15,
                     what="a counted publish error")  # fmt: skip
            assert outputs(channel) == old, "the old repodata stays while the disk is full"
            assert not [p for p in (channel / "noarch").iterdir() if p.name.endswith(".tmp")]
            filler.unlink()
            wait_for(lambda: "late-1.0-0.conda" in all_records(repodata(channel, "noarch")), 20, what="publish after space returns")
            assert d.get("/healthz")[0] == 200
            retry = [r for r in d.log_records() if r.get("event") == "subdir failed; will retry"]
            assert retry and all(r["retry_in"] >= 2 for r in retry)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
