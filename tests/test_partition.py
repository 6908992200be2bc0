"""A pair under partition, and a takeover after an unpublished cache write.

Two real daemons on one channel folder and one real PostgreSQL, each daemon reaching the
database through a TCP proxy of the test's own (tests/tcpproxy.py). A partition stalls the
leader's proxy: nothing is answered, nothing is closed. Who wrote what in the channel is
seen from outside by fanotify (tests/fanwatch.py: the writing pid of every create, modify,
rename and removal); takeovers are read from the lease row, not from the daemons.

- >= 10 rounds (50 with --long) with packages arriving, the partition starting at a random
  moment, mid-publish (the leader's first temporary file) or right after a cache commit
  (a new index_json row): the standby takes over within 2 x the lease; the deposed leader
  writes nothing to the channel after the takeover, while cut off or after the link
  returns; at the end exactly one leader, repodata.json and every shard agree, and
  repodata.json equals a fresh index.
- A package stored in the shared cache by a leader that is killed before it publishes:
  after the takeover every package in repodata.json is in its name's shard.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from daemonproc import DaemonProcess, wait_for
from fanwatch import FolderAudit, Write
from tcpproxy import TcpProxy
from test_crash import described
from test_pair import LEASE, SUBDIRS, Arrivals, fresh_index

pytestmark = pytest.mark.skipif(FolderAudit.unavailable() is not None, reason=str(FolderAudit.unavailable()))


def lease_row(pg_server, url: str) -> tuple[int, str | None, float]:
    token, holder, acquired = pg_server.execute(url, "SELECT token, holder, extract(epoch FROM acquired_at) FROM conda_indexd_lease")[0]
    return int(token), holder, float(acquired or 0)


class ProxiedPair:
    """Two daemons, each with its own proxy to the database."""

    def __init__(self, channel: Path, url: str):
        self.channel, self.url = channel, url
        host_port = url.split("@", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        self.proxies = [TcpProxy(host, int(port)), TcpProxy(host, int(port))]
        self.daemons = [self._daemon(p) for p in self.proxies]

    def _daemon(self, proxy: TcpProxy) -> DaemonProcess:
        url = self.url.replace(self.url.split("@", 1)[1].split("/", 1)[0], f"127.0.0.1:{proxy.port}")
        return DaemonProcess(self.channel, "--db", "postgresql", "--db-url", url, debounce=0.1, settle=0.2)

    def start(self) -> ProxiedPair:
        for d in self.daemons:
            d.start(wait_ready=False)
        for d in self.daemons:
            wait_for(lambda d=d: d.get("/readyz")[0] == 200, 60, what="both ready")
        return self

    def status(self, d: DaemonProcess) -> dict[str, Any]:
        return json.loads(d.get("/status.json")[1])["role"]

    def by_holder(self, holder: str | None) -> DaemonProcess | None:
        return next((d for d in self.daemons if self.status(d)["holder"] == holder), None)

    def proxy_of(self, d: DaemonProcess) -> TcpProxy:
        return self.proxies[self.daemons.index(d)]

    def stop(self) -> None:
        for p in self.proxies:
            p.resume()
        for d in self.daemons:
            d.stop()
        for p in self.proxies:
            p.close()


@pytest.fixture
def proxied(tmp_path: Path, pg_server, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CONDA_INDEXD_LEASE", str(LEASE))
    channel = tmp_path / "channel"
    for subdir in SUBDIRS:
        (channel / subdir).mkdir(parents=True)
    p = ProxiedPair(channel, pg_server.createdb("partition"))
    try:
        yield p
    finally:
        p.stop()
    for d in p.daemons:
        assert "Traceback" not in d.log_text(), d.log_text()[-3000:]


def shards_agree(channel: Path) -> list[str]:
    problems = []
    for subdir in SUBDIRS:
        doc, zdoc, from_shards = described(channel, subdir)
        if doc != from_shards:
            missing = sorted(set(doc) - set(from_shards))
            extra = sorted(set(from_shards) - set(doc))
            problems.append(f"{subdir}: repodata.json and the shards differ (not in shards: {missing}, only in shards: {extra})")
        if doc != zdoc:
            problems.append(f"{subdir}: repodata.json and its .zst differ")
    return problems


def visible(writes: list[Write]) -> list[Write]:
    """What a reader could notice: anything but removing one's own discarded temporary file."""
    return [w for w in writes if not (w.kind == "delete" and w.temporary)]


