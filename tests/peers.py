"""conda-index 0.13 as a reference tool, for the tests that compare with it or build a
channel with it. Found as in test_corpus.py: `$CONDA_INDEX_PYTHON`, else
/tmp/peers/bin/python; it runs with the conda stub from the nearest `shared/tools/conda-stub`
above this folder (conda itself is not on PyPI). Tests skip with the reason when absent."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import pytest

DEFAULT_PEERS_PYTHON = Path("/tmp/peers/bin/python")


def stub_dir() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "tools" / "conda-stub"
        if candidate.is_dir():
            return candidate
    return None


@functools.lru_cache(maxsize=1)
def find() -> tuple[str | None, str]:
    py = os.environ.get("CONDA_INDEX_PYTHON") or (str(DEFAULT_PEERS_PYTHON) if DEFAULT_PEERS_PYTHON.exists() else None)
    if py is None:
        return None, f"set CONDA_INDEX_PYTHON to a Python with conda-index 0.13 ({DEFAULT_PEERS_PYTHON} does not exist)"
    stub = stub_dir()
    if stub is None:
        return None, "no shared/tools/conda-stub above the tests folder"
    proc = subprocess.run(check=False, args=[py, "-c", "import conda_index; print(conda_index.__version__)"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(stub)})  # fmt: skip
    if proc.returncode != 0 or not proc.stdout.startswith("0.13."):
        return None, f"{py} has no conda-index 0.13 ({(proc.stdout or proc.stderr).strip()[-200:]!r})"
    return py, ""


def conda_index(*args: str | os.PathLike[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m conda_index ARGS` with conda-index 0.13 (skips the test without it)."""
    py, why = find()
    if py is None:
        pytest.skip(why)
    return subprocess.run(check=False, args=[py, "-m", "conda_index", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(stub_dir()), "COLUMNS": "200"})  # fmt: skip
