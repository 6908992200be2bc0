"""The daemon's status page (GET /, /status.json, /status/<subdir>), rendered by headless
Chromium (under the page's CSP, which lets no script run) and checked against the running daemon's state: a burst of
uploads, a refused archive and its reason, the activity feed, the inline SVG charts, the
package view, and a pair after a takeover. `--update-screenshots` copies the screenshots
into docs/img/ (docs/status-page.md shows them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from html import unescape
from pathlib import Path

import pytest

from daemonproc import DaemonProcess, all_records, repodata, wait_for
from pkgfactory import conda_bytes, index_json, make_package, make_text

DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
CSP = "default-src 'none'"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip("chromium is not installed (Debian package chromium; .ci/run installs it)")


def _common(browser: str, tmp: Path) -> list[str]:
    # As root Chromium needs --no-sandbox. No scripts can run: the page's CSP (default-src
    # 'none') forbids them. (--blink-settings=scriptEnabled=false would say so too, but
    # Chromium 156's headless mode then writes neither a DOM dump nor a screenshot.)
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}"]


def dump_dom(browser: str, url: str, tmp: Path) -> str:
    dom = subprocess.run([*_common(browser, tmp), "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "<html" in dom.stdout, dom.stderr[-2000:]
    return dom.stdout


def screenshot(browser: str, url: str, tmp: Path, name: str, request: pytest.FixtureRequest, size: str = "1280,1800") -> Path:
    """A PNG of the page (in tmp; also into docs/img/ with --update-screenshots)."""
    shot = tmp / f"{name}.png"
    out = subprocess.run([*_common(browser, tmp), f"--screenshot={shot}", f"--window-size={size}", url],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and shot.exists(), out.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if request.config.getoption("--update-screenshots"):
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMG / shot.name)
    return shot


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def text_of(dom: str) -> str:
    """The page's text, one space between words (none before punctuation a tag left alone)."""
    return re.sub(r" ([,:.;])(?=\s|$)", r"\1", unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))))


def status(d: DaemonProcess) -> dict:
    code, body = d.get("/status.json")
    assert code == 200
    return json.loads(body)


def land(channel: Path, subdir: str, name: str, version: str) -> str:
    """A package arriving by rename (as an upload tool does)."""
    fn = f"{name}-{version}-0.conda"
    tmp = channel / subdir / f".{fn}.part"
    tmp.write_bytes(conda_bytes(fn, index_json(name, version, "0", subdir), {"lib/payload": f"{name} {version}".encode()}))
    os.replace(tmp, channel / subdir / fn)
    return fn


@pytest.mark.timeout(240)
def test_status_page_in_chromium(channel: Path, tmp_path: Path) -> None:
    browser = chromium()
    for i in range(3):
        make_package(channel / "noarch" / f"good{i}-1.0-0.conda", index_json(f"good{i}", "1.0", "0"))
    make_package(channel / "linux-64" / "tool-1.0-0.tar.bz2", index_json("tool", "1.0", "0", "linux-64"))
    make_text(channel / "noarch" / "broken-1.0-0.conda")
    with DaemonProcess(channel, "--no-write-shards") as d:  # the package view then reads repodata.json
        wait_for(lambda: len(all_records(repodata(channel, "noarch"))) == 3, 10, what="noarch published")
        doc = status(d)
        subdirs = {s["subdir"]: s for s in doc["subdirs"]}
        assert doc["ready"] is True and doc["channel"] == str(channel)
        assert subdirs["noarch"]["packages"] == d.metric("conda_indexd_packages", subdir="noarch") == 3
        assert subdirs["linux-64"]["packages"] == 1
        assert [(f["path"], f["reason"]) for f in subdirs["noarch"]["skipped"]] == [("broken-1.0-0.conda", "not-a-zip")]
        assert subdirs["noarch"]["last_publish"] and subdirs["noarch"]["last_duration"] > 0

        text = text_of(dump_dom(browser, d.url("/"), tmp_path))
        assert "conda-indexd" in text and "ready" in text and str(channel) in text
        assert re.search(r"noarch 3 \d{4}-\d\d-\d\dT", text), text  # subdir, packages, last publish
        assert re.search(r"linux-64 1 \d{4}-", text), text
        assert "broken-1.0-0.conda not-a-zip .conda is not a valid zip file" in text, text
        assert "nothing pending" in text
        assert d.get("/", method="HEAD")[0] == 200

        assert not (channel / "noarch" / "repodata_shards.msgpack.zst").exists()
        code, body = d.get("/status/noarch.json?q=good")
        view = json.loads(body)
        assert code == 200 and view["source"] == "repodata.json" and view["names_matched"] == 3, view
        assert [f["filename"] for f in view["files"]] == [f"good{i}-1.0-0.conda" for i in range(3)]
        assert [(s["path"], s["reason"]) for s in view["skipped"]] == []  # not matched by the query
        view = json.loads(d.get("/status/linux-64.json?q=")[1])
        assert [(f["name"], f["filename"]) for f in view["files"]] == [("tool", "tool-1.0-0.tar.bz2")] and view["files"][0]["size"] > 0


