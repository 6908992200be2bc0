"""systemd/: the unit checked by systemd-analyze, and run under a real systemd as PID 1
in private namespaces with the package installed as the README says: READY, the
watchdog restarting a frozen daemon, reload, and a clean stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from daemonproc import wait_for
from pkgfactory import index_json, make_package

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "conda-indexd.service"
TEMPLATE = REPO / "systemd" / "conda-indexd@.service"
SYSTEMD = Path("/lib/systemd/systemd")
pytestmark = pytest.mark.timeout(300)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.skip(f"{tool} is not installed (Debian systemd; .ci/run installs it)")
    return path


@pytest.mark.parametrize("unit", [UNIT, TEMPLATE], ids=["single", "template"])
def test_unit_security_rating_offline(tmp_path: Path, unit: Path) -> None:
    need("systemd-analyze")
    if unit == TEMPLATE:  # rated as an instance, as it runs
        unit = Path(shutil.copy(unit, tmp_path / "conda-indexd@main.service"))
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)], capture_output=True, text=True)
    overall = [line for line in out.stdout.splitlines() if "Overall exposure level" in line]
    assert overall, out.stdout + out.stderr
    level = float(overall[0].split(":")[1].split()[0])
    assert level <= 2.0, overall[0]


def test_sysusers_and_sysctl_files() -> None:
    need("systemd-sysusers")
    out = subprocess.run(["systemd-sysusers", "--dry-run", str(REPO / "systemd" / "conda-indexd.sysusers")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "conda-indexd" in out.stdout + out.stderr
    for line in (REPO / "systemd" / "60-conda-indexd-inotify.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = (part.strip() for part in line.partition("="))
            assert Path("/proc/sys", *key.split(".")).exists(), key
            assert value.isdigit(), line


class Machine:
    """systemd as PID 1 in fresh namespaces; commands run inside with nsenter."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.proc: subprocess.Popen | None = None
        self.pid = 0

    def boot(self, wheels: Path, pkgs: Path) -> None:
        self.log = open(self.tmp / "boot.log", "wb")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--uts", "--ipc", "--net", "--cgroup",
             "--propagation", "private", "--mount-proc",
             str(REPO / "tests" / "systemd_boot.sh"), str(REPO), str(wheels), str(pkgs), str(self.tmp)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip

        def systemd_pid() -> int:
            if self.proc.poll() is not None:
                raise AssertionError(f"boot failed: {(self.tmp / 'boot.log').read_text()[-3000:]}")
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            for child in children:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
            return 0

        self.pid = wait_for(systemd_pid, 120, interval=0.2, what="systemd as PID 1")
        wait_for(lambda: self.run("systemctl", "is-system-running", check=False).stdout.strip() in ("running", "degraded"),
                 60, interval=0.2, what="systemd up")  # fmt: skip

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        full = ["nsenter", "-t", str(self.pid), "-m", "-p", "-n", "-u", "-i", "-C", *cmd]
        out = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> {out.returncode}\n{out.stdout}\n{out.stderr}")
        return out

    def show(self, unit: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p", "ActiveState,SubState,MainPID,NRestarts,Result,StatusText,ExecMainStatus")
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def path(self, inside: str) -> Path:
        return Path(f"/proc/{self.pid}/root{inside}")

    def http(self, path: str, port: int = 8650) -> str:
        code = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=5).read().decode())"
        return self.run("/usr/bin/python3", "-c", code).stdout

    def shutdown(self) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)  # PID 1 of the namespace: everything in it goes
        if self.proc is not None:
            self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory):
    if os.geteuid() != 0:
        pytest.skip("booting systemd in private namespaces needs root")
    for tool in ("unshare", "nsenter", "systemd-analyze", "systemd-sysusers"):
        need(tool)
    if not SYSTEMD.exists() or not Path("/usr/bin/python3").exists():
        pytest.skip("needs /lib/systemd/systemd and /usr/bin/python3 (Debian systemd, python3-venv)")
    if subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"], capture_output=True).returncode:
        pytest.skip("python3-venv is not installed (.ci/run installs it)")
    tmp = tmp_path_factory.mktemp("machine")
    wheels = tmp / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", str(REPO), "-w", str(wheels)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    pkgs = tmp / "pkgs"
    make_package(pkgs / "first-1.0-0.conda", index_json("first", "1.0", "0"))
    m = Machine(tmp)
    try:
        m.boot(wheels, pkgs)
        yield m
    finally:
        m.shutdown()


def test_unit_verifies_with_the_package_installed(machine: Machine) -> None:
    out = machine.run("systemd-analyze", "verify", "/run/systemd/system/conda-indexd.service", check=False)
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr


