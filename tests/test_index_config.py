"""`--config FILE` (the `[index-config]` section rattler-index and pixi read): notices.json
(CEP-6) and channel_relations (CEP-42) written from it, per-channel tables by longest
prefix, flags winning over the file, one-line errors; and py-rattler 0.28 following the
relations to a second channel."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard

import pkgfactory as f
from conftest import run_cli, run_index


def make(folder: Path, name: str, **index: Any) -> Path:
    path = folder / f"{name}-1.0-0.conda"
    f.make_conda(path, f.index_json(name, "1.0", "0", folder.name, **index), {f"share/{name}": os.urandom(8)})
    return path


def info(channel: Path, subdir: str = "noarch") -> dict[str, Any]:
    return json.loads((channel / subdir / "repodata.json").read_bytes())["info"]


def index_info(channel: Path, subdir: str = "noarch") -> dict[str, Any]:
    data = zstandard.ZstdDecompressor().decompress((channel / subdir / "repodata_shards.msgpack.zst").read_bytes())
    return msgpack.unpackb(data)["info"]  # type: ignore[no-any-return]


CONFIG = """
[pixi-stuff]
anything = "ignored"

[index-config]
write-zst = false
base-url = "https://example.com/everything"

[index-config."{root}"]
write-shards = true
base-url = "https://example.com/root"

[index-config."{root}/chan"]
repodata-revisions = [{{ revision = "v3", message = "conditional dependencies live in v3" }}]

[index-config."{root}/chan".channel-relations]
base = "../base"

[[index-config."{root}/chan".notices]]
id = "security-1"
message = "Please update openssl"
level = "critical"
created_at = 2026-01-01T12:00:00Z
expires_at = "2027-01-01T00:00:00Z"
interval = 24

[[index-config."{root}/chan".notices]]
id = "info-1"
message = "New mirror"