@pytest.mark.timeout(300)
def test_activity_charts_and_package_view(channel: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A burst of uploads and one refused archive: the feed names them, the charts have
    their data points, the package view lists versions with indexed_timestamp; the page
    renders under its Content-Security-Policy (no script, nothing loaded from elsewhere)."""
    browser = chromium()
    (channel / "linux-64").mkdir()
    make_package(channel / "noarch" / "seed-1.0-0.conda", index_json("seed", "1.0", "0"))
    with DaemonProcess(channel, debounce=0.2, settle=0.3) as d:
        landed: list[tuple[str, str]] = []
        for wave in range(4):  # a burst in waves: several publishes, so the charts have lines
            for i in range(3):
                subdir = ("noarch", "linux-64")[i % 2]
                landed.append((subdir, land(channel, subdir, f"burst{i}", f"1.{wave}")))
            wait_for(lambda: all(fn in all_records(repodata(channel, s)) for s, fn in landed), 60, what=f"wave {wave} published")
        make_text(channel / "noarch" / "refused-2.0-0.conda")
        wait_for(lambda: any(s["path"] == "refused-2.0-0.conda" for e in status(d)["activity"]["feed"] for s in e["skipped"]), 60,
                 what="the refusal in the feed")  # fmt: skip

        doc = status(d)
        act = doc["activity"]
        feed = act["feed"]
        named = {fn for e in feed for files in e["files"].values() for fn in files}
        assert {fn for _, fn in landed} <= named, feed
        refusal = next(e for e in feed if e["skipped"])
        assert refusal["subdir"] == "noarch" and refusal["skipped"][0]["reason"] == "not-a-zip" and refusal["member"] is None
        assert [e["at_epoch"] for e in feed] == sorted((e["at_epoch"] for e in feed), reverse=True)  # newest first
        assert all(e["duration_seconds"] > 0 for e in feed)
        assert len(act["latency"]["noarch"]) >= 4 and len(act["latency"]["linux-64"]) >= 4  # one point per wave
        assert act["packages"]["noarch"][-1][1] == 1 + 2 * 4 and act["packages"]["linux-64"][-1][1] == 4
        assert act["refusals"] == {"not-a-zip": 1}
        assert doc["intake"]["events"]["closed"] + doc["intake"]["events"]["moved"] >= 12
        assert "bucket" not in doc["intake"]

        code, headers, body = fetch(d.url("/"))
        html = body.decode()
        assert code == 200 and headers["Content-Security-Policy"].startswith(CSP), headers
        assert "<script" not in html and "src=" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert html.count("<svg") == 3
        points = re.findall(r'<circle class="point"', html)
        assert len(points) >= 2 * 4 + 2 * 4, len(points)  # latency and packages, both subdirs, every wave
        assert re.search(r'<rect class="bar"[^>]*><title>not-a-zip: 1 archives</title>', html), html

        dom = dump_dom(browser, d.url("/"), tmp_path)  # what Chromium shows
        text = text_of(dom)
        assert dom.count("<svg") == 3 and dom.count('class="point"') == len(points)
        for _, fn in landed:
            assert fn in text, fn
        assert re.search(r"noarch refused 0 0 0 1 [0-9.]+ s refused refused-2\.0-0\.conda ?: not-a-zip \.conda is not a valid zip", text), text
        assert "Event to publish latency per subdir" in text and "Packages published per subdir" in text
        assert "Archives refused by reason" in text
        screenshot(browser, d.url("/"), tmp_path, "status-burst", request)

        # the package view, read from the published shards: every version of a name, its
        # indexed_timestamp and size as repodata.json has them; the archives left out
        code, headers, body = fetch(d.url("/status/noarch.json?q=burst0"))
        view = json.loads(body)
        assert code == 200 and view["matched"] == 4 and view["packages"] == 9, view
        assert view["source"] == "shards" and view["names_matched"] == view["names_read"] == 1 and view["unreadable"] == []
        assert [f["version"] for f in view["files"]] == ["1.0", "1.1", "1.2", "1.3"]
        published = all_records(repodata(channel, "noarch"))
        assert {f["filename"]: (f["size"], f["indexed_timestamp"]) for f in view["files"]} == {
            fn: (r["size"], r["indexed_timestamp"]) for fn, r in published.items() if r["name"] == "burst0"
        }
        assert all(f["size"] > 0 and re.match(r"\d{4}-\d\d-\d\dT", f["indexed_at"] or "") for f in view["files"]), view
        view = json.loads(fetch(d.url("/status/noarch.json?q=REFUSED"))[2])
        assert view["files"] == [] and view["names_matched"] == 0
        assert [(s["path"], s["reason"]) for s in view["skipped"]] == [("refused-2.0-0.conda", "not-a-zip")]
        code, headers, body = fetch(d.url("/status/noarch?q="))
        assert code == 200 and headers["Content-Security-Policy"].startswith(CSP)
        assert "refused-2.0-0.conda" in body.decode() and "burst2-1.3-0.conda" in body.decode()
        text = text_of(dump_dom(browser, d.url("/status/noarch?q=burst"), tmp_path))
        assert re.search(r"Published files matching burst ?: 8 ", text) and "refused-2.0-0.conda" not in text, text
        assert "Read for this request from the published shard index and 2 shards (one per package name)" in text, text
        assert "seed-1.0-0.conda" not in text and "burst1" not in text  # burst1 landed in linux-64 only
        screenshot(browser, d.url("/status/noarch"), tmp_path, "status-refused", request, size="1280,760")

        # bad input: one line each, and what came from outside is escaped
        code, _, body = fetch(d.url("/status/no-such-subdir"))
        assert code == 404 and body.decode().count("\n") == 1 and "no such subdir" in body.decode()
        code, _, body = fetch(d.url("/status/noarch?q=" + "x" * 300))
        assert code == 400 and body == b"query too long: at most 200 characters\n"
        code, _, body = fetch(d.url("/status/noarch?q=%ff"))
        assert code == 400 and body.decode().count("\n") == 1
        code, _, body = fetch(d.url("/status/noarch?q=%3Cscript%3Ealert(1)%3C/script%3E"))
        assert code == 200 and b"<script" not in body and b"&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "Traceback" not in d.log_text()


def _pg_daemon(channel: Path, url: str) -> DaemonProcess:
    return DaemonProcess(channel, "--db", "postgresql", "--db-url", url, debounce=0.1, settle=0.2)


@pytest.mark.timeout(300)
def test_pair_page_after_a_takeover(tmp_path: Path, pg_server, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Two daemons on one channel and one PostgreSQL: the standby's feed shows the leader's
    publishes (read from the shared log); after the leader is killed, the new leader's page
    shows its role, the lease holder, the takeover and the old leader's entries."""
    browser = chromium()
    monkeypatch.setenv("CONDA_INDEXD_LEASE", "3")
    channel = tmp_path / "channel"
    (channel / "noarch").mkdir(parents=True)
    url = pg_server.createdb("statuspair")
    a, b = _pg_daemon(channel, url), _pg_daemon(channel, url)
    try:
        a.start(wait_ready=False)
        b.start(wait_ready=False)
        for d in (a, b):
            wait_for(lambda d=d: d.get("/readyz")[0] == 200, 60, what="both ready")
        leader = wait_for(lambda: next((d for d in (a, b) if status(d)["role"]["role"] == "leader"), None), 60, interval=0.2, what="a leader")
        standby = b if leader is a else a
        first = [land(channel, "noarch", "paired", f"1.{i}") for i in range(3)]
        wait_for(lambda: set(first) <= all_records(repodata(channel, "noarch")).keys(), 60, what="the leader published")
        old = status(leader)["role"]["holder"]

        def standby_saw() -> bool:
            feed = status(standby)["activity"]["feed"]
            return set(first) <= {fn for e in feed if e["member"] == old for fn in e["files"].get("added", [])}

        wait_for(standby_saw, 60, interval=0.2, what="the standby's feed showing the leader's publishes")
        role = status(standby)["role"]
        assert role["role"] == "standby" and role["lease"]["holder"] == old and role["lease"]["token"] >= 1

        leader.signal(signal.SIGKILL)
        leader.proc.wait(30)
        wait_for(lambda: status(standby)["role"]["role"] == "leader", 60, interval=0.2, what="the takeover")
        later = land(channel, "noarch", "paired", "2.0")
        wait_for(lambda: later in all_records(repodata(channel, "noarch")), 60, what="the new leader published")
        wait_for(lambda: any(later in e["files"].get("added", []) for e in status(standby)["activity"]["feed"]), 30, what="its own entry")
        doc = status(standby)
        role = doc["role"]
        me = role["holder"]
        assert role["role"] == "leader" and role["lease"]["holder"] == me and role["takeovers"] == 1 and role["took_over_at"]
        assert role["lease"]["acquired_at"] and role["lease"]["token"] >= 2
        members = {e["member"] for e in doc["activity"]["feed"]}
        assert {old, me} <= members, members

        html = fetch(standby.url("/"))[2].decode()
        text = text_of(dump_dom(browser, standby.url("/"), tmp_path))
        assert "Active/standby pair" in html
        assert f"role leader, fencing token {role['token']}" in text, text
        assert f"lease holder {me} (this daemon)" in text, text
        assert f"last takeover (lease acquired) {role['lease']['acquired_at']}" in text, text
        assert re.search(r"takeovers by this daemon 1, the last at \d{4}-", text), text
        assert f"noarch {old} publish" in text and f"noarch {me} publish" in text, text
        screenshot(browser, standby.url("/"), tmp_path, "status-pair", request)
    finally:
        for d in (a, b):
            d.stop()
    assert "Traceback" not in standby.log_text()