@pytest.mark.timeout(1800)
def test_partitioned_leader_writes_nothing_after_the_takeover(proxied: ProxiedPair, pg_server, tmp_path: Path, long_mode: bool) -> None:
    rounds = 50 if long_mode else 10
    seed = int(os.environ.get("CONDA_INDEXD_SEED", "0")) or random.randrange(1 << 30)
    rng = random.Random(seed)
    arrivals = Arrivals(proxied.channel)
    for _ in range(4):
        arrivals.land()
    proxied.start()
    wait_for(lambda: arrivals.published(arrivals.landed), 30, what="first publish")
    folders = [proxied.channel / s for s in SUBDIRS] + [proxied.channel / s / "shards" for s in SUBDIRS]
    audit = FolderAudit(folders)
    modes = ["random", "mid-publish", "after-commit"]
    figures: list[dict[str, Any]] = []
    try:
        for round_no in range(rounds):
            mode = modes[round_no % len(modes)]
            token, holder, _ = lease_row(pg_server, proxied.url)
            leader = wait_for(lambda h=holder: proxied.by_holder(h), 10, what="the lease holder's daemon")
            assert leader.proc is not None
            proxy = proxied.proxy_of(leader)
            stop = threading.Event()

            def arriving(stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    arrivals.land()
                    time.sleep(rng.uniform(0.05, 0.3))

            thread = threading.Thread(target=arriving)
            thread.start()
            stalled = threading.Event()
            try:
                if mode == "mid-publish":  # the leader's first temporary file from now on

                    def on_write(w: Write, pid: int = leader.proc.pid, proxy: TcpProxy = proxy, stalled: threading.Event = stalled) -> None:
                        if w.pid == pid and w.kind == "create" and w.temporary and not stalled.is_set():
                            proxy.stall()
                            stalled.set()

                    audit.listeners.append(on_write)
                    stalled.wait(10)
                    audit.listeners.clear()
                elif mode == "after-commit":  # a new row in the shared cache
                    rows = pg_server.execute(proxied.url, "SELECT count(*) FROM index_json")[0][0]
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline:
                        if pg_server.execute(proxied.url, "SELECT count(*) FROM index_json")[0][0] != rows:
                            break
                        time.sleep(0.01)
                    proxy.stall()
                    stalled.set()
                else:
                    time.sleep(rng.uniform(0.2, 1.5))
                    proxy.stall()
                    stalled.set()
                assert stalled.is_set(), f"round {round_no}: the {mode} moment never came"
                cut_at = time.monotonic()
                new = wait_for(lambda t=token: (r := lease_row(pg_server, proxied.url))[0] > t and r, 2 * LEASE + 1, interval=0.05,
                               what=f"round {round_no} ({mode}): a takeover")  # fmt: skip
                took = time.monotonic() - cut_at
                new_token, new_holder, acquired_at = new
                assert new_holder != holder
                assert took <= 2 * LEASE, f"round {round_no}: takeover {took:.2f} s after the cut (lease {LEASE} s)"
                time.sleep(rng.uniform(0.5, 4.0))  # the deposed leader stays cut off for a while
            finally:
                proxy.resume()
                stop.set()
                thread.join()
            # it comes back as the standby (its late answers prove nothing)
            wait_for(lambda d=leader: proxied.status(d)["role"] == "standby", 30, what=f"round {round_no}: the old leader a standby")
            time.sleep(1.0)  # anything it would still write after the link returned
            late = visible(audit.by(leader.proc.pid, after=acquired_at))
            assert late == [], f"round {round_no} ({mode}, seed {seed}): the deposed leader wrote after the takeover: {late[:5]}"
            figures.append({"mode": mode, "takeover_s": round(took, 2), "token": new_token})
        wait_for(lambda: arrivals.published(arrivals.landed), 30, what="every package published")
        time.sleep(1.0)
        roles = sorted(proxied.status(d)["role"] for d in proxied.daemons)
        assert roles == ["leader", "standby"], roles
        problems = wait_for(lambda: not shards_agree(proxied.channel) or None, 15, what="repodata.json and shards agree") and []
        assert problems == []
        final = {s: (proxied.channel / s / "repodata.json").read_bytes() for s in SUBDIRS}
        assert final == fresh_index(proxied.channel, tmp_path)
    finally:
        audit.close()
    print("partition rounds", json.dumps({"seed": seed, "packages": len(arrivals.landed), "rounds": figures}))


# A leader cut at the worst moment, played by a real process of our own code: it takes the
# lease, stores one new package in the shared cache through the indexing path's own stages
# (fs rows, extraction) and never publishes; the test kills it with SIGKILL once the
# standby's memo holds the record.
OLD_LEADER = r"""
import sys, time
from pathlib import Path
from conda_indexd.backends import open_backends
from conda_indexd.config import IndexConfig
from conda_indexd.pipeline.extract import extract
from conda_indexd.pipeline.fsstate import update_fs_stage
from conda_indexd.ha.leader import Leadership
from conda_indexd.ha.channelid import channel_identity

channel, url, subdir, lease = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
config = IndexConfig(channel=channel, db="postgresql", db_url=url)
identify = channel_identity(config)
leadership = Leadership(url, identify, lease=lease)
while not leadership.try_acquire():
    time.sleep(0.1)
leadership.start()
backends = open_backends(config, leadership, leadership.application_name)
with backends.caches.open(subdir) as cache:
    update_fs_stage(cache, backends.packages, subdir, touched=None, hold=(), listing=None)
    changed = cache.changed_packages(None)
    extract(cache, backends.packages, subdir, changed, 1, None, None)
print("stored", sorted(changed), flush=True)
time.sleep(3600)
"""


@pytest.mark.timeout(300)
def test_a_takeover_after_an_unpublished_cache_write_rebuilds_its_shard(tmp_path: Path, pg_server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONDA_INDEXD_LEASE", str(LEASE))
    channel = tmp_path / "channel"
    for subdir in SUBDIRS:
        (channel / subdir).mkdir(parents=True)
    url = pg_server.createdb("takeover")
    arrivals = Arrivals(channel)
    for _ in range(14):  # the 15th is pkg1 in linux-64, like the 1st
        arrivals.land()
    first = DaemonProcess(channel, "--db", "postgresql", "--db-url", url, debounce=0.1, settle=0.2).start()
    standby = None
    old = None
    try:
        wait_for(lambda: arrivals.published(arrivals.landed), 30, what="first publish")
        first.stop()  # the channel is published; now the old leader of the story takes the lease
        subdir, fn = arrivals.land()  # a new version of a name that already has a shard
        name = fn.split("-")[0]
        doc = json.loads((channel / subdir / "repodata.json").read_bytes())
        assert any(r["name"] == name for r in {**doc["packages"], **doc["packages.conda"]}.values()), "the name has a shard already"
        old = subprocess.Popen([sys.executable, "-c", OLD_LEADER, str(channel), url, subdir, str(LEASE)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        assert old.stdout is not None
        seen = []
        while not (line := old.stdout.readline()).startswith("stored") and line:  # its log lines come first
            seen.append(line)
        assert line.startswith("stored") and fn in line, "".join(seen) + line
        # a standby is ready once its first warm-up read every record of the shared cache,
        # this unpublished one included (pair.py)
        standby = DaemonProcess(channel, "--db", "postgresql", "--db-url", url, debounce=0.1, settle=0.2).start()
        assert json.loads(standby.get("/status.json")[1])["role"]["role"] == "standby"
        assert fn not in json.dumps(json.loads((channel / subdir / "repodata.json").read_bytes())), "published before the takeover"
        old.kill()  # kill -9: the old leader never publishes
        old.wait(10)
        wait_for(lambda: json.loads(standby.get("/status.json")[1])["role"]["role"] == "leader", 20, what="the takeover")
        wait_for(lambda: arrivals.published(arrivals.landed), 20, what=f"{fn} published by the new leader")
        assert shards_agree(channel) == []
        assert {s: (channel / s / "repodata.json").read_bytes() for s in SUBDIRS} == fresh_index(channel, tmp_path)
    finally:
        if old is not None and old.poll() is None:
            old.kill()
        first.stop()
        if standby is not None:
            standby.stop()
            assert "Traceback" not in standby.log_text(), standby.log_text()[-3000:]
