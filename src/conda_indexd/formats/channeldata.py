"""Channel-level outputs (docs/spec §6.3-6.5): channeldata.json (CEP-38:
https://github.com/conda/ceps/blob/main/cep-0038.md), rss.xml, and the root and
per-subdir index.html. Pure functions from repodata and cached metadata to bytes.

channeldata follows conda-index 0.13's `_update_channeldata`, with two fixes the spec
notes: it is rebuilt from the current repodata of every subdir (names whose packages
are all gone are dropped instead of kept forever), and each name's `timestamp` is the
newest one (conda-index keeps the last group processed). Versions are compared with
py-rattler's `Version` (conda's VersionOrder), an optional extra like current_repodata.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from html import escape
from typing import Any
from xml.dom import minidom

from conda_indexd.names import compact_json, conda_twin

CHANNELDATA_VERSION = 1
NEWER_WINS = (
    "description", "dev_url", "doc_url", "doc_source_url", "home", "license", "source_url",
    "source_git_url", "summary", "icon_url", "icon_hash", "tags", "identifiers", "keywords",
    "recipe_origin", "version",
)  # fmt: skip
ANY_TRUE = ("binary_prefix", "text_prefix", "activate.d", "deactivate.d", "pre_link", "post_link", "pre_unlink")

Loader = Callable[[str, str], dict[str, Any]]  # (subdir, filename) -> cached metadata merged


def seconds(timestamp: Any) -> int:
    value = int(timestamp or 0)
    return value // 1000 if value > 253402300799 else value  # milliseconds


def _version_key() -> Callable[[str], Any]:
    from conda_indexd.formats.current import rattler_module

    version = rattler_module().Version

    def key(v: str) -> Any:
        try:
            return version(str(v))
        except Exception:  # noqa: BLE001 - unparsable versions sort first
            return version("0")

    return key


def build(subdirs: dict[str, dict[str, Any]], load: Loader) -> dict[str, Any]:
    """channeldata from {subdir: patched repodata} and a loader of cached metadata."""
    vkey = _version_key()
    packages: dict[str, dict[str, Any]] = {}
    for subdir in sorted(subdirs):
        repodata = subdirs[subdir]
        conda = repodata.get("packages.conda", {})
        records = dict(conda)
        for fn, rec in repodata.get("packages", {}).items():
            if conda_twin(fn) not in conda:
                records[fn] = rec  # .conda preferred
        newest: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        for fn in sorted(records):
            rec = records[fn]
            key = (rec["name"], rec["version"])
            if key not in newest or newest[key][1].get("timestamp", 0) < rec.get("timestamp", 0):
                newest[key] = (fn, rec)
        for fn, rec in sorted(newest.values(), key=lambda item: item[0]):
            data = load(subdir, fn)
            data.update(rec)
            name = data["name"]
            existing = packages.get(name, {})
            dv, ev = str(data.get("version", "0")), str(existing.get("version", "0"))
            data_newer = vkey(dv) > vkey(ev) or (dv == ev and seconds(data.get("timestamp", 0)) > seconds(existing.get("timestamp", 0)))
            entry: dict[str, Any] = {}
            for k in NEWER_WINS:
                entry[k] = data[k] if data.get(k) and (data_newer or not existing.get(k)) else existing.get(k)
            for k in ANY_TRUE:
                entry[k] = any((data.get(k), existing.get(k)))
            entry["subdirs"] = sorted(set(existing.get("subdirs", [])) | {subdir})
            run_exports = dict(existing.get("run_exports", {}))
            if data.get("run_exports"):
                run_exports[dv] = data["run_exports"]
            entry["run_exports"] = run_exports
            entry["timestamp"] = max(seconds(data.get("timestamp", 0)), existing.get("timestamp", 0))
            packages[name] = entry
    clean = {name: {k: v for k, v in entry.items() if v is not None} for name, entry in packages.items()}
    return {"channeldata_version": CHANNELDATA_VERSION, "packages": clean, "subdirs": sorted(subdirs)}


def serialize(channeldata: dict[str, Any]) -> bytes:
    """As conda-index writes it: compact, sorted keys, a final newline."""
    return (compact_json(channeldata) + "\n").encode()


def merged_metadata(index_json: str | None, about: str | None, post_install: str | None,
                    recipe: str | None, run_exports: str | None) -> dict[str, Any]:  # fmt: skip
    """conda-index's load_all_from_cache: recipe, about, post_install, index_json layered
    in that order; `source_*` from the recipe's source; newlines flattened."""
    data: dict[str, Any] = {}
    for text in (recipe, about, post_install, index_json):
        if text:
            value = json.loads(text)
            if isinstance(value, dict):
                data.update(value)
    source = data.get("source", {})
    if isinstance(source, dict):
        data.update({"source_" + k: v for k, v in source.items()})
    for key in ("description", "summary"):  # conda-index's clear_newline_chars
        value = data.get(key)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = "".join(value)
        if isinstance(value, str):
            data[key] = value.strip().replace("\n", " ")
    data["run_exports"] = json.loads(run_exports or "{}")
    return data


