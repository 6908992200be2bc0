from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent


def _bytecode_cache_for_children() -> None:
    """Where PYTHONDONTWRITEBYTECODE is set (this machine and its CI set it), every
    conda-indexd process a test starts would compile each module again: about 0.7 s of CPU
    per process, hundreds of times. The processes the tests start share one session-private
    bytecode cache instead (PYTHONPYCACHEPREFIX, removed at exit); the source tree and the
    venv stay as they are."""
    if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is None or "PYTHONPYCACHEPREFIX" in os.environ:
        return
    import atexit
    import shutil
    import tempfile

    prefix = tempfile.mkdtemp(prefix="conda-indexd-tests-pycache-")
    os.environ["PYTHONPYCACHEPREFIX"] = prefix
    atexit.register(shutil.rmtree, prefix, True)


_bytecode_cache_for_children()
if str(TESTS) not in sys.path:  # pkgfactory and spec are plain modules next to the tests
    sys.path.insert(0, str(TESTS))

from s3fixtures import bucket, rgw, s3  # noqa: E402, F401 - the session's Ceph RGW and a bucket per test


@dataclass
class CliResult:
    args: list[str]
    rc: int
    stdout: str
    stderr: str

    @functools.cached_property
    def records(self) -> list[dict[str, Any]]:
        """stdout parsed as JSON lines (every line must be a JSON object)."""
        return parse_json_lines(self.stdout)

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == event]

    @property
    def summary(self) -> dict[str, Any]:
        closing = self.events("channel indexed")
        assert len(closing) == 1, f"expected one closing summary, got {closing!r}\n{self}"
        return closing[0]

    def subdir(self, name: str) -> dict[str, Any]:
        found = [r for r in self.events("subdir indexed") if r.get("subdir") == name]
        assert len(found) == 1, f"expected one 'subdir indexed' record for {name}, got {found!r}\n{self}"
        return found[0]

    @property
    def skipped(self) -> list[dict[str, Any]]:
        return self.events("skipped archive")

    def __str__(self) -> str:
        return f"$ {' '.join(self.args)}\nrc={self.rc}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def parse_json_lines(text: str) -> list[dict[str, Any]]:
    """Every stdout line must be one JSON object (logs are JSON lines when not a tty)."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:  # pragma: no cover - reported by the assertion
            raise AssertionError(f"stdout line is not JSON: {line!r}") from exc
        assert isinstance(record, dict), line
        records.append(record)
    return records


def run_cli(*args: str | os.PathLike[str], timeout: float = 60, env: dict[str, str] | None = None) -> CliResult:
    """Run `python -m conda_indexd ARGS` in a subprocess (stdout/stderr are pipes, not a tty)."""
    argv = [sys.executable, "-m", "conda_indexd", *map(str, args)]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    return CliResult(argv, proc.returncode, proc.stdout, proc.stderr)


def run_index(channel: Path, *args: str | os.PathLike[str], check: bool = True, **kw: Any) -> CliResult:
    """`conda-indexd index CHANNEL ARGS --threads 2`; asserts exit 0 unless check=False."""
    result = run_cli("index", channel, "--threads", "2", *args, **kw)
    if check:
        assert result.rc == 0, str(result)
        assert "Traceback" not in result.stderr + result.stdout, str(result)
        assert result.records, f"no JSON log records on stdout\n{result}"
    return result


@pytest.fixture
def channel(tmp_path: Path) -> Path:
    """An empty channel folder."""
    path = tmp_path / "channel"
    path.mkdir()
    return path


@pytest.fixture
def cli():
    """The CLI runner: cli(*args) -> CliResult(rc, stdout, stderr, records)."""
    return run_cli


@pytest.fixture
def index():
    """index(channel, *args, check=True) -> CliResult of `conda-indexd index`."""
    return run_index


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="reliability suite in long mode: 200 kill -9 rounds and more fuzzing (see docs/reliability.md)",
    )
    parser.addoption(
        "--update-screenshots",
        action="store_true",
        default=False,
        help="test_statuspage: also copy the status page screenshots into docs/img/ (docs/status-page.md shows them)",
    )


@pytest.fixture
def long_mode(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--long")) or os.environ.get("CONDA_INDEXD_LONG") == "1"


@pytest.fixture(scope="session")
def pg_server():
    """One throwaway PostgreSQL 15 cluster per session (tests/pgserver.py); skips without it."""
    import pgserver

    why = pgserver.unavailable()
    if why:
        pytest.skip(why)
    with pgserver.running() as server:
        yield server
