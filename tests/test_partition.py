"""A pair under partition, and a takeover after an unpublished cache write.

Two real daemons on one channel and one real PostgreSQL, each daemon reaching the
database through a TCP proxy of the test's own (tests/tcpproxy.py). A partition stalls the
leader's proxy: nothing is passed on, nothing is closed. Who wrote what is seen from
outside the daemons: in a folder by fanotify (tests/fanwatch.py: the writing pid of every
create, modify, rename and removal), in a bucket by the journal of a second proxy of the
test's own between each daemon and RGW (tests/faultproxy.py). Takeovers are read from the
lease row.

- >= 10 rounds (50 with --long), on a folder and on a bucket, with packages arriving, the
  partition starting at a random moment, mid-publish (the leader's next temporary file or
  PUT) or right after a commit (the database did the COMMIT of a publish step's lease
  check; its answer is held), some
  rounds cutting the answers 0.3 s before the requests: the standby takes over within
  2 x the lease; the deposed leader writes nothing after the takeover, while cut off or
  after the link returns; at the end exactly one leader, repodata.json, its .zst and every
  shard agree, and repodata.json equals a fresh index of the same packages.
- A package stored in the shared cache by a leader that is killed before it publishes:
  after the takeover every package in repodata.json is in its name's shard.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from conda_indexd.formats import shards
from conftest import run_index
from daemonproc import DaemonProcess, all_records, wait_for
from fanwatch import FolderAudit, Write
from faultproxy import FaultProxy, Forwarded
from tcpproxy import TcpProxy
from test_pair import LEASE, SUBDIRS, Arrivals, fresh_index, published_repodata, unstamped

PARTITION_LEASE = 2.0  # seconds: the rounds' takeovers take about this long
COMMIT_DONE = b"C\x00\x00\x00\x0bCOMMIT\x00"  # PostgreSQL's CommandComplete of a COMMIT
LEASE_CHECK = b"holder\x00"  # a column of the lease check's answer
LEASE_SESSION = b"set_config\x00"  # a column only the lease session's first queries answer: its COMMITs are publish steps'


def lease_row(pg_server, url: str) -> tuple[int, str | None, float]:
    token, holder, acquired = pg_server.execute(url, "SELECT token, holder, extract(epoch FROM acquired_at) FROM conda_indexd_lease")[0]
    return int(token), holder, float(acquired or 0)


def shards_agree(read: Callable[[str], bytes | None]) -> list[str]:
    """What repodata.json, its .zst and the shards say, per subdir: they must name the
    same packages with the same sha256. `read(key)`: the published bytes or None."""
    problems = []
    for subdir in SUBDIRS:
        doc = json.loads(read(f"{subdir}/repodata.json") or b"{}")
        zdoc = json.loads(zstandard.ZstdDecompressor().decompress(read(f"{subdir}/repodata.json.zst") or b""))
        index = shards.decode(read(f"{subdir}/{shards.SHARD_INDEX}") or b"")
        from_shards = {}
        for digest in index["shards"].values():
            shard = shards.decode(read(f"{subdir}/shards/{digest.hex()}.msgpack.zst") or b"")
            for section in ("packages", "packages.conda"):
                from_shards.update({fn: (rec["sha256"].hex(), rec.get("indexed_timestamp")) for fn, rec in shard[section].items()})
        as_map = {fn: (rec["sha256"], rec.get("indexed_timestamp")) for fn, rec in all_records(doc).items()}  # CEP-47: the same value too
        if as_map != from_shards:
            problems.append(f"{subdir}: repodata.json and the shards differ (not in shards: {sorted(set(as_map) - set(from_shards))}, "
                            f"only in shards: {sorted(set(from_shards) - set(as_map))})")  # fmt: skip
        if doc != zdoc:
            problems.append(f"{subdir}: repodata.json and its .zst differ")
    return problems


class Side:
    """Where the pair publishes, and how the test sees who wrote there."""

    arrivals: Arrivals

    def daemon_args(self, index: int) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def writes_after(self, index: int, pid: int, at: float) -> list[Any]:
        """What daemon `index` (process `pid`) wrote after `at`, as a reader could notice it."""
        raise NotImplementedError

    def on_first_write(self, index: int, pid: int, then: Callable[[], None]) -> Callable[[], None]:
        """Call `then` at the daemon's next write (mid-publish); returns the un-arming."""
        raise NotImplementedError

    def read(self, key: str) -> bytes | None:
        raise NotImplementedError

    def packages(self, into: Path) -> None:
        raise NotImplementedError

    def published(self) -> None:
        """The first publish is done: every folder the outputs go to exists."""

    def close(self) -> None:
        pass


