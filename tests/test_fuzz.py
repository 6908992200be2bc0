"""Model-based fuzzing (reliability issue): hypothesis drives random sequences of
create, overwrite, rename, delete, broken uploads and daemon restarts (clean or kill -9)
against a real daemon. After the daemon settles, each subdir's repodata.json must equal,
byte for byte, what a fresh `conda-indexd index` of a copy of the same files produces."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from conda_indexd.backends import index_subdir
from conda_indexd.config import IndexConfig
from conda_indexd.names import is_package_name
from daemonproc import DaemonProcess, wait_for
from pkgfactory import conda_bytes, index_json, tar_bz2_bytes

SUBDIRS = ("noarch", "linux-64")
names = st.sampled_from(["alpha", "beta", "gamma"])
versions = st.sampled_from(["1.0", "1.1", "2.0"])
exts = st.sampled_from([".conda", ".tar.bz2"])
subdirs = st.sampled_from(SUBDIRS)


def fresh_index(channel: Path, scratch: Path) -> dict[str, bytes]:
    """repodata.json per subdir from a one-shot index of a copy of the package files."""
    if scratch.exists():
        shutil.rmtree(scratch)
    for subdir in SUBDIRS:
        (scratch / subdir).mkdir(parents=True)
        for entry in os.scandir(channel / subdir):
            if is_package_name(entry.name) and entry.is_file(follow_symlinks=False):
                shutil.copy2(entry.path, scratch / subdir / entry.name)
    config = IndexConfig(channel=scratch, threads=1)
    out = {}
    for subdir in SUBDIRS:
        index_subdir(config, subdir)
        out[subdir] = unstamped((scratch / subdir / "repodata.json").read_bytes())
    return out


def unstamped(data: bytes) -> bytes:
    """Without CEP-47 indexed_timestamp values (the copy's files all arrive at its one run)."""
    return re.sub(rb'"indexed_timestamp":\d+,', b"", data)


class ChannelMachine(RuleBasedStateMachine):
    stats: Counter[str] = Counter()  # across examples, printed for docs/reliability.md

    def __init__(self) -> None:
        super().__init__()
        self.stats["examples"] += 1
        self.tmp = Path(tempfile.mkdtemp(prefix="conda-indexd-fuzz-"))
        self.channel = self.tmp / "channel"
        for subdir in SUBDIRS:
            (self.channel / subdir).mkdir(parents=True)
        self.counter = 0
        self.daemon = DaemonProcess(self.channel, debounce=0.05, settle=0.2, log=self.tmp / "daemon.log").start()

    def files(self, subdir: str) -> list[str]:
        return sorted(n for n in os.listdir(self.channel / subdir) if is_package_name(n))

    def package(self, subdir: str, name: str, version: str, ext: str) -> tuple[str, bytes]:
        self.counter += 1
        fn = f"{name}-{version}-0{ext}"
        idx = index_json(name, version, "0", subdir)
        files = {"lib/payload": f"{self.counter}".encode()}
        return fn, (conda_bytes(fn, idx, files) if ext == ".conda" else tar_bz2_bytes(idx, files))

    @initialize(batch=st.lists(st.tuples(subdirs, names, versions, exts), min_size=2, max_size=8))
    def populate(self, batch: list[tuple[str, str, str, str]]) -> None:
        """A first batch of packages, written straight into place."""
        for subdir, name, version, ext in batch:
            fn, data = self.package(subdir, name, version, ext)
            (self.channel / subdir / fn).write_bytes(data)
            self.stats["upload"] += 1

    @rule(batch=st.lists(st.tuples(subdirs, names, versions, exts), min_size=1, max_size=5))
    def upload_burst(self, batch: list[tuple[str, str, str, str]]) -> None:
        """Several uploads at once, as a CI job pushing a build matrix."""
        for subdir, name, version, ext in batch:
            self.upload(subdir, name, version, ext, by_rename=True)

    @rule(subdir=subdirs, name=names, version=versions, ext=exts, by_rename=st.booleans())
    def upload(self, subdir: str, name: str, version: str, ext: str, by_rename: bool) -> None:
        """A new package or a rebuild over an existing one (same filename, new bytes)."""
        self.stats["upload"] += 1
        fn, data = self.package(subdir, name, version, ext)
        target = self.channel / subdir / fn
        if by_rename:
            tmp = target.with_name(f".{fn}.part")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        else:
            target.write_bytes(data)

    @rule(subdir=subdirs, data=st.data())
    def delete(self, subdir: str, data: st.DataObject) -> None:
        self.stats["delete"] += 1
        present = self.files(subdir)
        if present:
            os.unlink(self.channel / subdir / data.draw(st.sampled_from(present)))

    @rule(src=subdirs, dst=subdirs, data=st.data())
    def rename(self, src: str, dst: str, data: st.DataObject) -> None:
        """A file renamed within or across subdirs (across: its subdir no longer fits)."""
        self.stats["rename"] += 1
        present = self.files(src)
        if present:
            fn = data.draw(st.sampled_from(present))
            new = data.draw(st.sampled_from([fn, fn.replace("-0.", "-1."), fn.replace("1.0", "9.9")]))
            os.replace(self.channel / src / fn, self.channel / dst / new)

    @rule(subdir=subdirs, size=st.integers(0, 300))
    def broken(self, subdir: str, size: int) -> None:
        self.stats["broken"] += 1
        self.counter += 1
        (self.channel / subdir / f"junk{self.counter % 3}-1.0-0.conda").write_bytes(os.urandom(size))

    @rule(hard=st.booleans())
    def restart(self, hard: bool) -> None:
        self.stats["restart"] += 1
        self.stats["kill -9" if hard else "sigterm"] += 1
        if hard:
            self.daemon.proc.send_signal(signal.SIGKILL)
            self.daemon.proc.wait(10)
        self.daemon.stop()
        self.daemon = DaemonProcess(self.channel, debounce=0.05, settle=0.2, log=self.tmp / "daemon.log").start()

    def teardown(self) -> None:
        ok = False
        try:
            want = fresh_index(self.channel, self.tmp / "fresh")
            last: dict[str, bytes] = {}

            def agrees() -> bool:
                for subdir in SUBDIRS:
                    last[subdir] = unstamped((self.channel / subdir / "repodata.json").read_bytes())
                return last == want

            try:
                wait_for(agrees, 15, interval=0.1, what="daemon output equal to a fresh index")
            except AssertionError:
                diff = {s: (last.get(s, b"")[:2000], want[s][:2000]) for s in SUBDIRS if last.get(s) != want[s]}
                raise AssertionError(
                    f"daemon and fresh index differ (channel and daemon log kept in {self.tmp}): {diff}\n{self.daemon.log_text()[-3000:]}"
                ) from None
            ok = True
        finally:
            self.daemon.stop()
            if ok:  # a failing sequence keeps its folder for diagnosis
                shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.mark.timeout(1800)
def test_daemon_matches_a_fresh_index(long_mode: bool) -> None:
    config = settings(
        max_examples=60 if long_mode else 6,
        stateful_step_count=25 if long_mode else 12,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=not long_mode,  # the default run is reproducible; --long explores
        database=None,
        # each shrink step replays a real daemon: report the first failing sequence as found
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        print_blob=True,
    )
    ChannelMachine.TestCase.settings = config
    ChannelMachine.stats.clear()
    ChannelMachine.TestCase().runTest()
    print("fuzz", json.dumps(dict(ChannelMachine.stats)))
