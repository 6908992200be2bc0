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


def settled_package(tmp_path: Path) -> tuple[Path, Path, bytes, bytes, os.stat_result]:
    """A channel holding FN, settled (mtime 10 s back), and a same-size replacement."""
    channel = tmp_path / "channel"
    noarch = channel / "noarch"
    noarch.mkdir(parents=True)
    first, second = twin_bytes()
    (noarch / FN).write_bytes(first)
    old = (noarch / FN).stat()
    os.utime(noarch / FN, ns=(old.st_atime_ns, old.st_mtime_ns - 10**10))
    return channel, noarch, first, second, (noarch / FN).stat()


def rewrite_in_place(path: Path, data: bytes, like: os.stat_result) -> None:
    """cp -p over a file: rewritten in place, then the old mtime restored."""
    with open(path, "r+b") as f:
        f.write(data)
    same_times(path, like)


def same_times(path: Path, like: os.stat_result) -> None:
    os.utime(path, ns=(like.st_atime_ns, like.st_mtime_ns))


@pytest.mark.parametrize("how", ["rename", "in-place"])
def test_same_size_same_mtime_replacement_is_rehashed(tmp_path: Path, how: str) -> None:
    channel, noarch, first, second, old = settled_package(tmp_path)
    with DaemonProcess(channel, debounce=0.2, settle=0.3) as d:
        assert published_sha(channel) == sha(first)
        if how == "rename":  # rsync --times: a temp name, the old mtime, renamed over
            tmp = noarch / ".pkg.tmp"
            tmp.write_bytes(second)
            same_times(tmp, old)
            os.replace(tmp, noarch / FN)
        else:
            rewrite_in_place(noarch / FN, second, old)
        new = (noarch / FN).stat()
        assert (new.st_size, new.st_mtime_ns) == (old.st_size, old.st_mtime_ns)
        wait_for(lambda: published_sha(channel) == sha(second), d.debounce + 2, what="the new sha256 published")


def test_replacement_while_stopped_is_rehashed_at_start(tmp_path: Path) -> None:
    channel, noarch, first, second, old = settled_package(tmp_path)
    with DaemonProcess(channel, debounce=0.2, settle=0.3):
        assert published_sha(channel) == sha(first)
    rewrite_in_place(noarch / FN, second, old)
    time.sleep(0.4)  # past --settle: not an upload in progress any more
    with DaemonProcess(channel, debounce=0.2, settle=0.3):  # ready = start-up reconcile done
        assert published_sha(channel) == sha(second)


def test_polling_sees_a_same_size_same_mtime_rewrite(tmp_path: Path) -> None:
    channel, noarch, first, second, old = settled_package(tmp_path)
    with DaemonProcess(channel, "--polling", "--poll-interval", "0.3", debounce=0.2, settle=0.3) as d:
        assert published_sha(channel) == sha(first)
        rewrite_in_place(noarch / FN, second, old)
        wait_for(lambda: published_sha(channel) == sha(second), d.debounce + 0.3 + 2, what="the new sha256 published")


def errors(d: DaemonProcess) -> float:
    return sum(v for (name, _), v in d.metrics().items() if name == "conda_indexd_package_errors_total")


