"""channeldata.json, rss.xml and index.html (§6.3-6.5), on fixtures; optionally against
conda-index 0.13 on ../shared/corpus/real (differences: docs/outputs.md)."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import run_index
from daemonproc import DaemonProcess, wait_for
from pkgfactory import index_json, make_package
from test_corpus import conda_index_python, copy_real, run_conda_index  # noqa: F401

pytest.importorskip("rattler", reason="--channeldata needs py-rattler (the outputs extra)")


def pkg(channel: Path, subdir: str, name: str, version: str, ts: int, **kw) -> Path:
    idx = index_json(name, version, "0", subdir, timestamp=ts)
    return make_package(channel / subdir / f"{name}-{version}-0.conda", idx, **kw)


def test_channeldata_rss_and_html(channel: Path) -> None:
    about = {"summary": "Tool\nfor things ", "home": "https://tool.example", "license": "MIT",
             "description": "Line one\nline two"}  # fmt: skip
    pkg(channel, "noarch", "tool", "1.9", 1_700_000_000_000, about=about, run_exports={"weak": ["tool >=1.9"]})
    pkg(channel, "linux-64", "tool", "1.10", 1_600_000_000_000, about={**about, "summary": "Newer tool"},
        run_exports={"weak": ["tool >=1.10"]}, recipe_yaml="source:\n  url: https://src.example/tool-1.10.tgz\n")  # fmt: skip
    pkg(channel, "linux-64", "gone", "1.0", 1_650_000_000_000)
    run_index(channel, "--channeldata")
    data = json.loads((channel / "channeldata.json").read_text())
    assert (channel / "channeldata.json").read_text().endswith("}\n")
    assert data["channeldata_version"] == 1 and data["subdirs"] == ["linux-64", "noarch"]
    tool = data["packages"]["tool"]
    assert tool["version"] == "1.10"  # conda's order: 1.10 > 1.9
    assert tool["summary"] == "Newer tool" and tool["description"] == "Line one line two"
    assert tool["source_url"] == "https://src.example/tool-1.10.tgz"
    assert tool["subdirs"] == ["linux-64", "noarch"]
    assert tool["run_exports"] == {"1.9": {"weak": ["tool >=1.9"]}, "1.10": {"weak": ["tool >=1.10"]}}
    assert tool["timestamp"] == 1_700_000_000  # the newest, in seconds (conda-index: the last processed)
    assert not any(v is None for v in tool.values())

    rss = ET.fromstring((channel / "rss.xml").read_bytes())
    titles = [i.findtext("title") for i in rss.iter("item")]
    assert titles == ["tool 1.10 [linux-64, noarch]", "gone 1.0 [linux-64]"]  # newest first
    root_html = (channel / "index.html").read_text()
    assert "tool" in root_html and "1.10" in root_html and "https://tool.example" in root_html
    sub_html = (channel / "linux-64" / "index.html").read_text()
    assert "repodata.json" in sub_html and "tool-1.10-0.conda" in sub_html and "gone-1.0-0.conda" in sub_html

    again = run_index(channel, "--channeldata")
    assert not again.events("channel files written")  # same bytes: nothing rewritten

    # a name whose packages are all gone leaves channeldata (conda-index keeps it forever)
    (channel / "linux-64" / "gone-1.0-0.conda").unlink()
    run_index(channel, "--channeldata", "--no-rss")
    data = json.loads((channel / "channeldata.json").read_text())
    assert "gone" not in data["packages"]
    assert "gone-1.0-0.conda" not in (channel / "linux-64" / "index.html").read_text()


def test_daemon_keeps_channeldata_current(channel: Path) -> None:
    pkg(channel, "noarch", "first", "1.0", 1_700_000_000_000)
    with DaemonProcess(channel, "--channeldata"):
        wait_for(lambda: "first" in json.loads((channel / "channeldata.json").read_text())["packages"], 10)
        pkg(channel, "noarch", "second", "2.0", 1_700_000_100_000)
        wait_for(lambda: "second" in json.loads((channel / "channeldata.json").read_text())["packages"], 10)


def test_channeldata_and_run_exports_match_conda_index(tmp_path: Path, conda_index_python: str) -> None:  # noqa: F811
    """Optional: on corpus/real, channeldata.json equals conda-index 0.13's except each
    name's `timestamp` (ours is the newest), and run_exports.json is byte-identical."""
    ours, theirs = copy_real(tmp_path / "ours"), tmp_path / "theirs"
    shutil.copytree(ours, theirs)
    run_index(ours, "--channeldata", "--run-exports")
    run_conda_index(conda_index_python, theirs, "--channeldata", "--run-exports")
    a = json.loads((ours / "channeldata.json").read_text())
    b = json.loads((theirs / "channeldata.json").read_text())
    assert a["subdirs"] == b["subdirs"] and sorted(a["packages"]) == sorted(b["packages"])
    strip = lambda p: {k: v for k, v in p.items() if k != "timestamp"}  # noqa: E731
    assert {n: strip(p) for n, p in a["packages"].items()} == {n: strip(p) for n, p in b["packages"].items()}
    assert all(a["packages"][n]["timestamp"] >= b["packages"][n]["timestamp"] for n in a["packages"])
    for subdir in a["subdirs"]:
        assert (ours / subdir / "run_exports.json").read_bytes() == (theirs / subdir / "run_exports.json").read_bytes()
