"""The status page's parts, without a daemon: the SVG charts (daemon/http/svg.py), the
renderer (daemon/http/statuspage.py: escaping, the feed, the pair, the package view), the
activity feed's bounds (daemon/activity.py), and the package view's search
(daemon/packageview.py) over channels indexed for real, read through their store."""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conda_indexd.backends import index_subdir, open_backends
from conda_indexd.config import IndexConfig
from conda_indexd.daemon import packageview
from conda_indexd.daemon.activity import Activity, Entry, entry_of
from conda_indexd.daemon.http import statuspage, svg
from conda_indexd.daemon.http.statuspage import SubdirStatus
from conda_indexd.daemon.packageview import MAX_NAMES, Row
from conda_indexd.formats.shards import decode
from conda_indexd.names import REPODATA, SHARD_INDEX, SHARDS_DIR
from conda_indexd.stores.base import ChannelStore
from pkgfactory import index_json, make_package

HOSTILE = '<script>alert("x")</script>&'
NOW = 1_800_000_000.0


def parse(svg_text: str) -> ET.Element:
    """Well-formed XML (so a browser draws it), the SVG namespace."""
    root = ET.fromstring(svg_text)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


def circles(root: ET.Element) -> list[ET.Element]:
    return root.findall(".//{http://www.w3.org/2000/svg}circle")


def test_line_chart_draws_every_point_of_every_series() -> None:
    series = {"noarch": [[NOW - 300, 0.5], [NOW - 200, 1.5], [NOW - 100, 0.25]], "linux-64": [[NOW - 50, 3.0]]}
    root = parse(svg.line_chart(series, title="latency", unit="seconds", start=NOW - 3600, end=NOW))
    assert len(circles(root)) == 4
    assert len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) == 1  # a single point draws no line
    xs = [float(c.get("cx", "nan")) for c in circles(root)]
    ys = [float(c.get("cy", "nan")) for c in circles(root)]
    width, height = float(root.get("width", "0")), float(root.get("height", "0"))
    assert all(0 <= x <= width for x in xs) and all(0 <= y <= height for y in ys)
    # series in sorted order (linux-64, then noarch): later points further right, the highest value highest up
    assert xs[1] < xs[2] < xs[3] < xs[0] and ys[0] < ys[2] < ys[1] < ys[3]
    titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert "noarch 07:56:40 UTC: 1.5 seconds" in titles, titles


def test_line_chart_leaves_out_points_outside_the_window_and_not_finite() -> None:
    series = {"noarch": [[NOW - 7200, 1.0], [NOW - 10, float("nan")], [NOW - 10, float("inf")], [NOW - 5, 2.0], [NOW + 60, 1.0]]}
    root = parse(svg.line_chart(series, title="t", unit="u", start=NOW - 3600, end=NOW))
    assert len(circles(root)) == 1


def test_line_chart_without_data_and_with_equal_values() -> None:
    empty = svg.line_chart({}, title="t", unit="u", start=NOW - 3600, end=NOW)
    assert "no data in this window" in empty and not circles(parse(empty))
    zeros = parse(svg.line_chart({"a": [[NOW - 2, 0.0], [NOW - 1, 0.0]]}, title="t", unit="u", start=NOW - 3600, end=NOW))
    assert len(circles(zeros)) == 2  # an axis of 0..1, no division by zero
    same_time = parse(svg.line_chart({"a": [[NOW, 1.0]]}, title="t", unit="u", start=NOW, end=NOW))
    assert len(circles(same_time)) == 1


def test_a_burst_is_spread_over_the_axis() -> None:
    """Points seconds apart in an hour's window: the axis starts near the first point."""
    start, end = svg.time_range({"a": [[NOW - 5, 1.0], [NOW - 1, 2.0]]}, NOW - 3600, NOW)
    assert end == NOW and NOW - 3600 < start <= NOW - 60
    assert svg.time_range({"a": [[NOW - 3000, 1.0]]}, NOW - 3600, NOW)[0] < NOW - 3000
    assert svg.time_range({}, NOW - 3600, NOW) == (NOW - 3600, NOW)  # no data: the whole window


