"""Logs and help: the terminal progress line never shares a line with a log line (run in
a real pseudo-terminal), help texts say what the README says, and folders named like an
unknown platform are logged once and listed as ignored on the status page."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli, run_index
from daemonproc import DaemonProcess, wait_for
from pkgfactory import index_json, make_package, make_text

_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def screen(raw: str) -> list[str]:
    """The lines a terminal shows for `raw`: \\r returns to column 0, ESC[K erases to the
    end of the line, other characters overwrite."""
    lines: list[str] = []
    cur: list[str] = []
    col = 0
    text = _COLOUR.sub("", raw)
    i = 0
    while i < len(text):
        if text.startswith("\x1b[K", i):
            del cur[col:]
            i += 3
            continue
        ch = text[i]
        i += 1
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("".join(cur))
            cur, col = [], 0
        else:
            if col < len(cur):
                cur[col] = ch
            else:
                cur.append(ch)
            col += 1
    if cur:
        lines.append("".join(cur))
    return lines


def run_in_terminal(args: list[str], timeout: float = 60) -> str:
    """Run with stdout and stderr on one pseudo-terminal; everything it showed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, close_fds=True,
                            env={**os.environ, "COLUMNS": "300", "TERM": "xterm"})  # fmt: skip
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(10) == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_line_ends_before_log_lines(channel: Path) -> None:
    for i in range(30):
        make_package(channel / "noarch" / f"p{i}-1.0-0.tar.bz2", index_json(f"p{i}", "1.0", "0"))
    make_text(channel / "noarch" / "broken-1.0-0.conda")
    raw = run_in_terminal([sys.executable, "-m", "conda_indexd", "index", str(channel), "--threads", "2"])
    assert "read 31/31 archives" in raw, "the progress line was drawn"
    shown = screen(raw)
    warning = [line for line in shown if "skipped archive" in line]
    assert len(warning) == 1, shown
    assert not any("archives" in line and ("[" in line or "skipped" in line) for line in shown if "read " in line), shown
    assert warning[0].lstrip().startswith("20"), f"the warning starts its own line: {warning[0]!r}"
    assert not any(re.search(r"read \d+/\d+ archives", line) for line in shown), "the progress line is erased at the end"


def test_help_texts_match_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    index = run_cli("index", "--help")
    watch = run_cli("watch", "--help")
    demo = run_cli("demo", "--help")
    assert index.rc == watch.rc == demo.rc == 0
    flat = " ".join(index.stdout.split())
    assert "needs the outputs extra" in flat and "current-repodata extra" not in flat
    assert "conda-indexd[outputs]" in readme
    listen = " ".join(watch.stdout.split())
    assert "status page (/ and /status.json)" in listen and "/metrics" in listen
    for flag in ("--clean-conda-index-leftovers", "--db", "--compact"):
        assert flag in index.stdout and flag in readme, flag
    assert "--add" in demo.stdout and "conda-indexd demo" in readme and "second terminal" in readme
    for section in ("## Switching from conda-index", "## For conda, mamba and pixi users"):
        assert section in readme, section
    for words in ("'**'", "--no-repodata-use-shards", "under a path", "repodata_shards.msgpack.zst", "cache.db"):
        assert words in readme, words


def test_unknown_platform_folders_logged_once_and_on_status_page(channel: Path) -> None:
    make_package(channel / "noarch" / "a-1.0-0.conda", index_json("a", "1.0", "0"))
    make_package(channel / "linux-fake" / "x-1.0-0.conda", index_json("x", "1.0", "0", "linux-64"))
    (channel / "docs").mkdir()  # not named like a platform: not reported
    result = run_index(channel)
    ignored = result.events("folder ignored")
    assert [(r["folder"], r["level"]) for r in ignored] == [("linux-fake", "warning")], ignored
    assert "linux-64" in ignored[0]["reason"], "names the closest known platform"
    assert not (channel / "linux-fake" / "repodata.json").exists()

    with DaemonProcess(channel) as d:
        status, body = d.get("/status.json")
        assert status == 200
        assert json.loads(body)["ignored"] == [{"folder": "linux-fake", "reason": ignored[0]["reason"]}]
        page = d.get("/")[1].decode()
        assert "Folders ignored" in page and "linux-fake/" in page
        (channel / "osx-arm65").mkdir()
        assert [i["folder"] for i in json.loads(d.get("/status.json")[1])["ignored"]] == ["linux-fake", "osx-arm65"]
    assert sum(1 for r in d.log_records() if r.get("event") == "folder ignored") == 1, "logged once at start"


@pytest.mark.parametrize("name", ["linux-fake", "osx-arm65", "Linux-64", "noarch2", "win64"])
def test_platform_like_names(name: str, tmp_path: Path) -> None:
    from conda_indexd.pipeline.ignored import ignored_folders

    (tmp_path / name).mkdir()
    (tmp_path / "linux-64").mkdir()
    (tmp_path / "shards").mkdir()
    assert [i["folder"] for i in ignored_folders(tmp_path)] == [name]


def test_publish_line_names_the_files(tmp_path: Path) -> None:
    """Each publish log line names the added, removed and changed files (first 20, then
    a count); the counts stay as they were."""
    channel = tmp_path / "channel"
    noarch = channel / "noarch"
    make_package(noarch / "keep-1.0-0.conda", index_json("keep", "1.0", "0"))
    make_package(noarch / "old-1.0-0.conda", index_json("old", "1.0", "0"))
    with DaemonProcess(channel, debounce=0.2, settle=0).start() as d:
        staging = tmp_path / "staging"
        for i in range(23):
            fn = f"new{i:02d}-1.0-0.conda"
            make_package(staging / fn, index_json(f"new{i:02d}", "1.0", "0"))
        for p in sorted(staging.iterdir()):
            p.rename(noarch / p.name)
        (noarch / "old-1.0-0.conda").unlink()

        def line() -> dict | None:
            for r in d.log_records():
                if r.get("event") == "published" and r.get("added") == 23:
                    return r
            return None

        wait_for(lambda: line() is not None, 15, what="one publish of the 23 new files")
        record = line()
        assert record is not None
        assert record["added_files"][:20] == [f"new{i:02d}-1.0-0.conda" for i in range(20)]
        assert record["added_files"][20:] == ["... and 3 more"]
        assert record["removed"] == 1 and record["removed_files"] == ["old-1.0-0.conda"]
        assert "changed_files" not in record