def test_unit_lifecycle_under_systemd(machine: Machine) -> None:
    noarch = "/srv/conda/channel/noarch"
    machine.run("systemctl", "start", "conda-indexd")  # Type=notify: returns after READY=1
    state = machine.show("conda-indexd")
    assert state["ActiveState"] == "active" and state["SubState"] == "running", state
    assert state["StatusText"] == "watching /srv/conda/channel"
    repodata = json.loads(machine.path(f"{noarch}/repodata.json").read_text())
    assert list(repodata["packages.conda"]) == ["first-1.0-0.conda"]
    assert machine.path(f"{noarch}/repodata_shards.msgpack.zst").exists()
    owner = machine.path(f"{noarch}/repodata.json").stat()
    assert owner.st_uid != 0 and oct(owner.st_mode & 0o777) == "0o644"  # the static user, readable by nginx
    assert "conda_indexd_ready 1.0" in machine.http("/metrics")

    # the sandboxed daemon sees and publishes a new package
    make_package(machine.path(f"{noarch}/second-1.0-0.conda"), index_json("second", "1.0", "0"))
    wait_for(lambda: "second-1.0-0.conda" in json.loads(machine.path(f"{noarch}/repodata.json").read_text())["packages.conda"],
             10, what="second package published")  # fmt: skip

    # frozen: the watchdog (4 s in the test drop-in) kills it and Restart= brings it back
    frozen = state["MainPID"]
    machine.run("kill", "-STOP", frozen)
    wait_for(lambda: (s := machine.show("conda-indexd"))["NRestarts"] == "1" and s["ActiveState"] == "active"
             and s["MainPID"] not in ("0", frozen), 30, interval=0.5, what="watchdog restart")  # fmt: skip
    journal = machine.run("journalctl", "--no-pager", "-u", "conda-indexd").stdout
    assert "Watchdog timeout" in journal, journal[-2000:]

    # reload = SIGHUP = a full rescan
    before = machine.http("/metrics")
    machine.run("systemctl", "reload", "conda-indexd")
    wait_for(lambda: 'conda_indexd_rescans_total{reason="signal"} 1.0' in machine.http("/metrics"), 10, what="rescan on reload")
    assert 'conda_indexd_rescans_total{reason="signal"} 0.0' in before

    machine.run("systemctl", "stop", "conda-indexd")
    state = machine.show("conda-indexd")
    assert state["ActiveState"] == "inactive" and state["Result"] == "success" and state["ExecMainStatus"] == "0", state


def test_template_unit_verifies(machine: Machine) -> None:
    for instance in ("main", "dev"):
        out = machine.run("systemd-analyze", "verify", f"conda-indexd@{instance}.service", check=False)
        assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr


def test_template_two_channels_at_once_each_publishing_on_its_own(machine: Machine) -> None:
    """conda-indexd@main and conda-indexd@dev: own folder, env file, port, lock and restarts."""
    ports = {"main": 8651, "dev": 8652}  # from /etc/conda-indexd/<channel>.env (systemd_boot.sh)
    units = [f"conda-indexd@{ch}" for ch in ports]
    machine.run("systemctl", "start", *units)  # Type=notify: returns once both sent READY=1
    pids = set()
    for channel, port in ports.items():
        state = machine.show(f"conda-indexd@{channel}")
        assert state["ActiveState"] == "active" and state["SubState"] == "running", state
        assert state["StatusText"] == f"watching /srv/conda/{channel}"
        machine.http("/readyz", port)  # raises unless 200
        assert "conda_indexd_ready 1.0" in machine.http("/metrics", port)
        pids.add(state["MainPID"])
        assert machine.path(f"/srv/conda/{channel}/.conda-indexd.lock").exists()
    assert len(pids) == 2

    def published(channel: str) -> set[str]:
        return set(json.loads(machine.path(f"/srv/conda/{channel}/noarch/repodata.json").read_text())["packages.conda"])

    assert published("main") == published("dev") == set()
    make_package(machine.path("/srv/conda/main/noarch/only-main-1.0-0.conda"), index_json("only-main", "1.0", "0"))
    make_package(machine.path("/srv/conda/dev/noarch/only-dev-2.0-0.conda"), index_json("only-dev", "2.0", "0"))
    wait_for(lambda: published("main") == {"only-main-1.0-0.conda"} and published("dev") == {"only-dev-2.0-0.conda"},
             15, what="each channel publishing its own package")  # fmt: skip
    assert 'conda_indexd_packages{subdir="noarch"} 1.0' in machine.http("/metrics", 8651)
    assert 'conda_indexd_packages{subdir="noarch"} 1.0' in machine.http("/metrics", 8652)
    owner = machine.path("/srv/conda/dev/noarch/repodata.json").stat()
    assert owner.st_uid != 0 and oct(owner.st_mode & 0o777) == "0o644"

    # one instance stopping leaves the other running and publishing
    machine.run("systemctl", "stop", "conda-indexd@main")
    make_package(machine.path("/srv/conda/dev/noarch/later-1.0-0.conda"), index_json("later", "1.0", "0"))
    wait_for(lambda: "later-1.0-0.conda" in published("dev"), 15, what="dev publishing with main stopped")
    assert machine.show("conda-indexd@dev")["ActiveState"] == "active"
    assert "later-1.0-0.conda" not in published("main")

    journal = machine.run("journalctl", "--no-pager", "-o", "cat", "-u", "conda-indexd@dev").stdout
    assert "/srv/conda/dev" in journal and "/srv/conda/main" not in journal, journal[-2000:]

    machine.run("systemctl", "stop", "conda-indexd@dev")
    for unit in units:
        state = machine.show(unit)
        assert state["ActiveState"] == "inactive" and state["Result"] == "success" and state["ExecMainStatus"] == "0", state


def test_template_instance_without_env_file_does_not_start(machine: Machine) -> None:
    """No /etc/conda-indexd/<channel>.env, no port of its own: the instance refuses to start
    instead of fighting another one for 8650."""
    machine.run("mkdir", "-p", "/srv/conda/nofile/noarch")
    out = machine.run("systemctl", "start", "conda-indexd@nofile", check=False)
    assert out.returncode != 0
    state = machine.show("conda-indexd@nofile")
    # Restart=on-failure tries again every 2 s until the start limit; it never runs
    assert state["ActiveState"] in ("failed", "activating") and state["Result"] == "resources", state
    assert state["MainPID"] == "0"
    journal = machine.run("journalctl", "--no-pager", "-u", "conda-indexd@nofile").stdout
    assert "Failed to load environment files" in journal, journal[-2000:]
    machine.run("systemctl", "stop", "conda-indexd@nofile", check=False)