def test_bar_chart_and_escaping() -> None:
    text = svg.bar_chart([("not-a-zip", 3), (HOSTILE, 1)], title=HOSTILE, unit="archives")
    root = parse(text)
    bars = root.findall(".//{http://www.w3.org/2000/svg}rect[@class='bar']")
    assert len(bars) == 2 and float(bars[0].get("width", "0")) > float(bars[1].get("width", "0"))
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert parse(svg.line_chart({HOSTILE: [[NOW, 1.0]]}, title=HOSTILE, unit=HOSTILE, start=NOW - 10, end=NOW)) is not None
    assert "none" in svg.bar_chart([], title="t", unit="u")


def test_nice_max() -> None:
    assert [svg.nice_max(v) for v in (0, -1, 0.3, 1, 1.2, 3, 7, 12, 260)] == [1, 1, 0.5, 1, 2, 5, 10, 20, 500]


def _doc(**kw: object) -> dict:
    activity = Activity(clock=lambda: NOW)
    activity.record(Entry(NOW - 30, "noarch", "publish", added=1, files={"added": [f"{HOSTILE}-1.0-0.conda"]}, duration=0.1, latency=0.4, packages=5))
    activity.record(Entry(NOW - 20, "noarch", "refused", skipped=[{"path": f"{HOSTILE}.conda", "reason": HOSTILE, "message": HOSTILE}], duration=0.1))
    status = SubdirStatus("noarch", packages=5, skipped=[{"path": f"{HOSTILE}.conda", "reason": HOSTILE, "message": HOSTILE}])
    return statuspage.document(HOSTILE, True, {"noarch": status}, [], now=NOW, activity=activity.snapshot(), **kw)  # type: ignore[arg-type]


def test_page_escapes_everything_from_outside() -> None:
    html = statuspage.as_html(_doc()).decode()
    assert "<script" not in html and "&lt;script&gt;" in html
    assert html.count("<svg") == 3 and html.count('class="point"') == 2  # latency and packages of the one publish
    json.loads(statuspage.as_json(_doc()))


def test_pair_section() -> None:
    role = {"role": "standby", "token": None, "holder": "b:2:ff", "lease_seconds": 10.0, "database": "postgresql://db/x", "error": None,
            "previous_publish": None, "lease": {"holder": f"a:1:{HOSTILE}", "token": 7, "acquired_at": "2026-12-07T20:00:00+00:00"},
            "takeovers": 0, "took_over_at": None}  # fmt: skip
    html = statuspage.as_html(_doc(role=role)).decode()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    assert "lease holder a:1:&lt;script&gt;" in text and "lease token 7" in text and "2026-12-07T20:00:00+00:00" in text
    assert "<th>by</th>" in html  # the feed names the member in a pair


def test_package_view_escapes_the_query() -> None:
    rows = [Row("a-1.0-0.conda", "a", "1.0", "0", 1234, 1_800_000_000_000, None)]
    view = statuspage.subdir_view(HOSTILE, "noarch", HOSTILE, rows, 1, 3, [{"path": "x.conda", "reason": "r", "message": "m"}], now=NOW)
    html = statuspage.subdir_html(view).decode()
    assert "<script" not in html and 'value="&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;"' in html
    assert "1,234" in html and "2027-01-15T08:00:00Z" in html
    assert view["skipped"] == []  # left-out files are filtered by the query too


def test_feed_is_bounded_and_samples_keep_an_hour() -> None:
    clock = [NOW]
    activity = Activity(feed_size=5, clock=lambda: clock[0])
    for i in range(12):
        entry = entry_of("noarch", added=[f"p{i}.conda"], removed=[], replaced=[], published=True, refused=[], duration=0.1,
                         latency=0.5, packages=i, member=None, at=NOW - 7200 + i * 600)  # fmt: skip
        assert entry is not None
        activity.record(entry)
    snap = activity.snapshot()
    assert [e["files"]["added"] for e in snap["feed"]] == [["p11.conda"], ["p10.conda"], ["p9.conda"], ["p8.conda"], ["p7.conda"]]
    assert [p[1] for p in snap["packages"]["noarch"]] == [6, 7, 8, 9, 10, 11]  # the last hour's samples
    assert entry_of("noarch", added=[], removed=[], replaced=[], published=False, refused=[], duration=0.1, latency=None,
                    packages=0, member=None) is None  # fmt: skip


def test_merge_takes_a_shared_entry_once() -> None:
    activity = Activity(clock=lambda: NOW)
    entry = Entry(NOW - 5, "noarch", "publish", added=2, files={"added": ["a.conda", "b.conda"]}, packages=2, member="a:1:x")
    shared = Entry.from_dict(entry.as_dict(), "a:1:x")
    assert shared == entry
    assert activity.merge([shared, shared]) == 1 and len(activity.snapshot()["feed"]) == 1
    assert Entry.from_dict({"subdir": "noarch"}) is None and Entry.from_dict({"at_epoch": "x", "subdir": "s", "kind": "k"}) is None