# --- rss.xml -------------------------------------------------------------------------------------


def _rfc822(timestamp: float) -> str:
    return time.strftime("%a, %d %b %Y %T GMT", time.gmtime(timestamp))


def rss(channel_name: str, channeldata: dict[str, Any], limit: int = 100) -> bytes:
    """RSS 2.0 of the `limit` most recently built names. Dates come from the packages
    (not the clock), so an unchanged channel gives unchanged bytes."""
    recent = sorted(channeldata["packages"].items(), key=lambda item: item[1].get("timestamp", 0), reverse=True)[:limit]
    newest = max((p.get("timestamp", 0) for _, p in recent), default=0)
    doc = minidom.parseString("<rss version='2.0'></rss>")

    def append(node: minidom.Element, fields: dict[str, Any]) -> None:
        for key, value in fields.items():
            if value:
                child = doc.createElement(key)
                child.appendChild(doc.createTextNode(str(value)))
                node.appendChild(child)

    channel = doc.createElement("channel")
    append(channel, {
        "title": f"anaconda.org/{channel_name}",
        "link": f"https://conda.anaconda.org/{channel_name}",
        "description": f"The most recent {len(recent)} updates for {channel_name}.",
        "pubDate": _rfc822(newest),
        "lastBuildDate": _rfc822(newest),
    })  # fmt: skip
    for name, p in recent:
        item = doc.createElement("item")
        append(item, {
            "title": f"{name} {p.get('version')} [{', '.join(sorted(set(p.get('subdirs', []))))}]",
            "description": p.get("description") or p.get("summary") or "No description.",
            "link": p.get("doc_url"),
            "comments": p.get("dev_url"),
            "guid": p.get("source_url"),
            "pubDate": _rfc822(p.get("timestamp", 0)),
            "source": p.get("home"),
        })  # fmt: skip
        channel.appendChild(item)
    root = doc.documentElement
    assert root is not None  # createDocument made it
    root.appendChild(channel)
    return doc.toprettyxml(indent="  ", encoding="utf-8")


# --- index.html ----------------------------------------------------------------------------------

_CSS = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
    "th,td{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left}td.n{text-align:right}"
    "code{font-size:.9em}"
)


def _page(title: str, body: str) -> bytes:
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n<h1>{escape(title)}</h1>\n{body}\n</body></html>\n"
    ).encode()


def root_html(channel_name: str, channeldata: dict[str, Any]) -> bytes:
    subdirs = channeldata["subdirs"]
    head = "".join(f"<th>{escape(s)}</th>" for s in subdirs)
    rows = []
    for name, p in sorted(channeldata["packages"].items()):
        marks = "".join(f"<td>{'X' if s in p.get('subdirs', []) else ''}</td>" for s in subdirs)
        home = f'<a href="{escape(p["home"])}">{escape(name)}</a>' if p.get("home") else escape(name)
        rows.append(f"<tr><td>{home}</td><td>{escape(str(p.get('version', '')))}</td>{marks}"
                    f"<td>{escape(p.get('summary') or '')}</td></tr>")  # fmt: skip
    body = (f"<table><thead><tr><th>package</th><th>latest version</th>{head}<th>summary</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")  # fmt: skip
    return _page(channel_name, body)


def subdir_html(channel_name: str, subdir: str, files: Iterable[str], repodata: dict[str, Any],
                dependencies: bool = False) -> bytes:  # fmt: skip
    """The metadata files present, then every package by filename with size, build
    time, sha256 and md5 (`dependencies`: depends as a tooltip)."""
    records = {**repodata.get("packages", {}), **repodata.get("packages.conda", {})}
    rows = [f'<tr><td><a href="{escape(f)}">{escape(f)}</a></td><td></td><td></td><td></td><td></td></tr>' for f in files]
    for fn in sorted(records):
        r = records[fn]
        built = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds(r.get("timestamp", 0)))) if r.get("timestamp") else ""
        tip = f' title="{escape(chr(10).join(r.get("depends", [])))}"' if dependencies else ""
        rows.append(
            f'<tr><td><a href="{escape(fn)}"{tip}>{escape(fn)}</a></td><td class="n">{r.get("size", "")}</td>'
            f"<td>{built}</td><td><code>{escape(str(r.get('sha256', '')))}</code></td>"
            f"<td><code>{escape(str(r.get('md5', '')))}</code></td></tr>"
        )
    body = ("<table><thead><tr><th>file</th><th>size</th><th>built (UTC)</th><th>sha256</th><th>md5</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")  # fmt: skip
    return _page(f"{channel_name}/{subdir}", body)
