"""`conda-indexd wait`: against a channel folder, a channel URL served by real nginx, and
the real daemon's HTTP address, with packages that arrive later, broken uploads, older
sha256s and timeouts; bad arguments are one line and exit 2."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import run_cli, run_index
from daemonproc import DaemonProcess, all_records, free_port, repodata, wait_for
from nginxproc import Nginx, nginx_binary
from pkgfactory import index_json, make_package, make_truncated_conda

pytestmark = pytest.mark.timeout(120)


@dataclass
class Channel:
    path: Path
    daemon: DaemonProcess
    nginx: Nginx

    def target(self, kind: str) -> str:
        return {
            "folder": str(self.path),
            "url": self.nginx.url + "/",
            "daemon": self.daemon.url(""),
        }[kind]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Channel]:
    nginx_binary()  # skips with a reason when nginx is absent
    tmp = tmp_path_factory.mktemp("wait")
    channel = tmp / "channel"
    make_package(channel / "noarch" / "base-1.0-0.conda", index_json("base", "1.0", "0"))
    daemon = DaemonProcess(channel).start()
    try:
        with Nginx(channel, tmp / "nginx") as nginx:
            yield Channel(channel, daemon, nginx)
    finally:
        daemon.stop()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def start_wait(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "conda_indexd", "wait", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def upload(staged: Path, noarch: Path) -> None:
    """What an uploader does: write elsewhere, rename into place."""
    os.replace(staged, noarch / staged.name)


def published_at(channel: Path, filename: str, timeout: float = 15) -> float:
    """When the test (polling every 10 ms) first sees the record in noarch/repodata.json."""
    wait_for(
        lambda: filename in all_records(repodata(channel, "noarch")),
        timeout,
        interval=0.01,
        what=f"{filename} published",
    )
    return time.monotonic()


@pytest.mark.parametrize("kind", ["folder", "url", "daemon"])
def test_package_arriving_3s_later_exits_0_within_a_second_of_publish(live: Channel, kind: str, tmp_path: Path) -> None:
    filename = f"late-{kind}-1.0-0.conda"
    staged = make_package(tmp_path / filename, index_json(f"late-{kind}", "1.0", "0"))
    digest = sha256(staged)
    proc = start_wait(live.target(kind), f"noarch/{filename}", "--sha256", digest, "--timeout", "30")
    try:
        time.sleep(3)
        assert proc.poll() is None, proc.communicate()
        upload(staged, live.path / "noarch")
        seen = published_at(live.path, filename)
        rc = proc.wait(10)
        exited = time.monotonic()
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, out + err
    print(
        f"\nwait against the {kind}: exit {exited - seen:.2f} s after publish",
        file=sys.stderr,
    )
    assert exited - seen < 1.0, f"exited {exited - seen:.2f} s after publish"
    assert f"noarch/{filename} is published (sha256 {digest})" in out
    assert f"waiting for noarch/{filename}:" in err  # it said what it was waiting for
    assert "Traceback" not in err
    if kind == "url":  # conditional requests between polls: nginx answered 304
        log = live.nginx.log_lines()
        assert any(line.startswith("GET /noarch/repodata_shards.msgpack.zst 304") for line in log), log[-10:]
        assert any("GET /noarch/shards/" in line and " 200 " in line for line in log)


def test_any_sha256_when_none_given(live: Channel) -> None:
    for kind in ("folder", "url", "daemon"):
        result = run_cli("wait", live.target(kind), "noarch/base-1.0-0.conda", "--timeout", "5")
        assert result.rc == 0, result
        assert f"sha256 {sha256(live.path / 'noarch' / 'base-1.0-0.conda')}" in result.stdout


def skip_logged(live: Channel, filename: str, timeout: float = 30) -> float:
    """When the test (polling every 20 ms) first sees the daemon's "skipped archive" line."""
    wait_for(
        lambda: any(r.get("event") == "skipped archive" and r.get("path") == filename for r in live.daemon.log_records()),
        timeout,
        interval=0.02,
        what=f"{filename} skipped in the daemon's log",
    )
    return time.monotonic()


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, float, str, str]:
    """The exit status, when it was seen, stdout and stderr of a started `wait`."""
    try:
        rc = proc.wait(timeout)
        exited = time.monotonic()
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return rc, exited, out, err


