"""What the daemon has done lately, for the status page: the activity feed (the last
FEED_SIZE publishes and refusals) and the last hour's samples its charts are drawn from.

The one home of this state. The worker records an entry at the end of each subdir run
that published files or refused an archive (daemon/worker.py, from the run's
`SubdirResult`: no I/O of its own); a daemon in a pair also shares its entries through
the database (ha/leader.py's `conda_indexd_activity`, beside the publish log) and takes
the other member's from there (daemon/pair.py), so a standby's page shows the leader's
publishes. The HTTP listener reads `snapshot()`: a copy taken under this module's own
short lock, never the worker's.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from conda_indexd.names import utc_timestamp

FEED_SIZE = 200  # entries kept in the feed
WINDOW = 3600.0  # seconds of samples kept for the charts
MAX_SAMPLES = 20_000  # a bound on the samples whatever the rate of publishes
NAMED = 20  # files named per kind in one entry (the counts are exact)


@dataclass(frozen=True)
class Entry:
    """One subdir run that published files ("publish") or only refused archives ("refused")."""

    at: float  # wall clock, when the run ended
    subdir: str
    kind: str  # "publish" | "refused"
    added: int = 0
    removed: int = 0
    replaced: int = 0
    files: dict[str, list[str]] = field(default_factory=dict)  # added/removed/replaced: the first NAMED names
    skipped: list[dict[str, str]] = field(default_factory=list)  # the first NAMED archives refused by this run: path, reason, message
    reasons: dict[str, int] = field(default_factory=dict)  # every archive refused by this run, counted by reason
    duration: float = 0.0  # seconds the run took
    latency: float | None = None  # seconds from the subdir's first pending event to the publish (None: a scan)
    packages: int = 0  # records published after the run
    member: str | None = None  # the pair member that ran it (its lease holder name); None: a single daemon

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (also what a pair member shares through the database)."""
        return {
            "at": utc_timestamp(self.at),
            "at_epoch": round(self.at, 3),
            "subdir": self.subdir,
            "kind": self.kind,
            "added": self.added,
            "removed": self.removed,
            "replaced": self.replaced,
            "files": self.files,
            "refused": sum(self.reasons.values()),
            "reasons": self.reasons,
            "skipped": self.skipped,
            "duration_seconds": round(self.duration, 4),
            "latency_seconds": None if self.latency is None else round(self.latency, 4),
            "packages": self.packages,
            "member": self.member,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], member: str | None = None) -> Entry | None:
        """An entry shared by the other member of a pair; None when it is not one."""
        try:
            latency = d.get("latency_seconds")
            return cls(
                at=float(d["at_epoch"]),
                subdir=str(d["subdir"]),
                kind=str(d["kind"]),
                added=int(d.get("added", 0)),
                removed=int(d.get("removed", 0)),
                replaced=int(d.get("replaced", 0)),
                files={str(k): [str(f) for f in v][:NAMED] for k, v in dict(d.get("files") or {}).items()},
                skipped=[{k: str(s.get(k, "")) for k in ("path", "reason", "message")} for s in (d.get("skipped") or [])[:NAMED]],
                reasons={str(k): int(v) for k, v in dict(d.get("reasons") or {}).items()},
                duration=float(d.get("duration_seconds") or 0.0),
                latency=None if latency is None else float(latency),
                packages=int(d.get("packages", 0)),
                member=member if member is not None else d.get("member"),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def entry_of(
    subdir: str,
    *,
    added: list[str],
    removed: list[str],
    replaced: list[str],
    published: bool,
    refused: Iterable[tuple[str, str, str]],
    duration: float,
    latency: float | None,
    packages: int,
    member: str | None,
    at: float | None = None,
) -> Entry | None:
    """The entry of one finished run (None: it neither published nor refused anything).
    `refused`: (path, reason, message) of the archives this run failed to read."""
    skipped = [{"path": p, "reason": r, "message": m} for p, r, m in refused]
    if not published and not skipped:
        return None
    reasons = Counter(s["reason"] for s in skipped)
    return Entry(
        at=time.time() if at is None else at,
        subdir=subdir,
        kind="publish" if published else "refused",
        added=len(added),
        removed=len(removed),
        replaced=len(replaced),
        files={k: sorted(v)[:NAMED] for k, v in (("added", added), ("removed", removed), ("replaced", replaced)) if v},
        skipped=sorted(skipped, key=lambda s: s["path"])[:NAMED],
        reasons=dict(sorted(reasons.items())),
        duration=duration,
        latency=latency if published else None,
        packages=packages,
        member=member,
    )


class Activity:
    """The feed, the samples and the refusal counts; safe to read from the listener thread."""

    def __init__(self, *, feed_size: int = FEED_SIZE, window: float = WINDOW, clock: Callable[[], float] = time.time):
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()  # held for a deque append or a copy, nothing else
        self._feed: deque[Entry] = deque(maxlen=feed_size)
        self._samples: deque[Entry] = deque(maxlen=MAX_SAMPLES)  # within the window, oldest first
        self._refusals: Counter[str] = Counter()  # reason -> archives refused since this daemon started
        self._seen: set[tuple[float, str, str | None]] = set()  # (at, subdir, member) of the feed: a shared entry once
        self.share: Callable[[Entry], None] | None = None  # a pair: hand the entry to the other member

    def record(self, entry: Entry) -> None:
        """An entry of this daemon's (shared with a pair's other member when `share` is set)."""
        self._add(entry)
        if self.share is not None:
            self.share(entry)

    def merge(self, entries: Iterable[Entry]) -> int:
        """Entries of the other member of a pair, oldest first; returns how many were new."""
        return sum(1 for e in entries if self._add(e))

    def _add(self, entry: Entry) -> bool:
        key = (round(entry.at, 3), entry.subdir, entry.member)
        with self._lock:
            if key in self._seen:
                return False
            if len(self._feed) == self._feed.maxlen:
                old = self._feed[0]
                self._seen.discard((round(old.at, 3), old.subdir, old.member))
            self._feed.append(entry)
            self._seen.add(key)
            self._samples.append(entry)
            self._refusals.update(entry.reasons)
            self._trim(self.clock())
        return True

    def _trim(self, now: float) -> None:
        while self._samples and self._samples[0].at < now - self.window:
            self._samples.popleft()

    def snapshot(self) -> dict[str, Any]:
        """The feed (newest first), the last hour's series per subdir and the refusals by
        reason, as plain data (status.json's `activity`)."""
        now = self.clock()
        with self._lock:
            self._trim(now)
            feed = sorted(self._feed, key=lambda e: e.at)  # a pair's shared entries arrive late
            samples = sorted((e for e in self._samples if e.at >= now - self.window), key=lambda e: e.at)
            refusals = dict(self._refusals)
        latency: dict[str, list[list[float]]] = {}
        packages: dict[str, list[list[float]]] = {}
        for e in samples:
            if e.kind == "publish":
                packages.setdefault(e.subdir, []).append([round(e.at, 3), e.packages])
                if e.latency is not None:
                    latency.setdefault(e.subdir, []).append([round(e.at, 3), round(e.latency, 4)])
        return {
            "feed": [e.as_dict() for e in reversed(feed)],
            "window_seconds": self.window,
            "now_epoch": round(now, 3),
            "latency": latency,
            "packages": packages,
            "refusals": dict(sorted(refusals.items(), key=lambda kv: (-kv[1], kv[0]))),
        }
