"""Run the real daemon as a subprocess on a temporary channel, and poll what it publishes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, ValueError, KeyError):
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def repodata(channel: Path, subdir: str) -> dict:
    return json.loads((channel / subdir / "repodata.json").read_bytes())


def all_records(doc: dict) -> dict:
    return {**doc.get("packages", {}), **doc.get("packages.conda", {})}


def shard_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Every record of a subdir folder's published shards (the CEP-48 v3 map's too, by filename)."""
    import msgpack
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    index = msgpack.unpackb(dctx.decompress((folder / "repodata_shards.msgpack.zst").read_bytes()))
    out: dict[str, dict[str, Any]] = {}
    for digest in index["shards"].values():
        shard = msgpack.unpackb(dctx.decompress((folder / "shards" / f"{digest.hex()}.msgpack.zst").read_bytes()))
        out.update(shard["packages"])
        out.update(shard["packages.conda"])
        for ext, section in shard.get("v3", {}).items():  # CEP-48: keyed without the extension
            out.update((f"{stem}.{ext}", record) for stem, record in section.items())
    return out


class DaemonProcess:
    def __init__(
        self, channel: Path, *extra: str, debounce: float = 0.3, settle: float = 0.5, log: Path | None = None,
        cgroup_procs: Path | None = None, user: str | None = None, python: str | None = None,
        env: dict[str, str] | None = None, wrapper: list[str] | None = None,
    ):  # fmt: skip
        """cgroup_procs: a cgroup's `cgroup.procs` file the daemon joins before it starts
        (through `sh`, so the daemon's first thread already runs there)."""
        self.channel = channel
        self.port = free_port()
        self.log_path = log or channel.parent / f"daemon-{self.port}.log"
        self.user = user  # run as this user (with `python`, one that user may execute)
        self.extra_env = env or {}
        self.args = [
            python or sys.executable, "-m", "conda_indexd", "watch", str(channel),
            "--listen", f"127.0.0.1:{self.port}", "--debounce", str(debounce), "--settle", str(settle),
            "--log-format", "json", "--threads", "2", *extra,
        ]  # fmt: skip
        if wrapper:  # e.g. setpriv, to drop capabilities before the daemon starts
            self.args = [*wrapper, *self.args]
        if cgroup_procs is not None:
            self.args = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup_procs), *self.args]
        self.debounce = debounce
        self.proc: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True, timeout: float = 60) -> DaemonProcess:
        self._log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, user=self.user)
        if wait_ready:
            wait_for(lambda: self.get("/readyz")[0] == 200, timeout, what="/readyz 200")
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
        req = urllib.request.Request(self.url(path), method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def metrics(self) -> dict[tuple[str, tuple], float]:
        status, body = self.get("/metrics")
        assert status == 200
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict]:
        records = []
        for line in self.log_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
        return records

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> DaemonProcess:
        # `with DaemonProcess(...).start() as d` must not start a second daemon (the first leaked)
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
