"""A throwaway single-node Ceph cluster with one radosgw, for the S3 tests.

One mon, one OSD on `memstore` (data in RAM), one radosgw (beast frontend), all on
127.0.0.1, configured by hand the way Ceph's vstart.sh does it (facts in
shared/docs/ops-notes.md, "Ceph RGW"). Every daemon runs in the foreground (`-f`) as a
child of this process, so it is stopped by its own process handle, in the order rgw,
osd, mon (radosgw hangs on SIGTERM once the mon is gone). Start takes about 15 s; the
tests share one cluster per session (`rgw` fixture in tests/s3fixtures.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

TOOLS = ("ceph-mon", "ceph-osd", "radosgw", "ceph", "ceph-authtool", "monmaptool", "radosgw-admin")
ACCESS_KEY = "CONDAINDEXDTEST00001"
SECRET_KEY = "condaindexdtestsecret0000000000000000001"
REGION = "us-east-1"


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None and not Path("/usr/bin", t).exists()]


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_range(width: int) -> int:
    """The first port of `width` consecutive free ports (the OSD's messenger binds there)."""
    for _ in range(200):
        base = random.randrange(20000, 30000 - width)
        if all(_free(p) for p in range(base, base + width)):
            return base
    raise RuntimeError("no free port range for the Ceph messenger")


class RgwError(Exception):
    pass


class RgwCluster:
    def __init__(self, base: Path):
        self.base = base
        self.mon_port = _free_port()
        self.rgw_port = _free_port()
        self.ms_min = _free_range(40)
        self.conf = base / "ceph.conf"
        self.endpoint = f"http://127.0.0.1:{self.rgw_port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # --- helpers ------------------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = 60) -> str:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RgwError(f"{' '.join(args[:3])} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        return proc.stdout

    def ceph(self, *args: str) -> str:
        return self._run("ceph", "-c", str(self.conf), "--connect-timeout", "20", *args)

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.base / "log" / f"{name}.stdout", "ab")
        try:
            self.procs[name] = subprocess.Popen([*args, "-c", str(self.conf), "-f"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def _wait(self, what: str, check: callable, timeout: float) -> None:  # type: ignore[valid-type]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RgwError(f"{name} exited with {proc.returncode} (logs in {self.base / 'log'})")
            try:
                if check():
                    return
            except (OSError, RgwError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.3)
        raise RgwError(f"{what} did not come up in {timeout:.0f} s (logs in {self.base / 'log'})")

    def endpoint_up(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=2) as resp:
                return resp.status == 200
        except urllib.error.HTTPError as err:
            return err.code in (403, 404)
        except OSError:
            return False

    # --- lifecycle ----------------------------------------------------------------------------

    def write_conf(self, fsid: str) -> None:
        b = self.base
        self.conf.write_text(
            f"""[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{self.mon_port}]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false
ms bind port min = {self.ms_min}
ms bind port max = {self.ms_min + 39}
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = {b}/run
admin socket = {b}/run/$name.asok
pid file = {b}/run/$name.pid
log file = {b}/log/$name.log
crash dir = {b}/crash
mon cluster log file = {b}/log/cluster.log
log to stderr = false
err to stderr = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
auth allow insecure global id reclaim = false
mon data avail warn = 2
mon data avail crit = 1

[client.admin]
keyring = {b}/admin.keyring

[mon]
mon data = {b}/mon.$id

[osd]
osd data = {b}/osd.$id
keyring = {b}/osd.$id/keyring
osd objectstore = memstore
memstore device bytes = 2147483648
osd class load list = *
osd class default list = *

[client.rgw.a]
keyring = {b}/rgw.a/keyring
rgw data = {b}/rgw.a
rgw frontends = beast endpoint=127.0.0.1:{self.rgw_port} tcp_nodelay=1
rgw dns name = 127.0.0.1
rgw enable apis = s3, admin, sts, notifications
rgw thread pool size = 64
rgw gc processor period = 60
"""
        )

    def start(self) -> RgwCluster:
        b = self.base
        for sub in ("run", "log", "crash", "mon.a", "osd.0", "rgw.a"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        self.write_conf(fsid)
        try:
            # mon
            self._run("ceph-authtool", "--create-keyring", f"{b}/mon.keyring", "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
            self._run("ceph-authtool", "--create-keyring", f"{b}/admin.keyring", "--gen-key", "-n", "client.admin",
                      "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *")  # fmt: skip
            self._run("ceph-authtool", f"{b}/mon.keyring", "--import-keyring", f"{b}/admin.keyring")
            self._run("monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]", f"{b}/monmap")
            self._run("ceph-mon", "-c", str(self.conf), "--mkfs", "-i", "a", "--monmap", f"{b}/monmap", "--keyring", f"{b}/mon.keyring")
            self._spawn("mon", "ceph-mon", "-i", "a")
            self._wait("ceph-mon", lambda: bool(self.ceph("mon", "stat")), 30)
            # osd on memstore
            osd_uuid = str(uuid.uuid4())
            secret = self._run("ceph-authtool", "--gen-print-key").strip()
            (b / "osd.0" / "new.json").write_text(json.dumps({"cephx_secret": secret}))
            osd_id = self.ceph("osd", "new", osd_uuid, "-i", f"{b}/osd.0/new.json").strip()
            if osd_id != "0":
                raise RgwError(f"unexpected osd id {osd_id!r}")
            (b / "osd.0" / "keyring").write_text(f"[osd.0]\n\tkey = {secret}\n")
            self._run("ceph-osd", "-c", str(self.conf), "-i", "0", "--mkfs", "--key", secret, "--osd-uuid", osd_uuid)
            self._spawn("osd", "ceph-osd", "-i", "0")
            self._wait("ceph-osd", lambda: "osd.0 up" in self.ceph("osd", "dump"), 60)
            # rgw
            self.ceph("auth", "get-or-create", "client.rgw.a", "mon", "allow rw", "osd", "allow rwx", "mgr", "allow rw", "-o", f"{b}/rgw.a/keyring")
            self.start_rgw()
            self._run("radosgw-admin", "-c", str(self.conf), "user", "create", "--uid", "tester", "--display-name", "tester",
                      "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY)  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def start_rgw(self, timeout: float = 90) -> None:
        self._spawn("rgw", "radosgw", "-n", "client.rgw.a")
        self._wait("radosgw", self.endpoint_up, timeout)

    def stop_rgw(self) -> None:
        self._stop("rgw")

    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop(self) -> None:
        for name in ("rgw", "osd", "mon"):
            self._stop(name)

    # --- connection settings ------------------------------------------------------------------

    def env(self, **overrides: str) -> dict[str, str]:
        """The standard AWS variables pointing at this RGW (path-style comes from the
        channel store itself; nothing else is needed)."""
        env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        env.update(overrides)
        return env
