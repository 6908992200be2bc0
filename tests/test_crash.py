"""Crash consistency (reliability issue): kill -9 at random moments while the daemon
publishes a channel that keeps changing. 20 rounds by default, 200 with `--long`.

After each kill: every published file parses; every shard an index names exists and
matches its hash. After the restart settles: repodata.json, its .zst and the shard index
of each subdir hold exactly the valid packages on disk (same sha256), nothing else, and
no temporary file is left."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
import zstandard

from conda_indexd.formats import shards
from daemonproc import DaemonProcess, all_records, wait_for
from pkgfactory import conda_bytes, index_json, tar_bz2_bytes

SUBDIRS = ("noarch", "linux-64")


class Churn:
    """Uploads, rebuilds and deletions, each landing by rename as uploads should; the
    model of what is valid on disk is kept for the checks."""

    def __init__(self, channel: Path, seed: int):
        self.channel = channel
        self.rng = random.Random(seed)
        self.valid: dict[tuple[str, str], str] = {}  # (subdir, filename) -> sha256
        self.counter = 0
        self.stats = {"create": 0, "overwrite": 0, "delete": 0, "broken": 0}
        for subdir in SUBDIRS:
            (channel / subdir).mkdir(parents=True, exist_ok=True)

    def _land(self, subdir: str, fn: str, data: bytes) -> None:
        tmp = self.channel / subdir / f".{fn}.upload"
        tmp.write_bytes(data)
        os.replace(tmp, self.channel / subdir / fn)

    def _package(self, subdir: str, fn: str) -> bytes:
        stem = fn.removesuffix(".conda").removesuffix(".tar.bz2")
        name, version, build = stem.rsplit("-", 2)
        idx = index_json(name, version, build, subdir)
        files = {"lib/payload": os.urandom(self.rng.randint(10, 3000))}
        return conda_bytes(fn, idx, files) if fn.endswith(".conda") else tar_bz2_bytes(idx, files)

    def step(self) -> None:
        self.counter += 1
        subdir = self.rng.choice(SUBDIRS)
        mine = [fn for (s, fn) in self.valid if s == subdir]
        op = self.rng.choices(["create", "overwrite", "delete", "broken"], [5, 2, 2, 1])[0]
        if op in ("overwrite", "delete") and not mine:
            op = "create"
        if op == "create":
            fn = f"pkg{self.rng.randint(0, 40)}-1.{self.counter}-0" + self.rng.choice([".conda", ".tar.bz2"])
            data = self._package(subdir, fn)
            self._land(subdir, fn, data)
            self.valid[subdir, fn] = hashlib.sha256(data).hexdigest()
        elif op == "overwrite":
            fn = self.rng.choice(mine)
            data = self._package(subdir, fn)
            self._land(subdir, fn, data)
            self.valid[subdir, fn] = hashlib.sha256(data).hexdigest()
        elif op == "delete":
            fn = self.rng.choice(mine)
            os.unlink(self.channel / subdir / fn)
            del self.valid[subdir, fn]
        else:
            fn = f"broken{self.counter}-1.0-0.conda"
            self._land(subdir, fn, os.urandom(self.rng.randint(0, 500)))
        self.stats[op] += 1


def check_published_files(channel: Path) -> list[str]:
    """What must hold at any instant, even right after a kill -9."""
    problems = []
    for subdir in SUBDIRS:
        folder = channel / subdir
        for name in ("repodata.json", "repodata_from_packages.json"):
            if (folder / name).exists():
                try:
                    json.loads((folder / name).read_bytes())
                except ValueError as exc:
                    problems.append(f"{subdir}/{name} does not parse: {exc}")
                zst = folder / f"{name}.zst"
                if zst.exists():
                    try:
                        json.loads(zstandard.ZstdDecompressor().decompress(zst.read_bytes()))
                    except (ValueError, zstandard.ZstdError) as exc:
                        problems.append(f"{subdir}/{name}.zst does not parse: {exc}")
        index_path = folder / shards.SHARD_INDEX
        if index_path.exists():
            try:
                index = shards.decode(index_path.read_bytes())
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{subdir} shard index does not parse: {exc!r}")
                continue
            for name, digest in index["shards"].items():
                path = folder / "shards" / f"{digest.hex()}.msgpack.zst"
                if not path.exists():
                    problems.append(f"{subdir}: shard of {name} is missing")
                elif hashlib.sha256(path.read_bytes()).digest() != digest:
                    problems.append(f"{subdir}: shard of {name} does not match its hash")
    return problems


def described(channel: Path, subdir: str) -> tuple[dict, dict, dict]:
    """{filename: sha256} per repodata.json, repodata.json.zst and the shards."""
    folder = channel / subdir
    doc = json.loads((folder / "repodata.json").read_bytes())
    zdoc = json.loads(zstandard.ZstdDecompressor().decompress((folder / "repodata.json.zst").read_bytes()))
    index = shards.decode((folder / shards.SHARD_INDEX).read_bytes())
    from_shards = {}
    for digest in index["shards"].values():
        shard = shards.decode((folder / "shards" / f"{digest.hex()}.msgpack.zst").read_bytes())
        for section in ("packages", "packages.conda"):
            from_shards.update({fn: rec["sha256"].hex() for fn, rec in shard[section].items()})
    as_map = lambda d: {fn: rec["sha256"] for fn, rec in all_records(d).items()}  # noqa: E731
    return as_map(doc), as_map(zdoc), from_shards


def settled(channel: Path, churn: Churn) -> bool:
    for subdir in SUBDIRS:
        want = {fn: sha for (s, fn), sha in churn.valid.items() if s == subdir}
        a, b, c = described(channel, subdir)
        if not (a == b == c == want):
            return False
    return True


def leftovers(channel: Path) -> list[str]:
    return [str(p.relative_to(channel)) for p in channel.rglob(".*.tmp")]


@pytest.mark.timeout(3600)
def test_kill_9_at_random_moments(channel: Path, long_mode: bool) -> None:
    rounds = 200 if long_mode else 20
    seed = int(os.environ.get("CONDA_INDEXD_SEED", "0")) or random.randrange(1 << 30)
    rng = random.Random(seed)
    churn = Churn(channel, seed)
    for _ in range(300):  # a few hundred packages: each publish takes long enough to be hit
        churn.step()
    report = {"seed": seed, "rounds": rounds, "kills": 0, "kills_mid_write": 0, "kills_mid_transaction": 0}
    daemon = DaemonProcess(channel, debounce=0.05, settle=0.2).start()
    try:
        for round_no in range(rounds):
            stop = threading.Event()

            def churning(stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    churn.step()
                    time.sleep(rng.uniform(0.0, 0.05))

            worker = threading.Thread(target=churning)
            worker.start()
            time.sleep(rng.uniform(0.05, 0.6))
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.proc.wait(10)
            daemon.stop()
            stop.set()
            worker.join()
            report["kills"] += 1
            # evidence of where the kill landed: a temporary output file or a hot sqlite journal
            report["kills_mid_write"] += bool(leftovers(channel))
            report["kills_mid_transaction"] += any((channel / s / ".cache" / "cache.db-journal").exists() for s in SUBDIRS)
            problems = check_published_files(channel)
            assert not problems, f"round {round_no} (seed {seed}): {problems}"

            daemon = DaemonProcess(channel, debounce=0.05, settle=0.2).start()
            wait_for(lambda: settled(channel, churn), 20, interval=0.1, what=f"round {round_no} settled (seed {seed})")
            assert not leftovers(channel), f"round {round_no}: temporary files left: {leftovers(channel)}"
    finally:
        daemon.stop()
    report.update(churn.stats, packages_valid=len(churn.valid), packages_lost=0)
    print("crash-consistency", json.dumps(report))
