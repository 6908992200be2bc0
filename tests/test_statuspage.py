"""The daemon's status page (GET / and /status.json), rendered by headless Chromium and
checked against the running daemon's state, including a skipped archive and its reason."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import pytest

from daemonproc import DaemonProcess, all_records, repodata, wait_for
from pkgfactory import index_json, make_package, make_text


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip("chromium is not installed (Debian package chromium; .ci/run installs it)")


def browse(browser: str, url: str, tmp: Path) -> tuple[str, Path]:
    """(the page's DOM after rendering, a screenshot)."""
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0 and "<html" in dom.stdout, dom.stderr[-2000:]
    shot = tmp / "status.png"
    out = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,900", url], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0 and shot.exists(), out.stderr[-2000:]
    return dom.stdout, shot


def text_of(dom: str) -> str:
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


@pytest.mark.timeout(240)
def test_status_page_in_chromium(channel: Path, tmp_path: Path) -> None:
    browser = chromium()
    for i in range(3):
        make_package(channel / "noarch" / f"good{i}-1.0-0.conda", index_json(f"good{i}", "1.0", "0"))
    make_package(channel / "linux-64" / "tool-1.0-0.tar.bz2", index_json("tool", "1.0", "0", "linux-64"))
    make_text(channel / "noarch" / "broken-1.0-0.conda")
    with DaemonProcess(channel) as d:
        wait_for(lambda: len(all_records(repodata(channel, "noarch"))) == 3, 10, what="noarch published")
        status, body = d.get("/status.json")
        assert status == 200
        doc = json.loads(body)
        subdirs = {s["subdir"]: s for s in doc["subdirs"]}
        assert doc["ready"] is True and doc["channel"] == str(channel)
        assert subdirs["noarch"]["packages"] == d.metric("conda_indexd_packages", subdir="noarch") == 3
        assert subdirs["linux-64"]["packages"] == 1
        assert [(f["path"], f["reason"]) for f in subdirs["noarch"]["skipped"]] == [("broken-1.0-0.conda", "not-a-zip")]
        assert subdirs["noarch"]["last_publish"] and subdirs["noarch"]["last_duration"] > 0

        dom, shot = browse(browser, d.url("/"), tmp_path)
        text = text_of(dom)
        assert "conda-indexd" in text and "ready" in text and str(channel) in text
        assert re.search(r"noarch 3 \d{4}-\d\d-\d\dT", text), text  # subdir, packages, last publish
        assert re.search(r"linux-64 1 \d{4}-", text), text
        assert "broken-1.0-0.conda not-a-zip .conda is not a valid zip file" in text, text
        assert "nothing pending" in text
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        assert d.get("/", method="HEAD")[0] == 200