class FolderSide(Side):
    """The channel folder; writes seen by fanotify with the writer's pid."""

    def __init__(self, channel: Path):
        self.channel = channel
        self.arrivals = Arrivals(channel)
        self.audit: FolderAudit | None = None

    def daemon_args(self, index: int) -> tuple[list[str], dict[str, str]]:
        return [str(self.channel)], {}

    def published(self) -> None:
        self.audit = FolderAudit([self.channel / s for s in SUBDIRS] + [self.channel / s / "shards" for s in SUBDIRS])

    def writes_after(self, index: int, pid: int, at: float) -> list[Any]:
        assert self.audit is not None
        # removing its own discarded temporary file is nothing a reader can see
        return [w for w in self.audit.by(pid, after=at) if not (w.kind == "delete" and w.temporary)]

    def on_first_write(self, index: int, pid: int, then: Callable[[], None]) -> Callable[[], None]:
        assert self.audit is not None
        audit = self.audit

        def listener(w: Write) -> None:
            if w.pid == pid and w.kind == "create" and w.temporary:
                then()

        audit.listeners.append(listener)
        return audit.listeners.clear

    def read(self, key: str) -> bytes | None:
        path = self.channel / key
        return path.read_bytes() if path.exists() else None

    def packages(self, into: Path) -> None:
        for subdir in SUBDIRS:
            (into / subdir).mkdir(parents=True)
            for p in (self.channel / subdir).iterdir():
                if p.name.endswith((".conda", ".tar.bz2")) and not p.name.startswith("."):
                    shutil.copy2(p, into / subdir / p.name)

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()


class BucketArrivals(Arrivals):
    """Packages PUT into the bucket under chan/ (the uploader's own client)."""

    def __init__(self, s3: Any, bucket: str, staging: Path):
        super().__init__(staging)
        self.s3, self.bucket = s3, bucket
        for subdir in SUBDIRS:
            (staging / subdir).mkdir(parents=True, exist_ok=True)

    def land(self) -> tuple[str, str]:
        subdir, fn = super().land()
        path = self.channel / subdir / fn
        self.s3.put_object(Bucket=self.bucket, Key=f"chan/{subdir}/{fn}", Body=path.read_bytes())
        path.unlink()
        return subdir, fn

    def published(self, wanted: list[tuple[str, str]]) -> bool:
        for subdir in SUBDIRS:
            names = {fn for s, fn in wanted if s == subdir}
            try:
                doc = json.loads(self.s3.get_object(Bucket=self.bucket, Key=f"chan/{subdir}/repodata.json")["Body"].read())
            except Exception:  # noqa: BLE001 - not there yet
                return False
            if not names <= all_records(doc).keys():
                return False
        return True


class BucketSide(Side):
    """A channel in an RGW bucket; each daemon reaches RGW through a proxy of the test's
    own, whose journal says which daemon sent which write and when."""

    def __init__(self, s3: Any, bucket: str, endpoint: str, tmp: Path):
        self.s3, self.bucket, self.tmp = s3, bucket, tmp
        self.arrivals = BucketArrivals(s3, bucket, tmp / "staging")
        self.proxies = [FaultProxy(endpoint).start(), FaultProxy(endpoint).start()]

    def daemon_args(self, index: int) -> tuple[list[str], dict[str, str]]:
        state = self.tmp / f"state-{index}"
        return [f"s3://{self.bucket}/chan", "--cache-dir", str(state), "--polling", "--poll-interval", "0.3"], {
            "AWS_ENDPOINT_URL": self.proxies[index].endpoint
        }

    def writes_after(self, index: int, pid: int, at: float) -> list[Any]:
        return [f for f in self.proxies[index].journal if f.at > at and f.method in ("PUT", "POST", "DELETE") and not 400 <= f.status < 600]

    def on_first_write(self, index: int, pid: int, then: Callable[[], None]) -> Callable[[], None]:
        proxy = self.proxies[index]

        def listener(f: Forwarded) -> None:
            if f.method == "PUT":
                then()

        proxy.listeners.append(listener)
        return proxy.listeners.clear

    def read(self, key: str) -> bytes | None:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=f"chan/{key}")["Body"].read()
        except Exception:  # noqa: BLE001 - absent
            return None

    def packages(self, into: Path) -> None:
        for subdir in SUBDIRS:
            (into / subdir).mkdir(parents=True)
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix="chan/"):
            for obj in page.get("Contents", ()):
                subdir, _, name = obj["Key"].removeprefix("chan/").partition("/")
                if subdir in SUBDIRS and "/" not in name and name.endswith((".conda", ".tar.bz2")):
                    (into / subdir / name).write_bytes(self.s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read())

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.stop()


