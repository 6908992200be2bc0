"""The daemon's worker driven in-process: no socket, no observer, no signals.

Checks the one memo rule (a failed run drops the subdir's memo, a successful one hands
it over) and that the worker publishes exactly what a one-shot index would.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from conda_indexd.backends import open_backends
from conda_indexd.config import IndexConfig
from conda_indexd.daemon.metrics import Metrics
from conda_indexd.daemon.queue import DebounceQueue, EventKind, Pending, ScanReason
from conda_indexd.daemon.worker import Worker
from pkgfactory import index_json, make_package


def worker_for(config: IndexConfig) -> Worker:
    return Worker(config, open_backends(config), DebounceQueue(0.01, 0.1), Metrics(), settle=0)


def full(subdir: str) -> Pending:
    now = time.monotonic()
    return Pending(subdir, now, now, full_scan=True, scan_reason=ScanReason.STARTUP)


def touched(subdir: str, *names: str) -> Pending:
    now = time.monotonic()
    return Pending(subdir, now, now, names={n: EventKind.CLOSED for n in names})


def published(channel: Path) -> list[str]:
    doc = json.loads((channel / "noarch" / "repodata.json").read_bytes())
    return sorted([*doc["packages"], *doc["packages.conda"]])


def test_worker_publishes_and_keeps_the_memo(tmp_path: Path) -> None:
    channel = tmp_path / "channel"
    make_package(channel / "noarch" / "a-1.0-0.conda", index_json("a", "1.0", "0"))
    w = worker_for(IndexConfig(channel=channel, threads=1))
    w.process(full("noarch"))
    state = w.states["noarch"]
    assert published(channel) == ["a-1.0-0.conda"]
    assert state.memo is not None and list(state.memo.filenames()) == ["a-1.0-0.conda"]
    assert state.published == 1 and state.status.error is None

    make_package(channel / "noarch" / "b-1.0-0.tar.bz2", index_json("b", "1.0", "0"))
    w.process(touched("noarch", "b-1.0-0.tar.bz2"))
    assert published(channel) == ["a-1.0-0.conda", "b-1.0-0.tar.bz2"]
    assert sorted(state.memo.filenames()) == ["a-1.0-0.conda", "b-1.0-0.tar.bz2"]
    assert w.metrics.packages.labels("noarch")._value.get() == 2


def test_a_failed_run_drops_the_memo_and_backs_off(tmp_path: Path) -> None:
    channel = tmp_path / "channel"
    make_package(channel / "noarch" / "a-1.0-0.conda", index_json("a", "1.0", "0"))
    generator = tmp_path / "gen_patch.py"
    generator.write_text("def _patch_repodata(repodata, subdir):\n    return {}\n")
    w = worker_for(IndexConfig(channel=channel, threads=1, patch_generator=generator))
    w.process(full("noarch"))
    state = w.states["noarch"]
    assert state.memo is not None

    generator.write_text("def _patch_repodata(repodata, subdir):\n    raise ValueError('no')\n")
    make_package(channel / "noarch" / "b-1.0-0.conda", index_json("b", "1.0", "0"))
    w.process(touched("noarch", "b-1.0-0.conda"))
    assert state.memo is None and state.failures_in_a_row == 1
    assert state.status.error is not None and "PatchError" in state.status.error
    assert published(channel) == ["a-1.0-0.conda"]  # the last good repodata stays
    retry = w.queue.pending()
    assert [(p.subdir, p.full_scan, p.scan_reason) for p in retry] == [("noarch", True, "retry")]

    generator.write_text("def _patch_repodata(repodata, subdir):\n    return {}\n")
    w.process(full("noarch"))  # the next run starts from the cache alone, and succeeds
    assert state.memo is not None and state.failures_in_a_row == 0 and state.status.error is None
    assert published(channel) == ["a-1.0-0.conda", "b-1.0-0.conda"]