@pytest.mark.parametrize("kind", ["folder", "daemon"])
def test_broken_upload_exits_1_at_once_naming_the_reason(live: Channel, kind: str, tmp_path: Path) -> None:
    """Not at --timeout (60 s): within a second of the skip being visible (3 s allowed for load)."""
    filename = f"broken-{kind}-1.0-0.conda"
    staged = make_truncated_conda(tmp_path / filename, index_json(f"broken-{kind}", "1.0", "0"))
    proc = start_wait(live.target(kind), f"noarch/{filename}", "--timeout", "60")
    upload(staged, live.path / "noarch")
    seen = skip_logged(live, filename)
    rc, exited, out, err = finish(proc, 30)
    assert rc == 1, out + err
    print(f"\nwait against the {kind}: exit {exited - seen:.2f} s after the skip was logged", file=sys.stderr)
    assert exited - seen < 3.0, f"exited {exited - seen:.2f} s after the skip was logged"
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"conda-indexd wait: noarch/{filename}: left out by the indexer: "), line
    assert line.endswith("(--keep-waiting waits for a re-upload)"), line
    reason = wait_for(lambda: _skipped(live, filename), 15, what="skip in /status.json")
    assert reason in line, (reason, line)
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("kind", ["folder", "daemon"])
def test_keep_waiting_waits_past_a_broken_upload_for_the_fixed_one(live: Channel, kind: str, tmp_path: Path) -> None:
    filename = f"redo-{kind}-1.0-0.conda"
    broken = make_truncated_conda(tmp_path / "broken" / filename, index_json(f"redo-{kind}", "1.0", "0"))
    fixed = make_package(tmp_path / "fixed" / filename, index_json(f"redo-{kind}", "1.0", "0"))
    proc = start_wait(live.target(kind), f"noarch/{filename}", "--keep-waiting", "--timeout", "60")
    try:
        upload(broken, live.path / "noarch")
        skip_logged(live, filename)
        wait_for(lambda: _skipped(live, filename), 15, what="skip in /status.json")
        time.sleep(1.5)  # several looks at the skip
        assert proc.poll() is None, proc.communicate()
        upload(fixed, live.path / "noarch")
    except BaseException:
        proc.kill()
        raise
    rc, _exited, out, err = finish(proc, 30)
    assert rc == 0, out + err
    assert f"noarch/{filename} is published (sha256 {sha256(live.path / 'noarch' / filename)})" in out
    assert f"waiting for noarch/{filename}: left out by the indexer: " in err  # the CI log showed it
    assert "Traceback" not in err


@pytest.mark.parametrize("kind", ["folder", "daemon"])
def test_sha256_fails_fast_only_for_that_file(live: Channel, kind: str, tmp_path: Path) -> None:
    """With --sha256 the broken file there now must be the awaited one: a broken older
    upload is waited past (the pipeline re-uploads), the awaited one broken exits 1."""
    filename = f"shas-{kind}-1.0-0.conda"
    broken = make_truncated_conda(tmp_path / "broken" / filename, index_json(f"shas-{kind}", "1.0", "0"))
    fixed = make_package(tmp_path / "fixed" / filename, index_json(f"shas-{kind}", "1.0", "0"))
    bad, good = sha256(broken), sha256(fixed)
    upload(broken, live.path / "noarch")
    skip_logged(live, filename)
    wait_for(lambda: _skipped(live, filename), 15, what="skip in /status.json")
    started = time.monotonic()
    result = run_cli("wait", live.target(kind), f"noarch/{filename}", "--sha256", bad, "--timeout", "60")
    assert result.rc == 1 and time.monotonic() - started < 10, result
    assert "left out by the indexer: " in result.stderr.splitlines()[-1]
    proc = start_wait(live.target(kind), f"noarch/{filename}", "--sha256", good, "--timeout", "60")
    try:
        time.sleep(2)  # several looks at the broken older upload
        assert proc.poll() is None, proc.communicate()
        upload(fixed, live.path / "noarch")
    except BaseException:
        proc.kill()
        raise
    rc, _exited, out, err = finish(proc, 30)
    assert rc == 0, out + err
    assert f"noarch/{filename} is published (sha256 {good})" in out