def _published(tmp_path: Path, names: list[str], versions: int = 2, **options: object) -> tuple[IndexConfig, ChannelStore, dict]:
    """A channel indexed for real (noarch: every name in `versions` versions, .conda and
    .tar.bz2 alternating), its output store and the published repodata.json."""
    channel = tmp_path / "channel"
    for n, name in enumerate(names):
        for v in range(versions):
            ext = "conda" if (n + v) % 2 else "tar.bz2"
            make_package(channel / "noarch" / f"{name}-1.{v}-0.{ext}", index_json(name, f"1.{v}", "0"))
    config = IndexConfig(channel, **options)  # type: ignore[arg-type]
    index_subdir(config, "noarch")
    return config, open_backends(config).outputs, json.loads((channel / "noarch" / REPODATA).read_bytes())


def _expected(repodata: dict, names: set[str]) -> list[tuple]:
    """(name, version, build, filename, size, indexed_timestamp) of the published records of `names`."""
    records = {**repodata["packages"], **repodata["packages.conda"]}
    for section, suffix in (("conda", ".conda"), ("tar.bz2", ".tar.bz2")):
        records.update({stem + suffix: r for stem, r in repodata.get("v3", {}).get(section, {}).items()})
    return sorted((r["name"], r["version"], r["build"], fn, r["size"], r["indexed_timestamp"]) for fn, r in records.items() if r["name"] in names)


def _got(found: packageview.Found) -> list[tuple]:
    return [(r.name, r.version, r.build, r.filename, r.size, r.indexed_timestamp) for r in found.rows]


def test_package_view_reads_the_published_shards(tmp_path: Path) -> None:
    """A search reads the shard index and the shards of the matching names: every file of
    those names (both sections), case-insensitive, with size and indexed_timestamp as
    repodata.json has them; a damaged shard is named, the other names still answer."""
    _, store, repodata = _published(tmp_path, ["alpha", "beta", "alphabet", "gamma"])
    found = packageview.search(store, "noarch", " ALPHA ")
    assert found.source == packageview.SHARDS and found.problem is None and found.unreadable == []
    assert (found.names, found.names_read, found.matched) == (2, 2, 4)
    assert _got(found) == _expected(repodata, {"alpha", "alphabet"})
    assert all(r.size and r.indexed_timestamp for r in found.rows)
    assert {r.filename.rsplit(".", 1)[-1] for r in found.rows} == {"conda", "bz2"}
    assert packageview.search(store, "noarch", "delta").rows == [] and packageview.search(store, "noarch", "delta").names == 0

    index = decode(store.read(f"noarch/{SHARD_INDEX}") or b"")
    store.write(f"noarch/{SHARDS_DIR}/{index['shards']['beta'].hex()}.msgpack.zst", b"not zstd")
    found = packageview.search(store, "noarch", "")
    assert found.unreadable == ["beta"] and {r.name for r in found.rows} == {"alpha", "alphabet", "gamma"}


def test_package_view_reads_v3_records(tmp_path: Path) -> None:
    """With --repodata-next every record is in the shards' `v3` map, keyed by the file name
    without its extension: the view gives the file names back."""
    _, store, repodata = _published(tmp_path, ["alpha", "beta"], repodata_next=True)
    assert not repodata["packages"] and not repodata["packages.conda"] and repodata["v3"]["conda"]
    found = packageview.search(store, "noarch", "alpha")
    assert found.source == packageview.SHARDS and len(found.rows) == 2
    assert _got(found) == _expected(repodata, {"alpha"})