def test_a_stalled_upload_is_held_until_closed(tmp_path: Path) -> None:
    channel = tmp_path / "channel"
    noarch = channel / "noarch"
    noarch.mkdir(parents=True)
    data, _ = twin_bytes()
    settle = 0.3
    with DaemonProcess(channel, debounce=0.1, settle=settle) as d:
        with open(noarch / FN, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            deadline = time.monotonic() + 3 * settle + 1.0
            while time.monotonic() < deadline:  # the writer stalls, file open
                assert published_sha(channel) is None
                time.sleep(0.05)
            assert d.metric("conda_indexd_uploads_in_progress", subdir="noarch") == 1
            f.write(data[len(data) // 2 :])
        closed = time.monotonic()
        wait_for(lambda: published_sha(channel) == sha(data), 2, what="published within 2 s of close")
        assert time.monotonic() - closed < 2
        assert errors(d) == 0
        assert not [r for r in d.log_records() if r.get("level") == "warning"], "no warning for an upload in progress"
        wait_for(lambda: d.metric("conda_indexd_uploads_in_progress", subdir="noarch") == 0, 2, what="gauge back to 0")


def test_an_upload_never_closed_is_reported_after_the_cap(tmp_path: Path) -> None:
    channel = tmp_path / "channel"
    noarch = channel / "noarch"
    noarch.mkdir(parents=True)
    data, _ = twin_bytes()
    with DaemonProcess(channel, "--upload-timeout", "2", debounce=0.1, settle=0.3) as d:
        with open(noarch / FN, "wb") as f:  # a hung writer: open, half written, never closed
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(1.0)
            assert errors(d) == 0
            wait_for(lambda: errors(d) >= 1, 4, what="reported as broken once the cap has passed")
            assert published_sha(channel) is None
            skipped = d.get("/status.json")[1].decode()
            assert FN in skipped
        # the writer comes back and finishes: published
        with open(noarch / FN, "r+b") as f:
            f.seek(len(data) // 2)
            f.write(data[len(data) // 2 :])
        wait_for(lambda: published_sha(channel) == sha(data), 3, what="published once complete")


@pytest.mark.parametrize("when", ["moved-in", "at-start"])
def test_a_future_mtime_is_no_reason_to_wait(tmp_path: Path, when: str) -> None:
    channel = tmp_path / "channel"
    noarch = channel / "noarch"
    noarch.mkdir(parents=True)
    data, _ = twin_bytes()
    staged = tmp_path / FN
    staged.write_bytes(data)
    ahead = time.time() + 2 * 3600
    os.utime(staged, (ahead, ahead))  # rsync --times from a host whose clock is ahead
    if when == "at-start":
        os.replace(staged, noarch / FN)
        with DaemonProcess(channel, debounce=0.2, settle=0.3) as d:
            wait_for(lambda: published_sha(channel) == sha(data), d.debounce + 2, what="published")
    else:
        with DaemonProcess(channel, debounce=0.2, settle=0.3) as d:
            os.replace(staged, noarch / FN)
            wait_for(lambda: published_sha(channel) == sha(data), d.debounce + 2, what="published")


@pytest.mark.parametrize("mode", ["inotify", "polling"])
def test_a_symlinked_subdir_gets_live_updates(tmp_path: Path, mode: str) -> None:
    channel = tmp_path / "channel"
    (channel / "noarch").mkdir(parents=True)
    target = tmp_path / "data" / "linux-64"  # another disk, in real life
    target.mkdir(parents=True)
    (channel / "linux-64").symlink_to(target, target_is_directory=True)
    extra = ("--polling", "--poll-interval", "0.3") if mode == "polling" else ()
    data, _ = twin_bytes("lib-1.0-0.conda", "linux-64")
    with DaemonProcess(channel, *extra, debounce=0.2, settle=0.3) as d:
        (target / "lib-1.0-0.conda").write_bytes(data)
        wait_for(lambda: published_sha(channel, "lib-1.0-0.conda", "linux-64") == sha(data), d.debounce + 2 + (0.3 if extra else 0),
                 what="published through the symlinked subdir")  # fmt: skip
        (target / "lib-1.0-0.conda").unlink()
        wait_for(lambda: published_sha(channel, "lib-1.0-0.conda", "linux-64") is None, d.debounce + 2 + (0.3 if extra else 0),
                 what="removed through the symlinked subdir")  # fmt: skip


def test_a_symlinked_subdir_made_later_and_a_broken_one(tmp_path: Path) -> None:
    channel = tmp_path / "channel"
    (channel / "noarch").mkdir(parents=True)
    (channel / "win-64").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    target = tmp_path / "data" / "osx-arm64"
    target.mkdir(parents=True)
    first, _ = twin_bytes("a-1.0-0.conda", "osx-arm64")
    second, _ = twin_bytes("b-1.0-0.conda", "osx-arm64")
    (target / "a-1.0-0.conda").write_bytes(first)
    with DaemonProcess(channel, debounce=0.2, settle=0.3) as d:
        (channel / "osx-arm64").symlink_to(target, target_is_directory=True)
        wait_for(lambda: published_sha(channel, "a-1.0-0.conda", "osx-arm64") == sha(first), 4, what="the new symlinked subdir indexed")
        (target / "b-1.0-0.conda").write_bytes(second)
        wait_for(lambda: published_sha(channel, "b-1.0-0.conda", "osx-arm64") == sha(second), d.debounce + 2, what="live update")
        time.sleep(2.5)  # several checks of the channel folder
        broken = [r for r in d.log_records() if r.get("event", "").startswith("symlinked subdir points nowhere")]
        assert len(broken) == 1 and broken[0]["subdir"] == "win-64", broken
        assert d.get("/healthz")[0] == 200


def _without_write_rights() -> tuple[dict[str, object], str, str]:
    """How to run a daemon that may not write a folder it does not own: as `nobody` when
    that user can run this checkout's Python (then root owns the subdir), else as root
    without its override capabilities (setpriv; then nobody owns the subdir). Returns the
    DaemonProcess arguments, the subdir's owner, and the user the daemon runs as."""
    import shutil as sh
    import site
    import subprocess

    import conda_indexd

    if os.geteuid() != 0:
        pytest.skip("needs root to run the daemon with fewer rights")
    src = str(Path(conda_indexd.__file__).resolve().parents[1])
    env = {"PYTHONPATH": os.pathsep.join([src, *site.getsitepackages()])}
    python = "/usr/bin/python3"
    probe = subprocess.run([python, "-c", "import conda_indexd.cli, zstandard, watchdog.observers, structlog"], user="nobody",
                           env={**os.environ, **env}, capture_output=True, text=True, cwd="/")  # fmt: skip
    if probe.returncode == 0:
        return {"user": "nobody", "python": python, "env": env}, "root", "nobody"
    if sh.which("setpriv") is None:
        pytest.skip(f"nobody cannot run {python} with this checkout ({probe.stderr.strip().splitlines()[-1:]}) and setpriv is absent")
    drop = "-dac_override,-dac_read_search,-fowner"
    return {"wrapper": ["setpriv", "--bounding-set", drop, "--inh-caps", drop]}, "nobody", "root"


def test_a_subdir_the_daemon_may_not_write(tmp_path: Path) -> None:
    import pwd
    import shutil

    how, owner, user = _without_write_rights()
    base = Path("/var/tmp") / f"conda-indexd-notwritable-{os.getpid()}"  # pytest's tmp is 0700 root
    channel = base / "channel"
    try:
        (channel / "noarch").mkdir(parents=True)
        for p in (base, channel, channel / "noarch"):
            shutil.chown(p, user, pwd.getpwnam(user).pw_gid)
        linux = channel / "linux-64"  # made by someone else (docker cp, a careless mkdir): 0755, not ours
        linux.mkdir()
        data, _ = twin_bytes("lib-1.0-0.conda", "linux-64")
        (linux / "lib-1.0-0.conda").write_bytes(data)
        shutil.chown(linux, owner, pwd.getpwnam(owner).pw_gid)
        with DaemonProcess(channel, debounce=0.2, settle=0.2, log=base / "daemon.log", **how) as d:  # type: ignore[arg-type]
            started = time.monotonic()
            wait_for(lambda: d.metric("conda_indexd_subdir_errors_total", subdir="linux-64", reason="not-writable") == 1, 5)
            status = d.get("/status.json")[1].decode()
            assert "not writable" in status and "chown" in status and str(linux) in status
            time.sleep(max(0.0, 12 - (time.monotonic() - started)))  # a quiet retry (every 10 s)
            lines = [r for r in d.log_records() if r.get("level") == "error"]
            assert len(lines) == 1 and lines[0]["subdir"] == "linux-64", lines  # no retry storm
            assert d.metric("conda_indexd_subdir_errors_total", subdir="linux-64", reason="not-writable") == 1
            assert published_sha(channel, "lib-1.0-0.conda", "linux-64") is None
            shutil.chown(linux, user, pwd.getpwnam(user).pw_gid)  # the fix the status page names
            wait_for(lambda: published_sha(channel, "lib-1.0-0.conda", "linux-64") == sha(data), 10 + 2, what="published once fixed")
            # the status is updated when that run returns, a moment after the rename
            wait_for(lambda: "not writable" not in d.get("/status.json")[1].decode(), 5, what="status cleared")
    finally:
        shutil.rmtree(base, ignore_errors=True)