class ProxiedPair:
    """Two daemons, each reaching the database through its own TCP proxy."""

    def __init__(self, side: Side, url: str, workdir: Path):
        self.side, self.url = side, url
        host, port = url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)
        self.proxies = [TcpProxy(host, int(port)), TcpProxy(host, int(port))]
        self.daemons = []
        for i, proxy in enumerate(self.proxies):
            where, env = side.daemon_args(i)
            db_url = url.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")
            d = DaemonProcess(workdir, "--db", "postgresql", "--db-url", db_url, debounce=0.1, settle=0.2, env=env,
                              log=workdir / f"daemon-{i}.log")  # fmt: skip
            d.args[d.args.index(str(workdir))] = where[0]
            d.args += where[1:]
            self.daemons.append(d)

    def start(self) -> ProxiedPair:
        for d in self.daemons:
            d.start(wait_ready=False)
        for d in self.daemons:
            wait_for(lambda d=d: d.get("/readyz")[0] == 200, 60, what="both ready")
        return self

    def status(self, d: DaemonProcess) -> dict[str, Any]:
        return json.loads(d.get("/status.json")[1])["role"]

    def by_holder(self, holder: str | None) -> int | None:
        return next((i for i, d in enumerate(self.daemons) if self.status(d)["holder"] == holder), None)

    def stop(self) -> None:
        for p in self.proxies:
            p.resume()
        for d in self.daemons:
            d.stop()
        for p in self.proxies:
            p.close()
        for d in self.daemons:
            assert "Traceback" not in d.log_text(), d.log_text()[-3000:]


def partition_rounds(pair: ProxiedPair, side: Side, pg_server: Any, rounds: int, tmp_path: Path) -> list[dict[str, Any]]:
    """The rounds (see the module docstring); returns their figures."""
    seed = int(os.environ.get("CONDA_INDEXD_SEED", "0")) or random.randrange(1 << 30)
    rng = random.Random(seed)
    arrivals = side.arrivals
    modes = ["random", "mid-publish", "after-commit"]
    figures: list[dict[str, Any]] = []
    for round_no in range(rounds):
        mode = modes[round_no % len(modes)]
        token, holder, _ = lease_row(pg_server, pair.url)
        index = wait_for(lambda h=holder: [i] if (i := pair.by_holder(h)) is not None else None, 10, what="the lease holder's daemon")[0]
        leader, proxy = pair.daemons[index], pair.proxies[index]
        assert leader.proc is not None
        stop = threading.Event()

        def arriving(stop: threading.Event = stop) -> None:
            while not stop.is_set():
                arrivals.land()
                time.sleep(rng.uniform(0.05, 0.3))

        thread = threading.Thread(target=arriving)
        thread.start()
        stalled = threading.Event()

        # the database's answers are cut first and the leader's requests a moment later:
        # what the leader sends meanwhile (a lease check) is done by the database, and its
        # answer, a "yes", arrives only when the link comes back, after the takeover
        answers_first = rng.choice([0.0, 0.3])

        def cut(proxy: TcpProxy = proxy, stalled: threading.Event = stalled, answers_first: float = answers_first) -> None:
            if not stalled.is_set():
                proxy.stall(answers_first)
                stalled.set()

        try:
            if mode == "mid-publish":  # at the leader's next write from now on
                disarm = side.on_first_write(index, leader.proc.pid, cut)
                stalled.wait(10)
                disarm()
            elif mode == "after-commit":  # a COMMIT done by the database, its answer not passed on
                proxy.stall_on(COMMIT_DONE, stalled.set, after=LEASE_CHECK, only_on=LEASE_SESSION)
                stalled.wait(10)
            else:
                time.sleep(rng.uniform(0.2, 1.5))
                cut()
            assert stalled.is_set(), f"round {round_no}: the {mode} moment never came"
            cut_at = time.monotonic()
            new = wait_for(lambda t=token: (r := lease_row(pg_server, pair.url))[0] > t and r, 2 * PARTITION_LEASE + 2, interval=0.05,
                           what=f"round {round_no} ({mode}): a takeover")  # fmt: skip
            took = time.monotonic() - cut_at
            new_token, new_holder, acquired_at = new
            assert new_holder != holder
            assert took <= 2 * PARTITION_LEASE, f"round {round_no}: takeover {took:.2f} s after the cut (lease {PARTITION_LEASE} s)"
            time.sleep(rng.uniform(0.3, 2.0))  # the deposed leader stays cut off for a while
        finally:
            proxy.resume()
            stop.set()
            thread.join()
        # it comes back as the standby (the answers it gets late prove nothing)
        wait_for(lambda d=leader: pair.status(d)["role"] == "standby", 30, what=f"round {round_no}: the old leader a standby")
        time.sleep(0.5)  # anything it would still write after the link returned
        late = side.writes_after(index, leader.proc.pid, acquired_at)
        assert late == [], f"round {round_no} ({mode}, seed {seed}): the deposed leader wrote after the takeover: {late[:5]}"
        figures.append({"mode": mode, "answers_first": answers_first, "takeover_s": round(took, 2), "token": new_token})
    wait_for(lambda: arrivals.published(arrivals.landed), 30, what="every package published")
    roles = sorted(pair.status(d)["role"] for d in pair.daemons)
    assert roles == ["leader", "standby"], roles
    wait_for(lambda: not shards_agree(side.read) or None, 15, what=f"repodata.json and the shards agree: {shards_agree(side.read)}")
    fresh = tmp_path / "fresh"
    side.packages(fresh)
    run_index(fresh, "--no-write-shards")
    for subdir in SUBDIRS:
        published = side.read(f"{subdir}/repodata.json")
        assert published is not None and unstamped(published) == unstamped((fresh / subdir / "repodata.json").read_bytes()), subdir
    print("partition rounds", json.dumps({"seed": seed, "packages": len(arrivals.landed), "rounds": figures}))
    return figures