[index-config."{root}/chanother"]
base-url = "https://example.com/not-a-prefix-on-a-path-boundary"
"""


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "pixi.toml"
    path.write_text(CONFIG.format(root=tmp_path))
    return path


def test_notices_relations_and_revisions_from_the_file(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    channel = tmp_path / "chan"
    make(channel / "noarch", "a")
    run_index(channel, "--config", config)
    notices = json.loads((channel / "notices.json").read_bytes())
    assert notices == {"notices": [
        {"created_at": "2026-01-01T12:00:00Z", "expires_at": "2027-01-01T00:00:00Z", "id": "security-1", "interval": 24,
         "level": "critical", "message": "Please update openssl"},
        {"id": "info-1", "level": "info", "message": "New mirror"},
    ]}  # fmt: skip
    got = info(channel)
    assert got["channel_relations"] == {"base": "../base"}
    # the longest prefix wins: root's base-url over the section's, chan adds its own keys
    assert got["base_url"] == "https://example.com/root/noarch/"
    # v3 advertised with no v3 record: an empty map and its revision info, with the message
    assert got["repodata_revisions"] == {"v3": {"message": "conditional dependencies live in v3", "n_packages": 0, "newest": None, "oldest": None}}
    assert json.loads((channel / "noarch/repodata.json").read_bytes())["v3"] == {"conda": {}, "tar.bz2": {}, "whl": {}}
    # the shard index says the same
    shard_info = index_info(channel)
    assert shard_info["channel_relations"] == got["channel_relations"] and shard_info["repodata_revisions"] == got["repodata_revisions"]
    assert not (channel / "noarch/repodata.json.zst").exists()  # write-zst = false from the section's defaults
    # flags win over the file
    run_index(channel, "--config", config, "--zst", "--base-url", "https://flag.example/c")
    assert (channel / "noarch/repodata.json.zst").is_file()
    assert info(channel)["base_url"] == "https://flag.example/c/noarch/"
    # a channel that is not under a table keeps the section's defaults only
    other = tmp_path / "chanother-not"
    make(other / "noarch", "b")
    run_index(other, "--config", config)
    assert info(other)["base_url"] == "https://example.com/root/noarch/" and "channel_relations" not in info(other)
    assert not (other / "notices.json").exists()


def test_daemon_writes_notices_from_the_file(tmp_path: Path) -> None:
    from daemonproc import DaemonProcess, wait_for

    config = write_config(tmp_path)
    channel = tmp_path / "chan"
    make(channel / "noarch", "a")
    with DaemonProcess(channel, "--config", str(config), debounce=0.2, settle=0):
        wait_for(lambda: (channel / "notices.json").is_file(), 20, what="notices.json")
        assert [n["id"] for n in json.loads((channel / "notices.json").read_bytes())["notices"]] == ["security-1", "info-1"]
        assert info(channel)["channel_relations"] == {"base": "../base"}


BAD: list[tuple[str, str]] = [
    ("write-zsts = true", "unknown key index-config.write-zsts"),
    ('write-zst = "yes"', "write-zst must be true or false"),
    ('notices = [{ message = "no id" }]', "a notice needs an id"),
    ('notices = [{ id = "x" }]', "a notice needs a message"),
    ('notices = [{ id = "x", message = "m", level = "loud" }]', "level 'loud'"),
    ('notices = [{ id = "x", message = "m", created_at = "yesterday" }]', "not an RFC 3339 time"),
    ('notices = [{ id = "x", message = "m" }, { id = "x", message = "n" }]', "used twice"),
    ('channel-relations = { base = "conda-forge" }', "starting with '../'"),
    ('channel-relations = { base = "../a", overrides = "../a" }', "must not be the same channel"),
    ('channel-relations = { parent = "../a" }', "unknown channel-relations key"),
    ('repodata-revisions = ["v4"]', "only v3"),
    ('package-revision-assignment = "newest"', "choose from-index-json or latest"),
    ('package-revision-assignment = "latest"', 'needs repodata-revisions = ["v3"]'),
    ('[index-config."/x"]\nwrite-shardz = true', 'unknown key index-config."/x".write-shardz'),
    ("write-zst = ", "not valid TOML"),
]


@pytest.mark.parametrize(("body", "words"), BAD, ids=[b.split("=")[0].strip() + str(i) for i, (b, _) in enumerate(BAD)])
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, body: str, words: str) -> None:
    channel = tmp_path / "chan"
    make(channel / "noarch", "a")
    config = tmp_path / "bad.toml"
    config.write_text(f"[index-config]\n{body}\n")
    result = run_cli("index", channel, "--config", config)
    assert result.rc == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr + result.stdout, result
    assert words in lines[0], lines[0]
    assert not (channel / "noarch/repodata.json").exists()


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    channel = tmp_path / "chan"
    make(channel / "noarch", "a")
    for command in ("index", "watch"):
        extra = ["--listen", "127.0.0.1:1"] if command == "watch" else []
        result = run_cli(command, channel, "--config", tmp_path / "nope.toml", *extra)
        assert result.rc == 2 and len(result.stderr.strip().splitlines()) == 1 and "nope.toml" in result.stderr, result


def test_rattler_follows_channel_relations_to_a_second_channel(tmp_path: Path) -> None:
    rattler = pytest.importorskip("rattler")
    main, base = tmp_path / "main", tmp_path / "base"
    make(main / "noarch", "app", depends=["lib"])
    make(base / "noarch", "lib")
    run_index(base)
    config = tmp_path / "c.toml"
    config.write_text('[index-config]\nchannel-relations = { base = "../base" }\n')
    run_index(main, "--config", config)
    gateway = rattler.Gateway(cache_dir=tmp_path / "cache")
    records = asyncio.run(rattler.solve([main.as_uri()], ["app"], gateway=gateway, platforms=["noarch"]))
    assert sorted(r.name.normalized for r in records) == ["app", "lib"]
    assert {r.name.normalized: str(r.channel) for r in records}["lib"].rstrip("/").endswith("base")
    # without following relations the dependency is not found
    with pytest.raises(Exception):  # noqa: B017 - rattler's SolverError
        asyncio.run(rattler.solve([main.as_uri()], ["app"], gateway=rattler.Gateway(cache_dir=tmp_path / "c2"), platforms=["noarch"],
                                  channel_relations="disabled"))  # fmt: skip
