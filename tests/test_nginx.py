"""The channel served by real nginx with deploy/nginx/conda-channel.conf, and the real
client py-rattler solving and installing from the daemon's sharded repodata through it.

Skips when nginx is absent (.ci/run installs Debian's nginx-light)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from conftest import run_index
from daemonproc import DaemonProcess, all_records, repodata, wait_for
from nginxproc import Nginx, nginx_binary
from pkgfactory import index_json, make_package


@pytest.fixture
def served(tmp_path: Path):
    nginx_binary()  # skip early when absent
    channel = tmp_path / "channel"
    (channel / "noarch").mkdir(parents=True)
    with Nginx(channel, tmp_path / "nginx") as server:
        yield channel, server


def installable(folder: Path, name: str, version: str, depends: list[str] = (), subdir: str = "noarch", ext: str = ".conda") -> Path:
    """A package rattler can install: one file under share/<name>/ described by paths.json."""
    content = f"{name} {version}\n".encode()
    relpath = f"share/{name}/version.txt"
    paths = {
        "paths": [{"_path": relpath, "path_type": "hardlink", "sha256": hashlib.sha256(content).hexdigest(), "size_in_bytes": len(content)}],
        "paths_version": 1,
    }
    index = index_json(name, version, "0", subdir=subdir, depends=list(depends))
    if subdir == "noarch":
        index["noarch"] = "generic"
    return make_package(folder / f"{name}-{version}-0{ext}", index, {relpath: content}, paths_json=paths)


def test_nginx_headers_for_a_channel(served) -> None:
    channel, nginx = served
    noarch = channel / "noarch"
    conda = installable(noarch, "a", "1.0")
    tarbz2 = installable(noarch, "b", "1.0", ext=".tar.bz2")
    for i in range(4):  # repodata.json over gzip_min_length
        installable(noarch, f"filler{i}", "1.0")
    run_index(channel, "--bz2")
    index = noarch / "repodata_shards.msgpack.zst"

    status, h, body = nginx.request("GET", "/noarch/repodata.json")
    assert status == 200 and h["content-type"] == "application/json"
    assert json.loads(body)["info"]["subdir"] == "noarch"
    assert "max-age=0" in h["cache-control"] and "must-revalidate" in h["cache-control"]
    etag, last_modified = h["etag"], h["last-modified"]
    assert nginx.request("GET", "/noarch/repodata.json", {"If-None-Match": etag})[0] == 304
    assert nginx.request("GET", "/noarch/repodata.json", {"If-Modified-Since": last_modified})[0] == 304
    status, h, _ = nginx.request("GET", "/noarch/repodata.json", {"Accept-Encoding": "gzip"})
    assert status == 200 and h.get("content-encoding") == "gzip" and h["etag"].startswith('W/"')
    assert nginx.request("GET", "/noarch/repodata.json", {"Accept-Encoding": "gzip", "If-None-Match": h["etag"]})[0] == 304

    for path, ctype in (("/noarch/repodata.json.zst", "application/zstd"), ("/noarch/repodata.json.bz2", "application/x-bzip2"),
                        ("/noarch/repodata_shards.msgpack.zst", "application/zstd")):  # fmt: skip
        status, h, body = nginx.request("HEAD", path, {"Accept-Encoding": "gzip"})
        assert (status, h["content-type"], body) == (200, ctype, b""), path
        assert "content-encoding" not in h and int(h["content-length"]) == (channel / path.lstrip("/")).stat().st_size
        assert "max-age=0" in h["cache-control"], path

    shard = next((noarch / "shards").iterdir())
    status, h, body = nginx.request("GET", f"/noarch/shards/{shard.name}", {"Accept-Encoding": "gzip"})
    assert status == 200 and body == shard.read_bytes() and "content-encoding" not in h
    assert h["cache-control"] == "public, max-age=31536000, immutable"

    for pkg, ctype in ((conda, "application/octet-stream"), (tarbz2, "application/x-bzip2")):
        status, h, body = nginx.request("GET", f"/noarch/{pkg.name}", {"Range": "bytes=0-99", "Accept-Encoding": "gzip"})
        assert status == 206 and body == pkg.read_bytes()[:100] and h["content-type"] == ctype
        assert "immutable" in h["cache-control"] and "content-encoding" not in h
        assert h["content-range"] == f"bytes 0-99/{pkg.stat().st_size}"

    (noarch / ".repodata.json.0123abcd.tmp").write_text("{")
    for hidden in ("/noarch/.cache/cache.db", "/.conda-indexd.lock", "/noarch/.repodata.json.0123abcd.tmp",
                   "/noarch/.cache/shards-state.json"):  # fmt: skip
        assert nginx.request("GET", hidden)[0] == 404, hidden
    status, h, _ = nginx.request("GET", "/linux-64/repodata_shards.msgpack.zst")
    assert status == 404 and "cache-control" not in h  # a missing optional file is not cached

    # a rewrite within the same second still changes the ETag (mtime moves a whole second)
    old_etag = nginx.request("HEAD", "/noarch/repodata_shards.msgpack.zst")[1]["etag"]
    installable(noarch, "c", "1.0")
    run_index(channel)
    assert nginx.request("HEAD", "/noarch/repodata_shards.msgpack.zst")[1]["etag"] != old_etag
    assert nginx.request("GET", "/noarch/repodata_shards.msgpack.zst", {"If-None-Match": old_etag})[0] == 200
    assert index.exists()


def _solve(channels: list[str], specs: list[str], cache: Path, sharded: bool = True):
    from rattler import Gateway, SourceConfig, solve

    gateway = Gateway(cache_dir=cache, default_config=SourceConfig(sharded_enabled=sharded, bz2_enabled=False))
    return asyncio.run(solve(channels, specs, gateway=gateway, platforms=["linux-64", "noarch"], virtual_packages=[]))


def test_rattler_solves_and_installs_through_nginx_from_shards(served, tmp_path: Path) -> None:
    rattler = pytest.importorskip("rattler", reason="py-rattler is a test dependency: pip install -e '.[test]'")
    channel, nginx = served
    noarch, linux = channel / "noarch", channel / "linux-64"
    linux.mkdir()
    installable(noarch, "lib", "1.0")
    installable(noarch, "app", "1.0", ["lib >=1.0"])
    installable(linux, "tool", "1.0", ["lib"], subdir="linux-64")
    cache = tmp_path / "rattler-cache"
    with DaemonProcess(channel, debounce=0.3, settle=0.3) as daemon:
        # files younger than --settle are held back at start-up as possible uploads
        wait_for(lambda: len(all_records(repodata(channel, "noarch"))) == 2, 5, what="noarch published")
        wait_for(lambda: len(all_records(repodata(channel, "linux-64"))) == 1, 5, what="linux-64 published")
        records = _solve([nginx.url + "/"], ["app", "tool"], cache)
        assert sorted((r.name.normalized, str(r.version)) for r in records) == [("app", "1.0"), ("lib", "1.0"), ("tool", "1.0")]
        prefix = tmp_path / "env"
        asyncio.run(rattler.install(records, prefix, cache_dir=tmp_path / "pkgs", show_progress=False))
        assert (prefix / "share" / "app" / "version.txt").read_text() == "app 1.0\n"
        assert (prefix / "share" / "tool" / "version.txt").read_text() == "tool 1.0\n"

        log = nginx.log_lines()
        fetched = [line.split()[1] for line in log if line.startswith("GET ") and line.split()[2] in ("200", "206", "304")]
        assert "/noarch/repodata_shards.msgpack.zst" in fetched and "/linux-64/repodata_shards.msgpack.zst" in fetched, log
        assert any(p.startswith("/noarch/shards/") for p in fetched) and any(p.startswith("/linux-64/shards/") for p in fetched), log
        assert not [line for line in log if "/repodata.json" in line], log
        assert "/noarch/app-1.0-0.conda" in fetched

        # a new version dropped in the way uploads should be (temporary name, then rename)
        staged = installable(tmp_path, "app", "2.0", ["lib >=1.0"])
        os.replace(staged, noarch / staged.name)
        dropped = time.monotonic()

        def picks_new() -> bool:
            found = {r.name.normalized: str(r.version) for r in _solve([nginx.url + "/"], ["app"], cache)}
            return found.get("app") == "2.0"

        wait_for(picks_new, daemon.debounce + 2, interval=0.1, what="a fresh solve picking app 2.0")
        took = time.monotonic() - dropped
        assert took <= daemon.debounce + 2

    # the same solve over file:// reads the monolithic repodata.json
    records = _solve([channel.as_uri()], ["app", "tool"], tmp_path / "file-cache")
    assert sorted((r.name.normalized, str(r.version)) for r in records) == [("app", "2.0"), ("lib", "1.0"), ("tool", "1.0")]
