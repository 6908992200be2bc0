"""A debounced queue of per-subdir work.

A subdir becomes ready once `debounce` seconds pass with no new event for it, but never
later than `max_delay` after its first pending event. Work is either a set of touched
file names (with the kind of their last event) or a full scan of the subdir.
Thread-safe: the watchdog thread adds, the worker thread takes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum


class EventKind(StrEnum):
    """What happened to a package file (watchdog's event types we act on)."""

    CREATED = "created"
    MODIFIED = "modified"
    CLOSED = "closed"
    MOVED = "moved"
    DELETED = "deleted"
    LISTED = "listed"  # not an observed event: found by a listing, put back for another look


class ScanReason(StrEnum):
    """Why a subdir is listed whole (the `reason` label of conda_indexd_rescans_total)."""

    STARTUP = "startup"
    NEW_SUBDIR = "new-subdir"
    OVERFLOW = "overflow"
    PERIODIC = "periodic"
    SIGNAL = "signal"
    REPLACED = "replaced"
    PATCHES = "patches"
    RETRY = "retry"
    EMPTY_CHECK = "empty-check"


# event kinds after which a file is known to be complete
COMPLETE_KINDS = frozenset({EventKind.CLOSED, EventKind.MOVED})


@dataclass
class Pending:
    subdir: str
    first_event: float
    last_event: float
    not_before: float = 0.0  # a retry that must wait (backoff, empty-listing check)
    hold_until: float = 0.0  # uploads put back for another look; a close ends the wait
    full_scan: bool = False
    scan_reason: ScanReason | None = None
    names: dict[str, EventKind] = field(default_factory=dict)  # name -> kind of its last event
    confirm_empty: bool = False
    outputs: set[str] = field(default_factory=set)  # published files changed from outside
    seen: dict[str, float] = field(default_factory=dict)  # name -> its first event in this batch (the queue's clock)

    def merge_names(self, names: Iterable[tuple[str, EventKind]]) -> None:
        """Names put back for another look: an event that came meanwhile is newer."""
        for name, kind in names:
            self.names.setdefault(name, kind)


class DebounceQueue:
    def __init__(self, debounce: float = 1.0, max_delay: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.debounce = debounce
        self.max_delay = max_delay
        self.clock = clock
        self._pending: dict[str, Pending] = {}
        self._cond = threading.Condition()

    def _entry(self, subdir: str, now: float) -> Pending:
        entry = self._pending.get(subdir)
        if entry is None:
            entry = self._pending[subdir] = Pending(subdir, first_event=now, last_event=now)
        return entry

    def add(self, subdir: str, name: str, kind: EventKind) -> None:
        """A file event in a subdir."""
        with self._cond:
            now = self.clock()
            entry = self._entry(subdir, now)
            entry.last_event = now
            entry.names[name] = kind
            entry.seen.setdefault(name, now)
            if kind in COMPLETE_KINDS:
                entry.hold_until = 0.0  # a held upload was closed: look now
            self._cond.notify_all()

    def add_output(self, subdir: str, file: str) -> None:
        """A published file (relative to the subdir) changed or removed by someone else."""
        with self._cond:
            now = self.clock()
            entry = self._entry(subdir, now)
            entry.last_event = now
            entry.outputs.add(file)
            self._cond.notify_all()

    def distrust_events(self) -> None:
        """The event queue overflowed: a pending "modified" may have lost its close, so
        pending names only ask for a look (daemon/uploads.py then judges them by two looks)."""
        with self._cond:
            for entry in self._pending.values():
                for name, kind in entry.names.items():
                    if kind in (EventKind.CREATED, EventKind.MODIFIED):
                        entry.names[name] = EventKind.LISTED

    def add_scan(self, subdir: str, reason: ScanReason, *, delay: float = 0.0, confirm_empty: bool = False) -> None:
        """A full listing of the subdir (start-up, rescans, a new subdir folder)."""
        with self._cond:
            now = self.clock()
            entry = self._entry(subdir, now)
            entry.full_scan = True
            entry.scan_reason = entry.scan_reason or reason
            entry.confirm_empty = entry.confirm_empty or confirm_empty
            if delay:
                entry.not_before = max(entry.not_before, now + delay)
            self._cond.notify_all()

    def retry(self, subdir: str, names: dict[str, EventKind], delay: float) -> None:
        """Put names back to be looked at again after `delay` (uploads still in progress)."""
        with self._cond:
            now = self.clock()
            entry = self._entry(subdir, now)
            entry.merge_names(names.items())
            # only wait when the held names are all there is to do: a close (or any other
            # work) that came in while they were being looked at must not wait with them
            if entry.full_scan or entry.outputs or any(kind in COMPLETE_KINDS or name not in names for name, kind in entry.names.items()):
                entry.hold_until = 0.0
            else:
                entry.hold_until = max(entry.hold_until, now + delay)
            self._cond.notify_all()

    def _ready_at(self, entry: Pending) -> float:
        due = min(entry.last_event + self.debounce, entry.first_event + self.max_delay)
        return max(due, entry.not_before, entry.hold_until)

    def pending_count(self) -> int:
        with self._cond:
            return len(self._pending)

    def pending(self) -> list[Pending]:
        with self._cond:
            return list(self._pending.values())

    def take(self, timeout: float | None = None) -> Pending | None:
        """The next ready subdir, waiting up to `timeout` seconds; None if none is ready."""
        deadline = None if timeout is None else self.clock() + timeout
        with self._cond:
            while True:
                now = self.clock()
                ready = [(self._ready_at(e), e.subdir) for e in self._pending.values()]
                if ready:
                    at, subdir = min(ready)
                    if at <= now:
                        return self._pending.pop(subdir)
                    wait = at - now
                else:
                    wait = None
                if deadline is not None:
                    left = deadline - now
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