def _skipped(live: Channel, filename: str) -> str:
    """The daemon's reason for leaving filename out ("" while it has none)."""
    _status, body = live.daemon.get("/status.json")
    for subdir in json.loads(body)["subdirs"]:
        for f in subdir["skipped"]:
            if f["path"] == filename:
                return str(f["reason"])
    return ""


def test_broken_upload_through_the_url_exits_1(live: Channel, tmp_path: Path) -> None:
    """nginx only serves files: no reason to give, but the wait still fails (not published)."""
    filename = "broken-url-1.0-0.conda"
    upload(
        make_truncated_conda(tmp_path / filename, index_json("broken-url", "1.0", "0")),
        live.path / "noarch",
    )
    wait_for(lambda: _skipped(live, filename), 15, what="skip recorded")
    result = run_cli("wait", live.target("url"), f"noarch/{filename}", "--timeout", "1.5")
    assert result.rc == 1, result
    assert "no shard for broken-url" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("kind", ["folder", "url", "daemon"])
def test_older_sha256_published_exits_1_and_shows_it(live: Channel, kind: str, tmp_path: Path) -> None:
    filename = f"old-{kind}-1.0-0.conda"
    upload(
        make_package(tmp_path / filename, index_json(f"old-{kind}", "1.0", "0")),
        live.path / "noarch",
    )
    published_at(live.path, filename)
    old = sha256(live.path / "noarch" / filename)
    newer = make_package(
        tmp_path / "newer" / filename,
        index_json(f"old-{kind}", "1.0", "0", depends=["python"]),
    )
    result = run_cli(
        "wait",
        live.target(kind),
        f"noarch/{filename}",
        "--sha256",
        sha256(newer),
        "--timeout",
        "1",
    )
    assert result.rc == 1, result
    assert f"published with sha256 {old}, not {sha256(newer)}" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("kind", ["folder", "url", "daemon"])
def test_timeout_exits_1(live: Channel, kind: str) -> None:
    started = time.monotonic()
    result = run_cli("wait", live.target(kind), "noarch/never-1.0-0.conda", "--timeout", "1.5")
    took = time.monotonic() - started
    assert result.rc == 1, result
    assert 1.5 <= took < 6, took
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("conda-indexd wait: timed out after 1.5 s: noarch/never-1.0-0.conda: not in ")
    assert "none named never" in last or "no shard for never" in last
    assert result.stdout == ""


def test_url_without_shards_reads_repodata_json_with_conditional_gets(
    tmp_path: Path,
) -> None:
    nginx_binary()
    channel = tmp_path / "channel"
    make_package(
        channel / "noarch" / "plain-1.0-0.conda",
        index_json("plain", "1.0", "0", depends=["x"] * 200),
    )
    run_index(channel, "--no-write-shards")
    with Nginx(channel, tmp_path / "nginx") as nginx:
        ok = run_cli("wait", nginx.url, "noarch/plain-1.0-0.conda", "--timeout", "5")
        assert ok.rc == 0, ok
        missing = run_cli(
            "wait",
            nginx.url,
            "noarch/other-1.0-0.conda",
            "--timeout",
            "1.2",
            "--interval",
            "0.2",
        )
        assert missing.rc == 1 and "not in noarch/repodata.json (1 packages, none named other)" in missing.stderr
        log = nginx.log_lines()
    assert any(line.startswith("GET /noarch/repodata_shards.msgpack.zst 404") for line in log)
    assert sum(line.startswith("GET /noarch/repodata.json 304") for line in log) >= 3, log


def test_unreachable_url_times_out_naming_the_error(tmp_path: Path) -> None:
    result = run_cli(
        "wait",
        f"http://127.0.0.1:{free_port()}",
        "noarch/a-1.0-0.conda",
        "--timeout",
        "1",
    )
    assert result.rc == 1, result
    assert "cannot read: " in result.stderr and "Connection refused" in result.stderr


