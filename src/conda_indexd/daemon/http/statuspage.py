"""The daemon's status page: `GET /` (plain HTML, CSS and inline SVG), `GET /status.json`,
and the package view of one subdir, `GET /status/<subdir>?q=name` (and `.json`).

The renderer: pure functions from a snapshot (plain data) to bytes, no I/O, no JavaScript,
nothing loaded from elsewhere (CSP below). The daemon's side that gathers the snapshot is
daemon/status.py; the charts are drawn by daemon/http/svg.py. Everything that comes from
outside (package and file names, reasons, messages, the query) is escaped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from html import escape
from typing import Any
from urllib.parse import quote

from conda_indexd.daemon.http import svg
from conda_indexd.names import utc_timestamp

# sent with every HTML answer: nothing but the page itself, its inline CSS and data: images
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"


@dataclass
class SubdirStatus:
    subdir: str
    packages: int = 0
    last_publish: float | None = None  # wall clock of the last run that replaced files
    last_duration: float | None = None  # seconds of the last run
    last_run: float | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)  # path, reason, message
    # CEP-47: published packages whose build timestamp is later than their indexed_timestamp
    flagged: list[dict[str, Any]] = field(default_factory=list)  # path, build_timestamp, indexed_timestamp, message
    error: str | None = None  # the last run's failure, until a run succeeds


def document(
    channel: str,
    ready: bool,
    subdirs: dict[str, SubdirStatus],
    pending: list[dict[str, Any]],
    now: float | None = None,
    ignored: list[dict[str, str]] | None = None,
    role: dict[str, Any] | None = None,
    sources: list[dict[str, Any]] | None = None,
    activity: dict[str, Any] | None = None,
    intake: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`ignored`: [{folder, reason}] of platform-like folders left out; `role`: the
    leadership of a daemon in a pair (ha/leader.py's describe()); `sources`: the pkgs dirs
    served (--from-pkgs-dir), each as pkgs/dirs.DirReport.as_dict(); `activity`: the feed
    and the chart series (daemon/activity.py's snapshot()); `intake`: event and request
    counts (daemon/status.py)."""
    now = time.time() if now is None else now
    return {
        "channel": channel,
        "ready": ready,
        "generated_at": _iso(now),
        "subdirs": [
            {**asdict(s), "last_publish": _iso(s.last_publish), "last_run": _iso(s.last_run)} for s in sorted(subdirs.values(), key=lambda s: s.subdir)
        ],
        "pending": pending,
        "ignored": ignored or [],
        **({"role": role} if role else {}),
        **({"pkgs_dirs": sources} if sources is not None else {}),
        "activity": activity or {"feed": [], "window_seconds": 3600, "now_epoch": now, "latency": {}, "packages": {}, "refusals": {}},
        "intake": intake or {},
    }


def _iso(t: float | None) -> str | None:
    return None if t is None else utc_timestamp(t)


