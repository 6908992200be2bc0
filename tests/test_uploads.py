"""Uploads as they really happen (issue: replaced files always re-hashed, stalled uploads
never errors, future mtimes, symlinked subdirs), each against a real daemon."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from daemonproc import DaemonProcess, all_records, repodata, wait_for
from pkgfactory import conda_bytes, index_json

FN = "pkg-1.0-0.conda"


def twin_bytes(fn: str = FN, subdir: str = "noarch") -> tuple[bytes, bytes]:
    """Two valid, different packages of the same name and the same size."""
    stem = fn.removesuffix(".conda")
    name, version, build = stem.rsplit("-", 2)
    idx = index_json(name, version, build, subdir)
    for _ in range(20):
        a = conda_bytes(fn, idx, {"lib/data.bin": os.urandom(4096)})
        b = conda_bytes(fn, idx, {"lib/data.bin": os.urandom(4096)})
        if len(a) == len(b) and a != b:
            return a, b
    raise AssertionError("could not make two packages of the same size")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def published_sha(channel: Path, fn: str = FN, subdir: str = "noarch") -> str | None:
    try:
        record = all_records(repodata(channel, subdir)).get(fn)
    except (FileNotFoundError, ValueError):
        return None
    return None if record is None else record["sha256"]


def same_times(path: Path, like: os.stat_result) -> None:
    os.utime(path, ns=(like.st_atime_ns, like.st_mtime_ns))


@pytest.mark.parametrize("how", ["rename", "in-place"])
def test_same_size_same_mtime_replacement_is_rehashed(tmp_path: Path, how: str) -> None:
    channel = tmp_path / "channel"
    noarch = channel / "noarch"
    noarch.mkdir(parents=True)
    first, second = twin_bytes()
    (noarch / FN).write_bytes(first)
    old = (noarch / FN).stat()
    os.utime(noarch / FN, ns=(old.st_atime_ns, old.st_mtime_ns - 10**10))  # settled
    old = (noarch / FN).stat()
    with DaemonProcess(channel, debounce=0.2, settle=0.3) as d:
        assert published_sha(channel) == sha(first)
        if how == "rename":  # rsync --times: a temp name, the old mtime, renamed over
            tmp = noarch / ".pkg.tmp"
            tmp.write_bytes(second)
            same_times(tmp, old)
            os.replace(tmp, noarch / FN)
        else:  # cp -p over the file: rewritten in place, then the old mtime restored
            with open(noarch / FN, "r+b") as f:
                f.write(second)
            same_times(noarch / FN, old)
        new = (noarch / FN).stat()
        assert (new.st_size, new.st_mtime_ns) == (old.st_size, old.st_mtime_ns)
        wait_for(lambda: published_sha(channel) == sha(second), d.debounce + 2, what="the new sha256 published")


def test_replacement_while_stopped_is_rehashed_at_start(tmp_path: Path) -> None:
    channel = tmp_path / "channel"
    noarch = channel / "noarch"
    noarch.mkdir(parents=True)
    first, second = twin_bytes()
    (noarch / FN).write_bytes(first)
    old = (noarch / FN).stat()
    os.utime(noarch / FN, ns=(old.st_atime_ns, old.st_mtime_ns - 10**10))
    old = (noarch / FN).stat()
    with DaemonProcess(channel, debounce=0.2, settle=0.3):
        assert published_sha(channel) == sha(first)
    with open(noarch / FN, "r+b") as f:
        f.write(second)
    same_times(noarch / FN, old)
    time.sleep(0.4)  # past --settle: not an upload in progress any more
    with DaemonProcess(channel, debounce=0.2, settle=0.3):  # ready = start-up reconcile done
        assert published_sha(channel) == sha(second)


def test_polling_sees_a_same_size_same_mtime_rewrite(tmp_path: Path) -> None:
    channel = tmp_path / "channel"
    noarch = channel / "noarch"
    noarch.mkdir(parents=True)
    first, second = twin_bytes()
    (noarch / FN).write_bytes(first)
    old = (noarch / FN).stat()
    os.utime(noarch / FN, ns=(old.st_atime_ns, old.st_mtime_ns - 10**10))
    old = (noarch / FN).stat()
    with DaemonProcess(channel, "--polling", "--poll-interval", "0.3", debounce=0.2, settle=0.3) as d:
        assert published_sha(channel) == sha(first)
        with open(noarch / FN, "r+b") as f:
            f.write(second)
        same_times(noarch / FN, old)
        wait_for(lambda: published_sha(channel) == sha(second), d.debounce + 0.3 + 2, what="the new sha256 published")