def run_partition_test(side: Side, pg_server: Any, db: str, tmp_path: Path, rounds: int) -> None:
    """A pair on `side` with a few packages published, then the rounds."""
    for _ in range(4):
        side.arrivals.land()
    pair = ProxiedPair(side, pg_server.createdb(db), tmp_path)
    try:
        pair.start()
        wait_for(lambda: side.arrivals.published(side.arrivals.landed), 30, what="first publish")
        side.published()
        partition_rounds(pair, side, pg_server, rounds, tmp_path)
    finally:
        pair.stop()
        side.close()


@pytest.mark.timeout(1800)
def test_partitioned_leader_writes_nothing_to_the_folder_after_the_takeover(
    tmp_path: Path, pg_server, monkeypatch: pytest.MonkeyPatch, long_mode: bool
) -> None:
    if (why := FolderAudit.unavailable()) is not None:
        pytest.skip(why)
    monkeypatch.setenv("CONDA_INDEXD_LEASE", str(PARTITION_LEASE))
    channel = tmp_path / "channel"
    for subdir in SUBDIRS:
        (channel / subdir).mkdir(parents=True)
    run_partition_test(FolderSide(channel), pg_server, "partition", tmp_path, 50 if long_mode else 10)


@pytest.mark.timeout(1800)
def test_partitioned_leader_writes_nothing_to_the_bucket_after_the_takeover(
    tmp_path: Path, rgw: Any, s3: Any, bucket: str, pg_server: Any, monkeypatch: pytest.MonkeyPatch, long_mode: bool
) -> None:
    monkeypatch.setenv("CONDA_INDEXD_LEASE", str(PARTITION_LEASE))
    run_partition_test(BucketSide(s3, bucket, rgw.endpoint, tmp_path), pg_server, "s3partition", tmp_path, 50 if long_mode else 10)


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
        read = lambda k: (channel / k).read_bytes() if (channel / k).exists() else None  # noqa: E731
        # repodata.json is renamed into place before its .zst (outputs.py's order): the
        # publish that brought it in is over once they agree
        wait_for(lambda: shards_agree(read) == [], 10, what="the new leader's publish to finish")
        assert shards_agree(read) == []
        assert published_repodata(channel) == fresh_index(channel, tmp_path)
    finally:
        if old is not None and old.poll() is None:
            old.kill()
        first.stop()
        if standby is not None:
            standby.stop()
            assert "Traceback" not in standby.log_text(), standby.log_text()[-3000:]
