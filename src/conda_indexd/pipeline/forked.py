"""Record work over a whole subdir in forked worker processes: serialising every record's
piece into a new memo (the first run on a channel migrated from conda-index, a restart
whose saved memo cannot be used) and encoding every shard of a full build.

Each worker reads its own batch of records from the cache through
`SubdirCache.fork_reader()` (connections it opens after the fork, read-only) and returns
compact bytes; the parent only appends them (the piece heap, the kept pieces, the shard
files). Batches are submitted AHEAD per worker at a time, so neither side ever holds
more than a few batches of records: memory stays bounded, and every core works. A cache
that cannot be read from a forked child (PostgreSQL: its connection does not survive a
fork) gives no reader, and the work stays in this process.

A batch that fails in a worker, or a worker that dies (killed, out of memory), is done
again in this process through the cache seam (whose guards move a damaged cache aside):
the result is the same bytes, or the run fails as it would have serially. Nothing is
published before every batch is done.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor
from typing import Any, TypeVar

from conda_indexd.caches.base import RecordReader
from conda_indexd.pipeline.extract import _FORK
from conda_indexd.util.procs import die_with_parent

POOL_FROM = 20_000  # records: fewer are done in this process (forking and pickling cost more)
AHEAD = 2  # batches in flight per worker

B = TypeVar("B")
R = TypeVar("R")

_reader: RecordReader | None = None  # in a worker: its own reader
_context: Any = None  # in a worker: what the pool was started with (inherited, never pickled)


def _start(parent: int, opener: Callable[[], RecordReader], context: Any) -> None:
    global _reader, _context
    die_with_parent(parent)
    _reader, _context = opener(), context


def reader() -> RecordReader:
    """The worker's reader (only in a worker process)."""
    assert _reader is not None, "not in a record worker"
    return _reader


def context() -> Any:
    return _context


class Pool:
    """`workers` forked processes, each with a reader from `opener`; `context` is inherited
    by the fork (the patch instructions of a build: never pickled per batch)."""

    def __init__(self, opener: Callable[[], RecordReader], workers: int, context: Any = None):
        self.workers = workers
        self.executor = ProcessPoolExecutor(workers, mp_context=_FORK, initializer=_start, initargs=(os.getpid(), opener, context))

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    def map(self, fn: Callable[[B], R], batches: Iterable[B]) -> Iterator[tuple[B, R | BaseException]]:
        """(batch, fn(batch) or the exception it ended with) in order, AHEAD per worker
        in flight. After a worker died, every batch not yet done comes back with the
        exception (the caller does those itself)."""
        pending: deque[tuple[B, Future[R] | BaseException]] = deque()
        it = iter(batches)
        broken: BaseException | None = None
        while True:
            while len(pending) < self.workers * AHEAD:
                batch = next(it, None)
                if batch is None:
                    break
                if broken is not None:
                    pending.append((batch, broken))
                    continue
                try:
                    pending.append((batch, self.executor.submit(fn, batch)))
                except RuntimeError as exc:  # BrokenProcessPool: a worker died
                    broken = exc
                    pending.append((batch, exc))
            if not pending:
                return
            batch, future = pending.popleft()
            if isinstance(future, BaseException):
                yield batch, future
                continue
            try:
                yield batch, future.result()
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who does the batch itself
                if isinstance(exc, BrokenExecutor) and broken is None:
                    broken = exc
                yield batch, exc


def batches(items: Iterable[B], size: int) -> Iterator[list[B]]:
    batch: list[B] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