def as_json(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode()


_CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:78em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;width:100%;margin:.5em 0}
th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}td.t{white-space:nowrap}
.ok{color:#17692a}.warn{color:#8a5a00}.bad{color:#a31515}code{font-size:.92em}
.charts{display:flex;flex-wrap:wrap;gap:1em}.charts svg{border:1px solid #ddd;max-width:100%;height:auto}
nav a{margin-right:.8em}td.files{font-size:.85em;color:#444}.refused td{background:#fff4f4}
form input[type=search]{font:inherit;padding:.2em .4em;width:20em}
"""


def _role_html(role: dict[str, Any] | None) -> str:
    if not role:
        return ""
    e = escape
    css = {"leader": "ok", "standby": "ok"}.get(role["role"], "bad")
    token = f", fencing token {role['token']}" if role.get("token") is not None else ""
    error = f' <span class="bad">{e(role["error"])}</span>' if role.get("error") else ""
    lease = role.get("lease") or {}
    holder = lease.get("holder")
    holder_html = f"<code>{e(holder)}</code>" + (" (this daemon)" if holder == role["holder"] else "") if holder else "nobody"
    previous = role.get("previous_publish")
    prev_html = (f"token {e(str(previous.get('token')))} by <code>{e(str(previous.get('leader')))}</code>: "
                 f"<code>{e(str(previous.get('step')))}</code> at {e(str(previous.get('at')))}") if previous else "none"  # fmt: skip
    took = role.get("took_over_at")
    rows = [
        ("role", f'<span class="{css}" id="role">{e(role["role"])}</span>{token}{error}'),
        ("this daemon", f"<code>{e(role['holder'])}</code>"),
        ("lease holder", holder_html),
        ("lease token", e(str(lease.get("token"))) if lease.get("token") is not None else "none"),
        ("last takeover (lease acquired)", e(lease.get("acquired_at") or "never")),
        ("takeovers by this daemon", f"{role.get('takeovers', 0)}" + (f", the last at {e(_iso(took) or '')}" if took else "")),
        ("old leader's last publish step at this daemon's takeover", prev_html),
        ("lease length", f"{role['lease_seconds']:g} s" if isinstance(role.get("lease_seconds"), int | float) else ""),
        ("database", f"<code>{e(role['database'])}</code>"),
    ]
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'\n<h2>Active/standby pair</h2>\n<table class="pair">{body}</table>'


def as_html(doc: dict[str, Any]) -> bytes:
    e = escape
    state = '<span class="ok">ready</span>' if doc["ready"] else '<span class="warn">start-up index in progress</span>'
    rows = []
    for s in doc["subdirs"]:
        err = f'<br><span class="bad">{e(s["error"])}</span>' if s["error"] else ""
        duration = "" if s["last_duration"] is None else f"{s['last_duration']:.3f} s"
        rows.append(
            f'<tr><td><a href="/status/{e(quote(s["subdir"]))}">{e(s["subdir"])}</a>{err}</td>'
            f'<td class="n">{s["packages"]}</td><td>{e(s["last_publish"] or "never")}</td>'
            f'<td class="n">{duration}</td><td class="n">{len(s["skipped"])}</td></tr>'
        )
    skipped = [
        f"<tr><td>{e(s['subdir'])}</td><td><code>{e(f['path'])}</code></td><td>{e(f['reason'])}</td><td>{e(f['message'])}</td></tr>"
        for s in doc["subdirs"]
        for f in s["skipped"]
    ]
    flagged = [
        f"<tr><td>{e(s['subdir'])}</td><td><code>{e(f['path'])}</code></td><td>{e(f['message'])}</td></tr>"
        for s in doc["subdirs"]
        for f in s.get("flagged", [])
    ]
    pending = [
        f'<tr><td>{e(p["subdir"])}</td><td class="n">{p["files"]}</td><td>{"yes" if p["full_scan"] else "no"}</td>'
        f'<td>{e(p.get("reason") or "")}</td><td class="n">{p["waiting_seconds"]:.1f} s</td></tr>'
        for p in doc["pending"]
    ]
    ignored = [f"<tr><td><code>{e(i['folder'])}/</code></td><td>{e(i['reason'])}</td></tr>" for i in doc.get("ignored", [])]
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>conda-indexd: {e(doc["channel"])}</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>conda-indexd</h1>
<p>Channel <code>{e(doc["channel"])}</code>: {state}. Generated {e(doc["generated_at"])}.
<a href="/status.json">status.json</a> · <a href="/metrics">metrics</a></p>{_role_html(doc.get("role"))}
{_charts_html(doc["activity"])}
{_feed_html(doc["activity"], paired=bool(doc.get("role")))}
<h2>Subdirs</h2>
<table><thead><tr><th>subdir</th><th>packages published</th><th>last publish</th><th>last run took</th><th>skipped</th></tr></thead>
<tbody>{"".join(rows) or '<tr><td colspan="5">none yet</td></tr>'}</tbody></table>
<h2>Archives left out</h2>
<table><thead><tr><th>subdir</th><th>file</th><th>reason</th><th>detail</th></tr></thead>
<tbody>{"".join(skipped) or '<tr><td colspan="4" class="ok">none</td></tr>'}</tbody></table>
<h2>Build timestamps later than their indexed_timestamp (CEP-47)</h2>
<table><thead><tr><th>subdir</th><th>file</th><th>detail</th></tr></thead>
<tbody>{"".join(flagged) or '<tr><td colspan="3" class="ok">none</td></tr>'}</tbody></table>
<h2>Pending work</h2>
<table><thead><tr><th>subdir</th><th>files</th><th>full scan</th><th>why</th><th>waiting</th></tr></thead>
<tbody>{"".join(pending) or '<tr><td colspan="5" class="ok">nothing pending</td></tr>'}</tbody></table>
{_sources_html(doc.get("pkgs_dirs"))}<h2>Folders ignored</h2>
<table><thead><tr><th>folder</th><th>why</th></tr></thead>
<tbody>{"".join(ignored) or '<tr><td colspan="2" class="ok">none</td></tr>'}</tbody></table>
{_intake_html(doc.get("intake") or {})}
</body></html>
"""
    return html.encode()


def _charts_html(activity: dict[str, Any]) -> str:
    """The last hour: event -> publish latency and packages per subdir, refusals by reason."""
    end = float(activity.get("now_epoch") or 0.0)
    start = end - float(activity.get("window_seconds") or 3600)
    window = f"last {float(activity.get('window_seconds') or 3600) / 60:g} minutes"
    latency = svg.line_chart(activity.get("latency") or {}, title=f"Event to publish latency per subdir ({window})", unit="seconds", start=start, end=end)
    packages = svg.line_chart(activity.get("packages") or {}, title=f"Packages published per subdir ({window})", unit="packages", start=start, end=end)
    refusals = svg.bar_chart(list((activity.get("refusals") or {}).items()), title="Archives refused by reason (since start)", unit="archives")
    return f'<h2>Charts</h2>\n<div class="charts">\n{latency}\n{packages}\n{refusals}\n</div>'


def _files_html(files: dict[str, list[str]]) -> str:
    parts = [f"{kind}: " + ", ".join(f"<code>{escape(f)}</code>" for f in names) for kind, names in files.items() if names]
    return "<br>".join(parts)


def _feed_html(activity: dict[str, Any], *, paired: bool) -> str:
    e = escape
    rows = []
    for f in activity.get("feed") or []:
        refused = [f'<span class="bad">refused <code>{e(s["path"])}</code>: {e(s["reason"])}</span> {e(s["message"])}' for s in f["skipped"]]
        more = f.get("refused", 0) - len(f["skipped"])
        if more > 0:
            refused.append(f'<span class="bad">and {more} more refused</span>')
        files = "<br>".join([p for p in [_files_html(f.get("files") or {})] if p] + refused)
        latency = "" if f.get("latency_seconds") is None else f"{f['latency_seconds']:.2f} s"
        member = f"<td><code>{e(f['member'] or '')}</code></td>" if paired else ""
        css = ' class="refused"' if f["kind"] == "refused" else ""
        rows.append(
            f'<tr{css}><td class="t">{e(f["at"])}</td><td class="t">{e(f["subdir"])}</td>{member}<td>{e(f["kind"])}</td>'
            f'<td class="n">{f["added"]}</td><td class="n">{f["removed"]}</td><td class="n">{f["replaced"]}</td>'
            f'<td class="n">{f.get("refused", len(f["skipped"]))}</td><td class="n">{f["duration_seconds"]:.3f} s</td><td class="n">{latency}</td>'
            f'<td class="files">{files}</td></tr>'
        )
    cols = 11 if paired else 10
    member_th = "<th>by</th>" if paired else ""
    return f"""<h2>Activity (the last {len(rows)} publishes and refusals, newest first)</h2>
<table class="feed"><thead><tr><th>time (UTC)</th><th>subdir</th>{member_th}<th>what</th><th>added</th><th>removed</th><th>replaced</th>
<th>refused</th><th>run took</th><th>event to publish</th><th>files</th></tr></thead>
<tbody>{"".join(rows) or f'<tr><td colspan="{cols}">nothing yet</td></tr>'}</tbody></table>"""


def _intake_html(intake: dict[str, Any]) -> str:
    """Event intake counts; for a bucket its address, request errors and notification outcomes."""
    e = escape
    if not intake:
        return ""
    events = "".join(f'<tr><td>{e(k)}</td><td class="n">{v:g}</td></tr>' for k, v in (intake.get("events") or {}).items())
    out = f"""<h2>Event intake</h2>
<table><thead><tr><th>event kind</th><th>seen since start</th></tr></thead>
<tbody>{events or '<tr><td colspan="2">none</td></tr>'}</tbody></table>"""
    bucket = intake.get("bucket")
    if bucket:
        errors = "".join(
            f'<tr><td>{e(r["operation"])}</td><td>{e(r["status"])}</td><td class="n">{r["count"]:g}</td></tr>' for r in bucket.get("request_errors") or []
        )
        outcomes = "".join(f'<tr><td>{e(k)}</td><td class="n">{v:g}</td></tr>' for k, v in (bucket.get("notifications") or {}).items())
        out += f"""
<h2>Bucket</h2>
<p>Address <code>{e(bucket["address"])}</code>; {bucket.get("requests", 0):g} requests to the object store since start.</p>
<table><thead><tr><th>operation</th><th>status</th><th>failed requests</th></tr></thead>
<tbody>{errors or '<tr><td colspan="3" class="ok">none</td></tr>'}</tbody></table>
<table><thead><tr><th>bucket notification records (POST /s3-events)</th><th>count</th></tr></thead>
<tbody>{outcomes or '<tr><td colspan="2">none</td></tr>'}</tbody></table>"""
    return out


# --- the package view of one subdir --------------------------------------------------------------


def _ms(t: int | None) -> str:
    return "" if t is None else utc_timestamp(t / 1000)


def subdir_view(channel: str, subdir: str, query: str, rows: list[Any], matched: int, total: int, skipped: list[dict[str, str]],
                now: float | None = None, *, names: int | None = None, names_read: int | None = None, source: str | None = None,
                problem: str | None = None, unreadable: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The package view as plain data: `rows` are daemon/packageview.py's Rows, `matched`
    the files of the `names_read` package names read (of `names` matching), `source` what
    was read (`shards`, `repodata.json`), `problem` why nothing could be, `unreadable` names
    whose shard could not be read."""
    return {
        "channel": channel,
        "subdir": subdir,
        "query": query,
        "generated_at": _iso(time.time() if now is None else now),
        "packages": total,
        "matched": matched,
        "names_matched": names,
        "names_read": names_read,
        "source": source,
        "problem": problem,
        "unreadable": unreadable or [],
        "files": [
            {
                "filename": r.filename,
                "name": r.name,
                "version": r.version,
                "build": r.build,
                "size": r.size,
                "indexed_timestamp": r.indexed_timestamp,
                "indexed_at": _ms(r.indexed_timestamp) or None,
                "timestamp": r.timestamp,
            }
            for r in rows
        ],  # fmt: skip
        "skipped": [s for s in skipped if query.strip().lower() in s["path"].lower()],
    }


def _size(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


def subdir_html(view: dict[str, Any]) -> bytes:
    e = escape
    q = view["query"]
    rows = "".join(
        f"<tr><td>{e(f['name'])}</td><td>{e(f['version'])}</td><td>{e(f['build'])}</td><td><code>{e(f['filename'])}</code></td>"
        f'<td class="n">{_size(f["size"])}</td><td>{e(f["indexed_at"] or "")}</td></tr>'
        for f in view["files"]
    )
    skipped = "".join(f"<tr><td><code>{e(s['path'])}</code></td><td>{e(s['reason'])}</td><td>{e(s['message'])}</td></tr>" for s in view["skipped"])
    shown = len(view["files"])
    more = f" (the first {shown} shown)" if shown < view["matched"] else ""
    what = f"matching <code>{e(q)}</code>" if q.strip() else "in all"
    json_url = f"/status/{quote(view['subdir'])}.json" + (f"?q={quote(q)}" if q else "")
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>conda-indexd: {e(view["subdir"])}</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>
<body>
<nav><a href="/">status</a><a href="{e(json_url)}">this view as JSON</a></nav>
<h1>{e(view["subdir"])}</h1>
<p>Channel <code>{e(view["channel"])}</code>, {view["packages"]} packages published. Generated {e(view["generated_at"])}.</p>
<form method="get" action="/status/{e(quote(view["subdir"]))}"><label>Package name contains
<input type="search" name="q" value="{e(q)}" maxlength="200"></label> <button type="submit">search</button></form>
<h2>Published files {what}: {view["matched"]}{more}</h2>{_read_html(view)}
<table><thead><tr><th>name</th><th>version</th><th>build</th><th>file</th><th>size (bytes)</th><th>indexed_timestamp (UTC)</th></tr></thead>
<tbody>{rows or '<tr><td colspan="6">none</td></tr>'}</tbody></table>
<h2>Archives left out{" matching" if q.strip() else ""}</h2>
<table><thead><tr><th>file</th><th>reason</th><th>detail</th></tr></thead>
<tbody>{skipped or '<tr><td colspan="3" class="ok">none</td></tr>'}</tbody></table>
</body></html>
"""
    return html.encode()


def _read_html(view: dict[str, Any]) -> str:
    """What the package view read, and what it left out."""
    e = escape
    parts = []
    if view.get("problem"):
        parts.append(f'<p class="warn">{e(view["problem"])}</p>')
    names, read = view.get("names_matched"), view.get("names_read")
    if names is not None and read is not None and names > read:
        parts.append(f'<p class="warn">{names} package names match; the files of the first {read} (by name) are read. '
                     f"Narrow the search to see the others.</p>")  # fmt: skip
    if view.get("unreadable"):
        parts.append('<p class="bad">Shards that could not be read: ' + ", ".join(f"<code>{e(n)}</code>" for n in view["unreadable"]) + "</p>")
    if view.get("source") == "shards":
        shards = f"{read} shard" + ("" if read == 1 else "s")
        parts.append(f"<p>Read for this request from the published shard index and {shards} (one per package name).</p>")
    elif view.get("source") == "repodata.json":
        parts.append("<p>Read for this request from the published repodata.json (this subdir has no shards).</p>")
    return "\n" + "\n".join(parts) if parts else ""


def _sources_html(sources: list[dict[str, Any]] | None) -> str:
    """The pkgs dirs a channel is made from: taken, duplicates, skipped, origins."""
    if sources is None:
        return ""
    e = escape
    rows, skipped = [], []
    for d in sources:
        origins = "<br>".join(f"<code>{e(url)}</code> ({n})" for url, n in d["origins"].items()) or "none"
        problem = f'<br><span class="bad">{e(d["problem"])}</span>' if d.get("problem") else ""
        rows.append(
            f"<tr><td><code>{e(d['dir'])}</code>{problem}</td><td>{'writable' if d['writable'] else 'read-only'}</td>"
            f'<td class="n">{d["taken"]}</td><td class="n">{d["duplicates_dropped"]}</td>'
            f'<td class="n">{len(d["skipped"])}</td><td>{origins}</td></tr>'
        )
        skipped += [f"<tr><td><code>{e(d['dir'])}</code></td><td><code>{e(s['path'])}</code></td><td>{e(s['reason'])}</td>"
                    f"<td>{e(s['message'])}</td></tr>" for s in d["skipped"]]  # fmt: skip
    return f"""<h2>Package caches served</h2>
<table><thead><tr><th>pkgs dir</th><th>kind</th><th>packages taken</th><th>duplicates dropped</th><th>skipped</th><th>origins (urls.txt, by channel)</th></tr></thead>
<tbody>{"".join(rows) or '<tr><td colspan="6">none</td></tr>'}</tbody></table>
<h2>Package cache entries skipped</h2>
<table><thead><tr><th>pkgs dir</th><th>entry</th><th>reason</th><th>detail</th></tr></thead>
<tbody>{"".join(skipped) or '<tr><td colspan="4" class="ok">none</td></tr>'}</tbody></table>
"""
