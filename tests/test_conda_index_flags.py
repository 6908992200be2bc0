"""Every `python -m conda_index` 0.13 flag on `conda-indexd index` (and `watch`): it works
with the same meaning, or it is refused with exit 2 and one line saying what instead."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import peers
from conftest import run_cli, run_index
from pkgfactory import index_json, make_package

Check = Callable[[Path, Path], bool]  # (channel, tmp) -> the flag did what it says


def _rd(channel: Path, subdir: str = "noarch", name: str = "repodata.json") -> bytes:
    return (channel / subdir / name).read_bytes()


def _setup(tmp: Path) -> Path:
    channel = tmp / "channel"
    make_package(channel / "noarch" / "a-1.0-0.conda", index_json("a", "1.0", "0", run_exports={}), run_exports={"weak": ["a"]})
    make_package(channel / "noarch" / "b-1.0-0.tar.bz2", index_json("b", "1.0", "0", depends=["a"]))
    make_package(channel / "linux-64" / "c-1.0-0.conda", index_json("c", "1.0", "0", "linux-64"))
    (tmp / "gen.py").write_text(
        "def _patch_repodata(repodata, subdir):\n    return {'packages': {'b-1.0-0.tar.bz2': {'depends': ['a >=1']}}} if subdir == 'noarch' else {}\n"
    )
    (tmp / "pins.yaml").write_text("a: ['1.0']\n")
    return channel


# (flags, check): every conda-index 0.13 flag that works, with what it means
WORKS: list[tuple[list[str], Check]] = [
    (["--output", "{tmp}/out"], lambda c, t: (t / "out/noarch/repodata.json").is_file() and not (c / "noarch/repodata.json").exists()),
    (["--subdir", "linux-64"], lambda c, t: (c / "linux-64/repodata.json").is_file() and not (c / "noarch/repodata.json").exists()),
    (["-n", "mychan", "--channeldata"], lambda c, t: "mychan" in (c / "index.html").read_text()),
    (["--channel-name", "mychan", "--channeldata"], lambda c, t: "mychan" in (c / "index.html").read_text()),
    (["--patch-generator", "{tmp}/gen.py"], lambda c, t: json.loads(_rd(c))["packages"]["b-1.0-0.tar.bz2"]["depends"] == ["a >=1"]),
    (["--channeldata"], lambda c, t: (c / "channeldata.json").is_file() and (c / "rss.xml").is_file()),
    (["--no-channeldata"], lambda c, t: not (c / "channeldata.json").exists()),
    (["--channeldata", "--rss"], lambda c, t: (c / "rss.xml").is_file()),
    (["--channeldata", "--no-rss"], lambda c, t: (c / "channeldata.json").is_file() and not (c / "rss.xml").exists()),
    (["--bz2"], lambda c, t: (c / "noarch/repodata.json.bz2").is_file()),
    (["--no-bz2"], lambda c, t: not (c / "noarch/repodata.json.bz2").exists()),
    (["--zst"], lambda c, t: (c / "noarch/repodata.json.zst").is_file()),
    (["--no-zst"], lambda c, t: not (c / "noarch/repodata.json.zst").exists()),
    (["--run-exports"], lambda c, t: "a-1.0-0.conda" in json.loads(_rd(c, name="run_exports.json"))["packages.conda"]),
    (["--no-run-exports"], lambda c, t: not (c / "noarch/run_exports.json").exists()),
    (["--compact"], lambda c, t: b"\n" not in _rd(c) and b", " not in _rd(c)),
    (["--current-repodata", "-m", "{tmp}/pins.yaml"], lambda c, t: (c / "noarch/current_repodata.json").is_file()),
    (["--current-repodata", "--current-index-versions-file", "{tmp}/pins.yaml"], lambda c, t: (c / "noarch/current_repodata.json").is_file()),
    (["--base-url", "https://pkgs.example/chan"],
     lambda c, t: json.loads(_rd(c))["info"]["base_url"] == "https://pkgs.example/chan/noarch/"),
    (["--update-cache"], lambda c, t: len(json.loads(_rd(c))["packages.conda"]) == 1),
    (["--no-update-only"], lambda c, t: len(json.loads(_rd(c))["packages"]) == 1),
    (["--update-only"], lambda c, t: len(json.loads(_rd(c))["packages"]) == 1),  # more in test_update_only.py
    (["--upstream-stage", "fs"], lambda c, t: (c / "noarch/repodata.json").is_file()),
    (["--current-repodata"], lambda c, t: (c / "noarch/current_repodata.json").is_file()),
    (["--no-current-repodata"], lambda c, t: not (c / "noarch/current_repodata.json").exists()),
    (["--threads", "1"], lambda c, t: (c / "noarch/repodata.json").is_file()),
    (["--verbose"], lambda c, t: (c / "noarch/repodata.json").is_file()),
    (["--write-monolithic"], lambda c, t: (c / "noarch/repodata.json").is_file()),
    (["--write-shards"], lambda c, t: (c / "noarch/repodata_shards.msgpack.zst").is_file()),
    (["--no-write-shards"], lambda c, t: not (c / "noarch/repodata_shards.msgpack.zst").exists()),
    (["--db", "sqlite3"], lambda c, t: (c / "noarch/.cache/cache.db").is_file()),
    # ignored with sqlite3, as conda-index does; --db postgresql runs in test_pgcache.py
    (["--db-url", "postgresql:///conda_index"], lambda c, t: (c / "noarch/.cache/cache.db").is_file()),
    (["--channeldata", "--html-dependencies"], lambda c, t: 'title="a"' in (c / "noarch/index.html").read_text()),
    (["--channeldata", "--no-html-dependencies"], lambda c, t: "title=" not in (c / "noarch/index.html").read_text()),
    (["--no-repodata-next"], lambda c, t: "v3" not in json.loads(_rd(c))),
    (["--repodata-next"], lambda c, t: json.loads(_rd(c))["packages"] == {} and "b-1.0-0" in json.loads(_rd(c))["v3"]["tar.bz2"]),
]  # fmt: skip

# (flags, words the one line must contain)
REFUSED: list[tuple[list[str], list[str]]] = [
    (["--no-compact"], ["--no-compact", "json.tool"]),
    (["--no-update-cache"], ["--no-update-cache", "always lists"]),
    (["--upstream-stage", "clone"], ["--upstream-stage clone", "'fs'"]),
    (["--no-write-monolithic"], ["--no-write-monolithic", "always writes repodata.json"]),
    (["--db", "mysql"], ["--db mysql", "sqlite3", "postgresql"]),
    (["--db", "postgresql", "--db-url", "mysql://x/y"], ["--db-url", "expected a postgresql:// URL"]),
]

# conda-index 0.13 options this file covers (checked against its --help below)
COVERED = {flag for flags, _ in WORKS + REFUSED for flag in flags if flag.startswith("-")} | {"-h", "--help"}


@pytest.mark.parametrize(("flags", "check"), WORKS, ids=[" ".join(f) for f, _ in WORKS])
def test_conda_index_flag_works(tmp_path: Path, flags: list[str], check: Check) -> None:
    channel = _setup(tmp_path)
    args = [f.format(tmp=tmp_path) for f in flags]
    run_index(channel, *args)
    assert check(channel, tmp_path), f"{flags} did not do what conda-index does"


@pytest.mark.parametrize(("flags", "words"), REFUSED, ids=[" ".join(f) for f, _ in REFUSED])
@pytest.mark.parametrize("command", ["index", "watch"])
def test_conda_index_flag_refused_with_one_line(tmp_path: Path, command: str, flags: list[str], words: list[str]) -> None:
    channel = _setup(tmp_path)
    result = run_cli(command, channel, *flags, "--listen", "127.0.0.1:1") if command == "watch" else run_cli(command, channel, *flags)
    assert result.rc == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr + result.stdout, result
    for word in words:
        assert word in lines[0], lines[0]
    assert not (channel / "noarch" / "repodata.json").exists(), "nothing is written when a flag is refused"


def test_help_lists_the_conda_index_flags() -> None:
    result = run_cli("index", "--help")
    assert result.rc == 0
    for flag in COVERED - {"-h"}:
        assert flag in result.stdout, flag


def test_every_conda_index_flag_is_covered() -> None:
    """The flag list comes from conda-index 0.13's own --help."""
    proc = peers.conda_index("--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    options = proc.stdout.split("options:", 1)[1]
    theirs = set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", options))
    assert len(theirs) > 30, theirs
    assert theirs - COVERED == set(), "conda-index flags with no test here"