def test_daemon_whose_folder_is_not_visible_is_a_usage_error(live: Channel, tmp_path: Path) -> None:
    """An http TARGET answering conda-indexd's /status.json is the daemon; it needs its channel
    folder. Simulated with nginx serving a copy of the daemon's status document."""
    _status, body = live.daemon.get("/status.json")
    doc = json.loads(body)
    doc["channel"] = str(tmp_path / "elsewhere")
    root = tmp_path / "root"
    root.mkdir()
    (root / "status.json").write_text(json.dumps(doc))
    with Nginx(root, tmp_path / "nginx") as nginx:
        result = run_cli("wait", nginx.url, "noarch/a-1.0-0.conda", "--timeout", "3")
    assert result.rc == 2, result
    assert result.stderr.count("\n") == 1 and "not visible here" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["/no/such/folder", "noarch/a-1.0-0.conda"],
            "not a channel folder or an http(s) URL",
        ),
        (["ftp://example.org/ch", "noarch/a-1.0-0.conda"], "only http:// and https://"),
        (["{tmp}", "a-1.0-0.conda"], "expected SUBDIR/FILENAME"),
        (["{tmp}", "noarch/a-1.0-0.whl"], "not a conda package filename"),
        (["{tmp}", "noarch/sub/a-1.0-0.conda"], "expected SUBDIR/FILENAME"),
        (
            ["{tmp}", "noarch/a-1.0-0.conda", "--sha256", "abc"],
            "expected 64 hex digits",
        ),
        (
            ["{tmp}", "noarch/a-1.0-0.conda", "--timeout", "soon"],
            "not a number of seconds",
        ),
        (
            ["{tmp}", "noarch/a-1.0-0.conda", "--timeout", "-1"],
            "must be a finite number >= 0",
        ),
        (
            ["{tmp}", "noarch/a-1.0-0.conda", "--timeout", "inf"],
            "must be a finite number >= 0",
        ),
        (["{tmp}"], "the following arguments are required"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("wait", *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.rc == 2, result
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert result.stdout == ""


def test_url_answering_errors_for_status_json_is_a_channel_url(tmp_path: Path) -> None:
    """A server answering 403 (not 404) for /status.json is still a channel, not the daemon."""
    nginx_binary()
    channel = tmp_path / "channel"
    make_package(channel / "noarch" / "p-1.0-0.conda", index_json("p", "1.0", "0"))
    run_index(channel)
    (channel / "status.json").mkdir()  # nginx: 301 to status.json/, a folder without index: 403
    with Nginx(channel, tmp_path / "nginx") as nginx:
        assert nginx.request("GET", "/status.json/")[0] == 403
        result = run_cli("wait", nginx.url, "noarch/p-1.0-0.conda", "--timeout", "5")
    assert result.rc == 0, result


def test_a_broken_file_replaced_since_the_index_is_waited_for(tmp_path: Path) -> None:
    """The skip is about the file the indexer read: once another file has replaced it (not
    indexed yet), wait does not give up on the old verdict. No daemon: `index` once."""
    channel = tmp_path / "channel"
    filename = "swap-1.0-0.conda"
    make_truncated_conda(channel / "noarch" / filename, index_json("swap", "1.0", "0"))
    run_index(channel)
    started = time.monotonic()
    broken = run_cli("wait", str(channel), f"noarch/{filename}", "--timeout", "60")
    assert broken.rc == 1 and time.monotonic() - started < 10, broken
    assert "left out by the indexer: " in broken.stderr.splitlines()[-1]
    fixed = make_package(tmp_path / "fixed" / filename, index_json("swap", "1.0", "0"))
    upload(fixed, channel / "noarch")
    result = run_cli("wait", str(channel), f"noarch/{filename}", "--timeout", "1.5")
    assert result.rc == 1, result
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"conda-indexd wait: timed out after 1.5 s: noarch/{filename}: "), last
    assert "left out" not in last and "not indexed yet" in last, last