def test_package_view_reads_at_most_max_names(tmp_path: Path) -> None:
    """More matching names than MAX_NAMES: the first MAX_NAMES by name are read, and the
    view says how many matched; a search out of time reads no further shard."""
    names = [f"pkg{i:02d}" for i in range(MAX_NAMES + 3)]
    _, store, repodata = _published(tmp_path, names, versions=1)
    found = packageview.search(store, "noarch", "")
    assert (found.names, found.names_read, found.matched) == (MAX_NAMES + 3, MAX_NAMES, MAX_NAMES)
    assert _got(found) == _expected(repodata, set(names[:MAX_NAMES]))
    html = statuspage.subdir_html(statuspage.subdir_view("c", "noarch", "", found.rows, found.matched, len(names), [], now=NOW,
                                                         names=found.names, names_read=found.names_read, source=found.source)).decode()  # fmt: skip
    assert f"{MAX_NAMES + 3} package names match; the files of the first {MAX_NAMES} (by name) are read" in html
    assert "pkg49-1.0-0" in html and "pkg50-1.0-0" not in html
    ticks = itertools.count()  # a clock that moves one second per look: no shard read starts after 3
    slow = packageview.search(store, "noarch", "", max_seconds=3, clock=lambda: next(ticks))
    assert (slow.names, slow.names_read) == (MAX_NAMES + 3, 3) and {r.name for r in slow.rows} == set(names[:3])
    assert slow.problem == "the store was slow: the search stopped after 3 package names"


def test_package_view_without_shards_reads_repodata_json(tmp_path: Path) -> None:
    """No shards written: repodata.json is read (while it is small enough); the same rows.
    A shard index that is gone falls back to it too; a larger repodata.json is not read."""
    _, store, repodata = _published(tmp_path, ["alpha", "beta", "alphabet"], write_shards=False)
    assert store.read(f"noarch/{SHARD_INDEX}") is None
    found = packageview.search(store, "noarch", "alpha", use_shards=False)
    assert found.source == packageview.REPODATA_JSON and (found.names, found.names_read, found.matched) == (2, 2, 4)
    assert _got(found) == _expected(repodata, {"alpha", "alphabet"})
    assert _got(packageview.search(store, "noarch", "alpha")) == _got(found)  # no shard index: the same
    big = packageview.search(store, "noarch", "alpha", use_shards=False, max_repodata=100)
    assert big.rows == [] and big.source is None and big.problem and "write-shards" in big.problem
    assert packageview.search(store, "linux-64", "alpha").problem == "nothing published in this subdir yet"


def test_an_entry_names_twenty_refusals_and_counts_all() -> None:
    refused = [(f"bad{i:03d}.conda", "not-a-zip" if i % 2 else "no-index-json", "m") for i in range(50)]
    entry = entry_of("noarch", added=[], removed=[], replaced=[], published=False, refused=refused, duration=0.1, latency=None,
                     packages=0, member=None)  # fmt: skip
    assert entry is not None and entry.kind == "refused" and len(entry.skipped) == 20
    assert entry.as_dict()["refused"] == 50 and entry.reasons == {"no-index-json": 25, "not-a-zip": 25}
    activity = Activity(clock=lambda: NOW)
    activity.record(entry)
    assert activity.snapshot()["refusals"] == {"no-index-json": 25, "not-a-zip": 25}
    html = statuspage.as_html(statuspage.document("c", True, {}, [], now=NOW, activity=activity.snapshot())).decode()
    assert "and 30 more refused" in html


def test_a_store_that_hangs_does_not_hold_the_listener(tmp_path: Path) -> None:
    """The shard index replaced by a FIFO nobody writes: reading it blocks for real (as a
    bucket behind a dead link does). The listener's call gives up after its wait, a second
    request meanwhile is answered at once, and once the read returns the view answers again."""
    _, store, _ = _published(tmp_path, ["alpha", "beta"])
    index = tmp_path / "channel" / "noarch" / SHARD_INDEX
    index.unlink()
    os.mkfifo(index)
    started = time.monotonic()
    with pytest.raises(packageview.ViewBusy, match="did not answer within 0.5 s"):
        packageview.search_off_listener(store, "noarch", "alpha", wait=0.5)
    assert time.monotonic() - started < 5
    with pytest.raises(packageview.ViewBusy, match="still reading"):
        packageview.search_off_listener(store, "noarch", "alpha", wait=0.5)
    # the writer end opens and closes: the stuck read sees an empty file and ends
    writer = threading.Thread(target=lambda: os.close(os.open(index, os.O_WRONLY)), daemon=True)
    writer.start()
    writer.join(10)
    index.unlink()  # gone: the next search falls back to repodata.json
    deadline = time.monotonic() + 30
    while True:
        try:
            found = packageview.search_off_listener(store, "noarch", "alpha", wait=5)
            break
        except packageview.ViewBusy:
            assert time.monotonic() < deadline, "the lane never came free"
            time.sleep(0.1)
    assert found.source == packageview.REPODATA_JSON and {r.name for r in found.rows} == {"alpha"}
