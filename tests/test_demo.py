"""`conda-indexd demo`: run as a real process, wait for ready, add a package the way the
banner says, and find it in repodata.json and on the status page."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from daemonproc import all_records, free_port, repodata, wait_for

DEMO_NOARCH = {"demo-data-1.0-0.tar.bz2", "demo-data-1.1-0.conda", "demo-greet-1.0-0.conda"}
DEMO_LINUX = {"libdemo-1.0-h0_0.conda", "demo-app-1.0-h0_0.conda"}


def _get(port: int, path: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _as_module(command: str) -> list[str]:
    """The banner's `conda-indexd ...` command, run with this Python (the console script
    may not be on PATH in a test run)."""
    argv = shlex.split(command)
    assert argv[0] == "conda-indexd", command
    return [sys.executable, "-m", "conda_indexd", *argv[1:]]


@pytest.mark.timeout(120)
def test_demo_runs_and_adds_a_package(tmp_path: Path) -> None:
    port = free_port()
    folder = tmp_path / "demo-channel"
    out = tmp_path / "demo.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "conda_indexd", "demo", str(folder), "--listen", f"127.0.0.1:{port}", "--log-format", "json"],
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        wait_for(lambda: proc.poll() is None and _get(port, "/readyz")[0] == 200, 60, what="demo daemon ready")
        banner = wait_for(lambda: "demo --add" in out.read_text() and out.read_text(), 10, what="the demo's banner")
        # generated packages, noarch and linux-64, published at start-up
        assert set(all_records(repodata(folder, "noarch"))) == DEMO_NOARCH
        linux = all_records(repodata(folder, "linux-64"))
        assert set(linux) == DEMO_LINUX
        assert "libdemo >=1.0,<2" in linux["demo-app-1.0-h0_0.conda"]["depends"]
        status = json.loads(_get(port, "/status.json")[1])
        assert {s["subdir"]: s["packages"] for s in status["subdirs"]} == {"noarch": 3, "linux-64": 2}

        # what the banner tells the user
        assert f"http://127.0.0.1:{port}/" in banner and "/status.json" in banner
        assert "second terminal" in banner
        assert f"conda search --override-channels -c {folder.as_uri()} demo-greet" in banner
        assert "mamba" in banner and "pixi" in banner and "--no-repodata-use-shards" in banner
        add_line = next(line.strip() for line in banner.splitlines() if "demo --add" in line)

        added = subprocess.run(_as_module(add_line), check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert added.returncode == 0 and "demo-plugin-1.0-0.conda" in added.stdout, added
        wait_for(lambda: "demo-plugin-1.0-0.conda" in all_records(repodata(folder, "noarch")), 10, what="the added package published")

        def noarch_status() -> dict | None:
            doc = json.loads(_get(port, "/status.json")[1])
            return next((s for s in doc["subdirs"] if s["subdir"] == "noarch" and s["packages"] == 4), None)

        assert wait_for(noarch_status, 10, what="the status page counting it")["error"] is None
        assert "demo-plugin" in all_records(repodata(folder, "noarch"))["demo-plugin-1.0-0.conda"]["name"]
        assert b"Traceback" not in out.read_bytes()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    assert proc.returncode == 0, out.read_text()[-3000:]


def test_demo_packages_solve_with_rattler(tmp_path: Path) -> None:
    """The generated packages are real: py-rattler solves demo-app and installs it."""
    rattler = pytest.importorskip("rattler", reason="py-rattler is a test dependency: pip install -e '.[test]'")
    from conda_indexd.demo import channel as demo

    folder = tmp_path / "demo-channel"
    demo.prepare(folder)
    result = run_cli("index", folder, "--threads", "2")
    assert result.rc == 0, result
    gateway = rattler.Gateway(cache_dir=tmp_path / "cache")
    records = asyncio.run(rattler.solve([folder.as_uri()], ["demo-app"], gateway=gateway,
                                        platforms=["linux-64", "noarch"], virtual_packages=[]))  # fmt: skip
    assert sorted((r.name.normalized, str(r.version)) for r in records) == [
        ("demo-app", "1.0"), ("demo-data", "1.1"), ("demo-greet", "1.0"), ("libdemo", "1.0"),
    ]  # fmt: skip
    prefix = tmp_path / "env"
    asyncio.run(rattler.install(records, prefix, cache_dir=tmp_path / "pkgs", show_progress=False))
    assert (prefix / "share" / "demo-data" / "greeting.txt").read_text() == "hello, conda\n"
    assert os.access(prefix / "bin" / "demo-app", os.X_OK)


def test_demo_add_twice_and_bad_folders(tmp_path: Path) -> None:
    from conda_indexd.demo import channel as demo

    folder = tmp_path / "demo-channel"
    demo.prepare(folder)
    first = run_cli("demo", "--add", folder)
    second = run_cli("demo", "--add", folder)
    assert first.rc == second.rc == 0, (first, second)
    assert {p.name for p in (folder / "noarch").glob("demo-plugin-*")} == {"demo-plugin-1.0-0.conda", "demo-plugin-2.0-0.conda"}

    other = tmp_path / "real-channel"
    (other / "noarch").mkdir(parents=True)
    for args in (["demo", "--add", other], ["demo", other, "--listen", "127.0.0.1:1"]):
        result = run_cli(*args)
        assert result.rc == 2, result
        assert len(result.stderr.strip().splitlines()) == 1 and "demo channel" in result.stderr, result
        assert "Traceback" not in result.stderr
    assert list(other.iterdir()) == [other / "noarch"], "a folder that is not a demo channel is left alone"
