"""Which package files are still being written, so the worker holds them back.

- With inotify (close events): a file with modify events and no close or rename after
  them is open for writing. It is held until it is closed,
  or until it has stayed unchanged for `cap` seconds (a writer that never closes). A
  file moved in from outside the channel only shows as "created" (so does a FIFO): it
  gets the two looks below.
- Without close events (polling), and for files found by a listing: a file is still
  changing while two looks `settle` seconds apart see a different size, mtime or
  identity. Only a file the store saw change within `settle` (ctime locally: the
  server's clock, not an mtime a writer set) is looked at twice, so an mtime in the
  future is no reason to wait.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from conda_indexd.daemon.queue import COMPLETE_KINDS, EventKind
from conda_indexd.stores.base import FileState
from conda_indexd.util.logs import get_logger

log = get_logger(__name__)

MAX_OPEN_RECHECK = 30.0  # seconds between looks at a file held open (its close wakes us sooner)


@dataclass
class _Seen:
    signature: tuple[int, float, str]  # size, mtime, identity
    since: float  # monotonic time the signature last changed
    events_lost: bool = False  # an inotify overflow since: its close may never come


class UploadTracker:
    def __init__(self, settle: float, cap: float, close_events: bool):
        self.settle = settle
        self.cap = cap
        self.close_events = close_events
        self._seen: dict[tuple[str, str], _Seen] = {}

    def events_lost(self) -> None:
        """The event queue overflowed: a file seen open may have been closed unseen, so
        it is judged by two looks from now on, like a listed file."""
        for seen in list(self._seen.values()):
            seen.events_lost = True

    def tracked(self, subdir: str) -> set[str]:
        return {name for (s, name) in self._seen if s == subdir}

    def hold(
        self,
        subdir: str,
        kinds: Mapping[str, EventKind | None],
        present: Mapping[str, FileState],
        now: float,
        clock: float,
    ) -> dict[str, float]:
        """{name: seconds until the next look} for the files to hold back.

        `kinds`: each candidate's last event kind (None: found by a listing); `present`:
        their current state (absent: gone); `now`: wall clock; `clock`: monotonic."""
        held: dict[str, float] = {}
        for name, kind in kinds.items():
            key = (subdir, name)
            state = present.get(name)
            if state is None or kind in COMPLETE_KINDS or self.settle <= 0:
                self._seen.pop(key, None)
                continue
            signature = (state.size, state.mtime, state.identity)
            seen = self._seen.get(key)
            first_look = seen is None
            if seen is None or seen.signature != signature:
                seen = self._seen[key] = _Seen(signature, clock, seen.events_lost if seen else False)
            unchanged_for = clock - seen.since
            if self.close_events and kind == EventKind.MODIFIED and not seen.events_lost:
                if unchanged_for < self.cap:
                    held[name] = min(MAX_OPEN_RECHECK, self.cap - unchanged_for)
                    continue
                log.warning("upload never closed; reading it as it is", subdir=subdir, path=name, unchanged_seconds=round(unchanged_for))
            elif first_look:
                if 0 <= now - state.changed_at < self.settle:
                    held[name] = self.settle
                    continue
            elif unchanged_for < self.settle:
                held[name] = self.settle - unchanged_for
                continue
            self._seen.pop(key, None)
        return held
