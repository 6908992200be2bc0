"""The status page's collector: gathers a snapshot of what the daemon knows (plain data)
for the pure renderer (daemon/http/statuspage.py). It runs on the listener's thread and
takes no lock the worker holds. The page and /status.json read only memory: the worker's
per-subdir status, the activity feed (daemon/activity.py), the queue, the pair's
leadership as last seen and the metrics' counters. The package view of one subdir reads
the channel's published shards (or repodata.json) through the output store on each
request (daemon/packageview.py) and keeps nothing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from conda_indexd.daemon import packageview
from conda_indexd.daemon.http import statuspage
from conda_indexd.daemon.packageview import MAX_QUERY
from conda_indexd.stores.base import StoreError

if TYPE_CHECKING:
    from conda_indexd.daemon.supervisor import Daemon

HTML = "text/html; charset=utf-8"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


def document(daemon: Daemon) -> dict[str, Any]:
    """/status.json (and what the page shows)."""
    now = time.monotonic()
    pending = [
        {"subdir": p.subdir, "files": len(p.names), "full_scan": p.full_scan, "reason": p.scan_reason,
         "waiting_seconds": round(now - p.first_event, 1)}
        for p in sorted(daemon.queue.pending(), key=lambda p: p.subdir)
    ]  # fmt: skip
    worker = daemon.worker
    seen = {s: st.status for s, st in list(worker.states.items()) if st.status.last_run or st.status.error or st.status.packages}
    role = daemon.leadership.describe() if daemon.leadership else None
    sources = daemon.pkgs.status() if daemon.pkgs is not None else None
    return statuspage.document(daemon.config.index.location, daemon.ready.is_set(), seen, pending, ignored=daemon.channel.ignored(),
                               role=role, sources=sources, activity=worker.activity.snapshot(), intake=intake(daemon))  # fmt: skip


def intake(daemon: Daemon) -> dict[str, Any]:
    """Events seen by kind; for a bucket its address, its failed requests and the bucket
    notifications' outcomes (the counters /metrics exposes)."""
    m = daemon.metrics
    events = {labels["kind"]: value for labels, value in m.totals(m.events)}
    out: dict[str, Any] = {"events": dict(sorted(events.items()))}
    address = daemon.channel.bucket_address()
    if address is not None:
        requests = m.totals(m.s3_requests)
        out["bucket"] = {
            "address": address,
            "requests": sum(v for _, v in requests),
            "request_errors": [
                {"operation": labels["operation"], "status": labels["status"], "count": value}
                for labels, value in sorted(requests, key=lambda r: (r[0]["operation"], r[0]["status"]))
                if value and not labels["status"].startswith(("2", "3"))
            ],
            "notifications": {labels["outcome"]: value for labels, value in sorted(m.totals(m.s3_events), key=lambda r: r[0]["outcome"])},
        }
    return out


def subdir_page(daemon: Daemon, rest: str, query: str) -> tuple[int, str, bytes]:
    """GET /status/<subdir>?q=name (HTML) and /status/<subdir>.json?q=name."""
    as_json = rest.endswith(".json")
    subdir = rest[: -len(".json")] if as_json else rest
    state = daemon.worker.states.get(subdir)
    if not subdir or "/" in subdir or state is None:
        known = ", ".join(sorted(daemon.worker.states)) or "none yet"
        return 404, TEXT, f"no such subdir in this channel: {subdir[:100]!r} (known: {known})\n".encode()
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=False, errors="strict", max_num_fields=10)
    except (ValueError, UnicodeDecodeError):
        return 400, TEXT, b"bad query string: give ?q=NAME (UTF-8, percent-encoded), at most 10 fields\n"
    q = (params.get("q") or [""])[-1]
    if len(q) > MAX_QUERY:
        return 400, TEXT, f"query too long: at most {MAX_QUERY} characters\n".encode()
    try:
        found = packageview.search_off_listener(daemon.backends.outputs, subdir, q, use_shards=daemon.config.index.write_shards)
    except packageview.ViewBusy as exc:
        return 503, TEXT, f"{exc}\n".encode()
    except StoreError as exc:
        return 503, TEXT, f"cannot read the published files of {subdir}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n".encode()
    view = statuspage.subdir_view(daemon.config.index.location, subdir, q, found.rows, found.matched, state.status.packages, state.status.skipped,
                                  names=found.names, names_read=found.names_read, source=found.source, problem=found.problem,
                                  unreadable=found.unreadable)  # fmt: skip
    if as_json:
        return 200, JSON, statuspage.as_json(view)
    return 200, HTML, statuspage.subdir_html(view)
