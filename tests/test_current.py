"""current_repodata.json (§4): newest versions, pins, missing dependencies, features,
.conda preferred with legacy_bz2_md5."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import run_cli, run_index
from pkgfactory import index_json, make_package

pytest.importorskip("rattler", reason="current_repodata needs py-rattler (the outputs extra)")


def pkg(folder: Path, name: str, version: str, build: str = "0", ext: str = ".conda", **kw) -> Path:
    return make_package(folder / f"{name}-{version}-{build}{ext}", index_json(name, version, build, folder.name, **kw))


def current(channel: Path, subdir: str = "linux-64") -> dict:
    return json.loads((channel / subdir / "current_repodata.json").read_text())


def names(doc: dict) -> list[str]:
    return sorted([*doc["packages"], *doc["packages.conda"]])


def test_current_repodata_rules(channel: Path, tmp_path: Path) -> None:
    lin = channel / "linux-64"
    for v in ("1.0", "1.9", "1.10"):
        pkg(lin, "foo", v)
    twin = pkg(lin, "foo", "1.10", ext=".tar.bz2")
    pkg(lin, "foo", "1.10", build="1")  # a second build of the newest version
    pkg(lin, "bar", "2.0", depends=["foo <1.5"])  # nothing current satisfies it
    pkg(lin, "bar", "1.0")
    for v in ("1.2.0", "1.2.5", "1.3.0"):
        pkg(lin, "baz", v)
    pkg(lin, "qux", "2.0", track_features="mkl")
    pkg(lin, "qux", "1.5")
    pkg(lin, "qux", "1.0")
    pkg(lin, "old", "1.0", ext=".tar.bz2")
    pins = tmp_path / "pins.yaml"
    pins.write_text('baz:\n  - "1.2"\n')
    run_index(channel, "--current-repodata", "-m", pins)
    doc = current(channel)
    assert names(doc) == [
        "bar-2.0-0.conda",
        "baz-1.2.5-0.conda", "baz-1.3.0-0.conda",  # newest, and newest matching the pin 1.2
        "foo-1.0-0.conda",  # brought in by bar's `foo <1.5`
        "foo-1.10-0.conda", "foo-1.10-1.conda",  # 1.10 > 1.9 (conda's order), every build
        "old-1.0-0.tar.bz2",  # no .conda twin: kept as .tar.bz2
        "qux-1.5-0.conda", "qux-2.0-0.conda",  # featured newest + newest plain
    ]  # fmt: skip
    assert doc["packages.conda"]["foo-1.10-0.conda"]["legacy_bz2_md5"] == hashlib.md5(twin.read_bytes()).hexdigest()
    assert doc["packages.conda"]["foo-1.10-1.conda"]["legacy_bz2_md5"] is None
    full = json.loads((lin / "repodata.json").read_text())
    assert {k: v for k, v in doc.items() if not k.startswith("packages")} == {k: v for k, v in full.items() if not k.startswith("packages")}
    rec = dict(doc["packages.conda"]["bar-2.0-0.conda"])
    assert rec == full["packages.conda"]["bar-2.0-0.conda"] | {"legacy_bz2_md5": None}
    assert (lin / "current_repodata.json.zst").exists()
    # serialised like repodata.json (compact, sorted keys)
    text = (lin / "current_repodata.json").read_text()
    assert text == json.dumps(doc, sort_keys=True, separators=(",", ":"))

    # patches reach the subset too; turning the option off removes the stale file
    gen = tmp_path / "gen.py"
    gen.write_text("def _patch_repodata(r, s):\n    return {'packages.conda': {'bar-2.0-0.conda': {'depends': []}}}\n")
    run_index(channel, "--current-repodata", "-m", pins, "--patch-generator", gen)
    assert "foo-1.0-0.conda" not in names(current(channel))
    run_index(channel, "--patch-generator", gen)
    assert not (lin / "current_repodata.json").exists() and not (lin / "current_repodata.json.zst").exists()


def test_bad_pins_file_is_a_usage_error(channel: Path, tmp_path: Path) -> None:
    bad = tmp_path / "pins.yaml"
    bad.write_text("- just\n- a list\n")
    result = run_cli("index", channel, "--current-repodata", "-m", bad)
    assert result.rc == 2 and result.stderr.count("\n") == 1 and "current-index-versions-file" in result.stderr
