"""A child cgroup with a pids limit (what systemd's TasksMax sets), for tests run as root.

`create(limit)` returns a `PidsCgroup` (its `procs` file to join, `current()`, `peak()`,
`limit_hits()`, `remove()`), or raises `Unavailable` with the reason when no writable
pids controller is found (not root, no pids controller, a read-only /sys/fs/cgroup).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


class Unavailable(Exception):
    pass


def _pids_root() -> Path:
    """The pids controller's mount (cgroup v1), or the cgroup2 mount when it offers pids."""
    v2: Path | None = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(tail) < 3 or len(fields) < 5:
            continue
        mount, fstype, options = Path(fields[4]), tail[0], tail[2].split(",")
        if fstype == "cgroup" and "pids" in options:
            return mount
        if fstype == "cgroup2" and "pids" in (mount / "cgroup.controllers").read_text().split():
            v2 = mount
    if v2 is None:
        raise Unavailable("no pids cgroup controller is mounted")
    return v2


@dataclass
class PidsCgroup:
    path: Path

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def current(self) -> int:
        return int((self.path / "pids.current").read_text())

    def peak(self) -> int | None:
        peak = self.path / "pids.peak"
        return int(peak.read_text()) if peak.exists() else None

    def limit_hits(self) -> int:
        """How often a fork or thread creation was refused for the limit."""
        for line in (self.path / "pids.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "max":
                return int(value)
        return 0

    def remove(self) -> None:
        for _ in range(50):  # its processes are stopped by now; wait until they are reaped
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


def create(limit: int) -> PidsCgroup:
    if os.geteuid() != 0:
        raise Unavailable("creating a cgroup needs root")
    root = _pids_root()
    path = root / f"conda-indexd-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        path.mkdir()
        if root.joinpath("cgroup.subtree_control").exists() and not (path / "pids.max").exists():
            root.joinpath("cgroup.subtree_control").write_text("+pids")
        (path / "pids.max").write_text(str(limit))
    except OSError as exc:
        if path.exists():
            path.rmdir()
        raise Unavailable(f"cannot create a pids cgroup under {root}: {exc}") from exc
    return PidsCgroup(path)
