"""An active/standby pair: two real daemons on one channel folder and one real
PostgreSQL (tests/pgserver.py), leadership by the lease row with fencing (leader.py).

- kill -9 the leader while packages keep arriving: the standby publishes within 10 s,
  nothing is lost, the publish log shows no overlap and no stale token, and the final
  outputs equal a fresh index (3 rounds; 50 with --long);
- the leader's database sessions ended (pg_terminate_backend): it steps down;
- the leader frozen (SIGSTOP) past its lease, then resumed: it publishes nothing more;
- the database restarted: both recover, one leads.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli, run_index
from daemonproc import DaemonProcess, all_records, wait_for
from pkgfactory import conda_bytes, index_json, tar_bz2_bytes

LEASE = 3.0  # seconds: short, so the freeze test is quick (kill -9 does not wait for it)
SUBDIRS = ("noarch", "linux-64")


class Arrivals:
    """Packages landing by rename, one after another, in both subdirs."""

    def __init__(self, channel: Path):
        self.channel = channel
        self.count = 0
        self.landed: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def land(self) -> tuple[str, str]:
        with self.lock:
            self.count += 1
            n = self.count
        subdir = SUBDIRS[n % 2]
        fn = f"pkg{n % 7}-1.{n}-0.conda" if n % 3 else f"pkg{n % 7}-1.{n}-0.tar.bz2"
        idx = index_json(f"pkg{n % 7}", f"1.{n}", "0", subdir)
        files = {"lib/payload": f"payload {n}".encode()}
        tmp = self.channel / subdir / f".{fn}.part"
        tmp.write_bytes(conda_bytes(fn, idx, files) if fn.endswith(".conda") else tar_bz2_bytes(idx, files))
        os.replace(tmp, self.channel / subdir / fn)
        with self.lock:
            self.landed.append((subdir, fn))
        return subdir, fn

    def published(self, wanted: list[tuple[str, str]]) -> bool:
        for subdir in SUBDIRS:
            names = {fn for s, fn in wanted if s == subdir}
            doc = json.loads((self.channel / subdir / "repodata.json").read_bytes())
            if not names <= all_records(doc).keys():
                return False
        return True


class Pair:
    def __init__(self, channel: Path, url: str):
        self.channel, self.url = channel, url
        self.daemons = [self._daemon(), self._daemon()]

    def _daemon(self) -> DaemonProcess:
        return DaemonProcess(self.channel, "--db", "postgresql", "--db-url", self.url, debounce=0.1, settle=0.2)

    def start(self) -> Pair:
        for d in self.daemons:
            d.start(wait_ready=False)
        for d in self.daemons:
            wait_for(lambda d=d: d.get("/readyz")[0] == 200, 60, what="both ready")
        return self

    def role(self, d: DaemonProcess) -> dict[str, Any]:
        return json.loads(d.get("/status.json")[1])["role"]

    def leader(self, timeout: float = 30) -> DaemonProcess:
        return wait_for(lambda: next((d for d in self.daemons if self.role(d)["role"] == "leader"), None), timeout,
                        interval=0.1, what="a leader")  # fmt: skip

    def replace(self, old: DaemonProcess) -> DaemonProcess:
        new = self._daemon()
        self.daemons[self.daemons.index(old)] = new
        return new.start(wait_ready=False)

    def stop(self) -> None:
        for d in self.daemons:
            if d.proc is not None and d.proc.poll() is None:
                d.signal(signal.SIGCONT)
            d.stop()


@pytest.fixture
def pair(tmp_path: Path, pg_server, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CONDA_INDEXD_LEASE", str(LEASE))
    channel = tmp_path / "channel"
    for subdir in SUBDIRS:
        (channel / subdir).mkdir(parents=True)
    p = Pair(channel, pg_server.createdb("pair"))
    try:
        yield p
    finally:
        p.stop()
    for d in p.daemons:
        assert "Traceback" not in d.log_text(), d.log_text()[-3000:]


def audit(pg_server, url: str) -> list[tuple[int, str, int]]:
    """The publish log: one leader per token, tokens in order, no two intervals overlapping."""
    rows = pg_server.execute(url, "SELECT id, token, leader, at FROM conda_indexd_publish_log ORDER BY id")
    assert rows, "nothing was published"
    tokens = [r[1] for r in rows]
    assert tokens == sorted(tokens), "a publish with a stale token after a newer leader's"
    spans: dict[int, list[Any]] = {}
    for _, token, leader, at in rows:
        span = spans.setdefault(token, [leader, at, at, 0])
        assert span[0] == leader, f"token {token} used by two daemons"
        span[2], span[3] = at, span[3] + 1
    ordered = sorted(spans.items())
    for (t1, s1), (t2, s2) in zip(ordered, ordered[1:], strict=False):
        assert s1[2] < s2[1], f"token {t1} published until {s1[2]}, after token {t2} began at {s2[1]}"
    return [(token, span[0], span[3]) for token, span in ordered]


STAMP = re.compile(rb'"indexed_timestamp":\d+,')


def unstamped(data: bytes) -> bytes:
    """repodata.json without CEP-47 indexed_timestamp values: a fresh index of a copy sees
    every file arrive at its own run (the values are checked on their own)."""
    return STAMP.sub(b"", data)


def published_repodata(channel: Path) -> dict[str, bytes]:
    return {s: unstamped((channel / s / "repodata.json").read_bytes()) for s in SUBDIRS}


def stamps_of(channel: Path) -> dict[str, int]:
    """{subdir/filename: indexed_timestamp} of every published record (each must have one)."""
    out = {}
    for s in SUBDIRS:
        for fn, record in all_records(json.loads((channel / s / "repodata.json").read_bytes())).items():
            out[f"{s}/{fn}"] = record["indexed_timestamp"]
    return out


def fresh_index(channel: Path, tmp: Path) -> dict[str, bytes]:
    copy = tmp / "fresh"
    for subdir in SUBDIRS:
        (copy / subdir).mkdir(parents=True)
        for p in (channel / subdir).iterdir():
            if p.name.endswith((".conda", ".tar.bz2")) and not p.name.startswith("."):
                shutil.copy2(p, copy / subdir / p.name)
    run_index(copy, "--no-write-shards")
    return published_repodata(copy)


@pytest.mark.timeout(1800)
def test_kill_9_the_leader_while_packages_arrive(pair: Pair, pg_server, tmp_path: Path, long_mode: bool) -> None:
    rounds = 50 if long_mode else 3
    rng = random.Random(int(os.environ.get("CONDA_INDEXD_SEED", "0")) or None)
    arrivals = Arrivals(pair.channel)
    for _ in range(6):
        arrivals.land()
    pair.start()
    wait_for(lambda: arrivals.published(arrivals.landed), 30, what="first publish")
    takeovers: list[float] = []
    seen_stamps = stamps_of(pair.channel)  # CEP-47: a value, once published, is never changed by a takeover
    for round_no in range(rounds):
        leader = pair.leader()
        stop = threading.Event()

        def arriving(stop: threading.Event = stop) -> None:
            while not stop.is_set():
                arrivals.land()
                time.sleep(rng.uniform(0.02, 0.15))

        thread = threading.Thread(target=arriving)
        thread.start()
        try:
            time.sleep(rng.uniform(0.3, 1.5))
            assert leader.proc is not None
            arrivals.land()  # one the leader cannot have published yet (debounce): the takeover must
            leader.proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            with arrivals.lock:
                before_kill = list(arrivals.landed)
            wait_for(lambda b=before_kill: arrivals.published(b), 10, interval=0.05,
                     what=f"round {round_no}: the standby published within 10 s of the kill")  # fmt: skip
            takeovers.append(time.monotonic() - killed_at)
            now_stamps = stamps_of(pair.channel)
            assert {k: now_stamps[k] for k in seen_stamps if k in now_stamps} == {k: v for k, v in seen_stamps.items() if k in now_stamps}
            seen_stamps.update(now_stamps)
        finally:
            stop.set()
            thread.join()
        leader.proc.wait(10)
        pair.replace(leader)  # the killed one comes back as the standby
    wait_for(lambda: arrivals.published(arrivals.landed), 30, what="every package published")
    for d in pair.daemons:
        wait_for(lambda d=d: d.get("/readyz")[0] == 200, 60, what="both ready at the end")
    final = published_repodata(pair.channel)
    assert final == fresh_index(pair.channel, tmp_path)  # nothing lost, nothing stale
    final_stamps = stamps_of(pair.channel)
    assert {k: v for k, v in final_stamps.items() if k in seen_stamps} == {k: seen_stamps[k] for k in final_stamps if k in seen_stamps}
    tokens = audit(pg_server, pair.url)
    assert len(tokens) >= rounds + 1
    q = statistics.quantiles(takeovers, n=10) if len(takeovers) > 1 else takeovers
    print("takeover seconds", json.dumps({"rounds": rounds, "packages": len(arrivals.landed), "min": round(min(takeovers), 2),
          "median": round(statistics.median(takeovers), 2), "p90": round(q[-1], 2), "max": round(max(takeovers), 2),
          "all": [round(t, 2) for t in takeovers], "tokens": len(tokens)}))  # fmt: skip
    standby = next(d for d in pair.daemons if pair.role(d)["role"] == "standby")
    assert standby.metric("conda_indexd_leader") == 0
    leader = pair.leader()
    assert leader.metric("conda_indexd_leader") == 1
    assert leader.metric("conda_indexd_leadership_changes_total", to="leader") >= 1


def _sessions(pg_server, url: str, holder: str) -> list[int]:
    return [r[0] for r in pg_server.execute(url, "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                                            (f"conda-indexd {holder}",))]  # fmt: skip


@pytest.mark.timeout(180)
def test_leader_session_terminated_steps_down(pair: Pair, pg_server) -> None:
    arrivals = Arrivals(pair.channel)
    arrivals.land()
    pair.start()
    leader = pair.leader()
    other = next(d for d in pair.daemons if d is not leader)
    holder = pair.role(leader)["holder"]
    old_token = pair.role(leader)["token"]
    busy = run_cli("index", pair.channel, "--db", "postgresql", "--db-url", pair.url)
    assert busy.rc == 3 and len(busy.stderr.strip().splitlines()) == 1 and "conda-indexd leader" in busy.stderr, busy
    assert _sessions(pg_server, pair.url, holder)
    pg_server.execute(pair.url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                      (f"conda-indexd {holder}",))  # fmt: skip
    wait_for(lambda: any(r.get("event") == "stepped down" for r in leader.log_records()), 10, what="step-down logged")
    wait_for(lambda: pair.role(other)["role"] == "leader", 15, what="the standby took over")
    assert pair.role(other)["token"] > old_token
    _, fn = arrivals.land()
    wait_for(lambda: arrivals.published(arrivals.landed), 15, what=f"{fn} published by the new leader")
    wait_for(lambda: pair.role(leader)["role"] == "standby", 15, what="the old leader reconnects as the standby")
    wait_for(lambda: leader.get("/readyz")[0] == 200, 15, what="the old leader is a healthy standby")
    assert leader.metric("conda_indexd_leadership_changes_total", to="standby") == 1
    audit(pg_server, pair.url)


@pytest.mark.timeout(180)
def test_frozen_leader_does_not_publish_after_resuming(pair: Pair, pg_server) -> None:
    arrivals = Arrivals(pair.channel)
    arrivals.land()
    pair.start()
    leader = pair.leader()
    other = next(d for d in pair.daemons if d is not leader)
    old_token = pair.role(leader)["token"]
    leader.signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        arrivals.land()
        wait_for(lambda: arrivals.published(arrivals.landed), LEASE + 10, what="the standby publishes after the lease")
        assert time.monotonic() - frozen_at >= LEASE * 0.8  # it waited for the lease, not less
        new_token = pair.role(other)["token"]
        assert new_token > old_token
        time.sleep(1)
    finally:
        published_before = sum(r.get("event") == "published" for r in leader.log_records())
        leader.signal(signal.SIGCONT)
    wait_for(lambda: pair.role(leader)["role"] != "leader", 10, what="the resumed leader knows it is not")
    _, fn = arrivals.land()
    wait_for(lambda: arrivals.published(arrivals.landed), 15, what=f"{fn} published")
    time.sleep(1.5)
    rows = pg_server.execute(pair.url, "SELECT token, step FROM conda_indexd_publish_log WHERE token = %s AND id > "
                             "(SELECT min(id) FROM conda_indexd_publish_log WHERE token = %s)", (old_token, new_token))  # fmt: skip
    assert rows == [], f"the resumed leader published with its old token: {rows}"
    records = leader.log_records()
    assert any(r.get("event") == "stepped down" for r in records)
    assert sum(r.get("event") == "published" for r in records) == published_before, "the resumed leader published"
    audit(pg_server, pair.url)


@pytest.mark.timeout(180)
def test_database_restart_both_recover(pair: Pair, pg_server) -> None:
    arrivals = Arrivals(pair.channel)
    arrivals.land()
    pair.start()
    pg_server.restart(down=2.0)
    for d in pair.daemons:
        wait_for(lambda d=d: "database session lost" in d.log_text(), 15, what="the lost session noticed")
    pair.leader(timeout=30)
    for d in pair.daemons:
        wait_for(lambda d=d: d.get("/readyz")[0] == 200, 30, what="ready again")
    arrivals.land()
    wait_for(lambda: arrivals.published(arrivals.landed), 20, what="published after the restart")
    roles = sorted(pair.role(d)["role"] for d in pair.daemons)
    assert roles == ["leader", "standby"]
    audit(pg_server, pair.url)
