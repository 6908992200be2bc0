"""The daemon's status page: `GET /` (plain HTML and CSS) and `GET /status.json`.

Pure functions: the daemon hands over what it knows, these turn it into bytes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from html import escape
from typing import Any

from conda_indexd.names import utc_timestamp


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
) -> dict[str, Any]:
    """`ignored`: [{folder, reason}] of platform-like folders left out; `role`: the
    leadership of a daemon in a pair (ha/leader.py's describe()); `sources`: the pkgs dirs
    served (--from-pkgs-dir), each as pkgs/dirs.DirReport.as_dict()."""
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
    }


def _iso(t: float | None) -> str | None:
    return None if t is None else utc_timestamp(t)


def as_json(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode()


_CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:70em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;width:100%;margin:.5em 0}
th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#17692a}.warn{color:#8a5a00}.bad{color:#a31515}code{font-size:.92em}
"""


def _role_html(role: dict[str, Any] | None) -> str:
    if not role:
        return ""
    css = {"leader": "ok", "standby": "ok"}.get(role["role"], "bad")
    token = f", fencing token {role['token']}" if role.get("token") is not None else ""
    error = f' <span class="bad">{escape(role["error"])}</span>' if role.get("error") else ""
    return (f'\n<p>Role in the pair: <span class="{css}">{escape(role["role"])}</span>{token}; '
            f'this daemon is <code>{escape(role["holder"])}</code>, database <code>{escape(role["database"])}</code>.{error}</p>')  # fmt: skip


def as_html(doc: dict[str, Any]) -> bytes:
    e = escape
    state = '<span class="ok">ready</span>' if doc["ready"] else '<span class="warn">start-up index in progress</span>'
    rows = []
    for s in doc["subdirs"]:
        err = f'<br><span class="bad">{e(s["error"])}</span>' if s["error"] else ""
        duration = "" if s["last_duration"] is None else f"{s['last_duration']:.3f} s"
        rows.append(
            f"<tr><td>{e(s['subdir'])}{err}</td>"
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
</body></html>
"""
    return html.encode()


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
