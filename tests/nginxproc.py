"""Run Debian's real nginx in the foreground on 127.0.0.1 with deploy/nginx/conda-channel.conf."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from daemonproc import free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
SERVER_CONF = REPO / "deploy" / "nginx" / "conda-channel.conf"


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if not found:
        pytest.skip("nginx is not installed (apt-get install nginx-light; .ci/run installs it)")
    return found


class Nginx:
    """nginx -p PREFIX -c PREFIX/nginx.conf -e stderr -g 'daemon off;' (ops-notes)."""

    def __init__(self, root: Path, prefix: Path):
        self.binary = nginx_binary()
        self.root = root
        self.prefix = prefix
        self.port = free_port()
        self.access_log = prefix / "access.log"
        self.proc: subprocess.Popen | None = None

    def _write_conf(self) -> Path:
        server = SERVER_CONF.read_text()
        # the shipped block with only its listen and root set for this test
        server, n_listen = re.subn(r"(?m)^(\s*)listen\s+[^;]+;", rf"\1listen 127.0.0.1:{self.port};", server)
        server, n_root = re.subn(r"(?m)^(\s*)root\s+[^;]+;", rf"\1root {self.root};", server)
        assert n_listen == 1 and n_root == 1, "conda-channel.conf must have one listen and one root line"
        (self.prefix / "conda-channel.conf").write_text(server)
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        user = "user root root;\n" if os.geteuid() == 0 else ""  # pytest's tmp folders are 0700
        conf = self.prefix / "nginx.conf"
        conf.write_text(
            f"""{user}worker_processes 1;
pid {self.prefix}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    log_format t '$request_method $uri $status $body_bytes_sent "$http_user_agent"';
    access_log {self.access_log} t;
    client_body_temp_path {self.prefix}/tmp/client_body;
    proxy_temp_path {self.prefix}/tmp/proxy;
    fastcgi_temp_path {self.prefix}/tmp/fastcgi;
    uwsgi_temp_path {self.prefix}/tmp/uwsgi;
    scgi_temp_path {self.prefix}/tmp/scgi;
    include {self.prefix}/conda-channel.conf;
}}
"""
        )
        return conf

    def start(self) -> Nginx:
        self.prefix.mkdir(parents=True, exist_ok=True)
        conf = self._write_conf()
        self.stderr = open(self.prefix / "stderr.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, "-p", f"{self.prefix}/", "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
            stdout=self.stderr, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"nginx exited: {(self.prefix / 'stderr.log').read_text()}")
            return self.request("HEAD", "/")[0] in (200, 403, 404)

        wait_for(up, 15, what="nginx listening")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def log_lines(self) -> list[str]:
        time.sleep(0.1)  # nginx writes the access log line after the response
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
