"""`conda-indexd wait TARGET SUBDIR/FILENAME [--sha256 HEX] [--timeout S]`: the CI hand-off.

Exits 0 once the package is in the published repodata (with that sha256 when given),
1 on timeout with what is published instead, 1 at once when the file is left out as
broken (that file, or the one with the given sha256; `--keep-waiting` waits for a
re-upload instead), 2 on bad arguments (one line, from the command line parser). TARGET is a channel folder, a channel URL, or the daemon's HTTP
address: an http(s) TARGET whose `/status.json` is conda-indexd's status document is the
daemon; any other http(s) TARGET is a channel URL.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

from conda_indexd.errors import IndexdError
from conda_indexd.wait.httpcache import FetchError, HttpCache
from conda_indexd.wait.sources import DaemonSource, FolderSource, Observation, Source, UrlSource, channel_of, is_status_document

PROG = "conda-indexd wait"
_SUBDIR = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class TargetError(IndexdError):
    """The target cannot be used as given (exit 2)."""


def _target(text: str) -> str:
    if re.match(r"^https?://[^/]+", text, re.IGNORECASE):
        return text
    if "://" in text:
        raise argparse.ArgumentTypeError(f"only http:// and https:// URLs are supported: {text!r}")
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"not a channel folder or an http(s) URL: {text!r}")
    return text


def _package(text: str) -> tuple[str, str]:
    subdir, sep, filename = text.partition("/")
    if not sep or not _SUBDIR.match(subdir) or not filename or "/" in filename:
        raise argparse.ArgumentTypeError(f"expected SUBDIR/FILENAME, e.g. noarch/pkg-1.0-0.conda: {text!r}")
    if not filename.endswith((".conda", ".tar.bz2")) or filename.count("-") < 2:
        raise argparse.ArgumentTypeError(f"not a conda package filename (name-version-build.conda or .tar.bz2): {filename!r}")
    return subdir, filename


def _sha256(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError(f"expected 64 hex digits: {text!r}")
    return text.lower()


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text}")
    return value


def add_parser(sub: Any) -> None:
    """The `wait` subcommand, for cli.build_parser."""
    p = sub.add_parser("wait", help="wait until a package is published (for CI pipelines)",
                       description="Exit 0 once SUBDIR/FILENAME is in TARGET's published repodata (with --sha256, "
                                   "that sha256); exit 1 on timeout, printing what is published instead, and "
                                   "exit 1 at once when the indexer left that file out as broken.")  # fmt: skip
    p.add_argument("target", metavar="TARGET", type=_target,
                   help="channel folder, channel URL, or the daemon's HTTP address (e.g. http://127.0.0.1:8650)")  # fmt: skip
    p.add_argument(
        "package",
        metavar="SUBDIR/FILENAME",
        type=_package,
        help="e.g. noarch/pkg-1.0-0.conda",
    )
    p.add_argument(
        "--sha256",
        type=_sha256,
        metavar="HEX",
        help="wait for this sha256 (default: any)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=600.0,
        metavar="S",
        help="give up after S seconds (default 600)",
    )
    p.add_argument(
        "--keep-waiting",
        action="store_true",
        help="when the file is left out as broken, keep waiting (for a re-upload) until --timeout instead of exiting 1 at once",
    )
    p.add_argument(
        "--interval",
        type=_seconds,
        default=0.5,
        metavar="S",
        help="time between looks (default 0.5)",
    )
    p.set_defaults(log_format=None, verbose=False)


def _resolve(target: str, http: HttpCache) -> Source:
    """A folder, the daemon, or a channel URL. Raises FetchError while the address does not
    answer (retried until the deadline) and TargetError when it cannot be used."""
    if not re.match(r"^https?://", target, re.IGNORECASE):
        return FolderSource(Path(target))
    try:
        body = http.get(target.rstrip("/") + "/status.json")
    except FetchError as exc:
        if exc.status is None:
            raise  # not answering (yet): try again at the next look
        body = None  # answering, with an error for that path: not the daemon
    doc = None
    if body is not None:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
    if not is_status_document(doc):
        return UrlSource(target, http)
    assert isinstance(doc, dict)
    channel = channel_of(doc)
    if not channel.is_dir():
        raise TargetError(
            f"{target} is conda-indexd's HTTP address, but its channel folder {channel} is not visible here: "
            "pass the channel folder or the channel's URL instead"
        )
    return DaemonSource(target, channel, http)


def describe(obs: Observation, want: str | None) -> str:
    parts = []
    if obs.skipped:
        parts.append(f"left out by the indexer: {obs.skipped}")
    if obs.sha256 is not None and want is not None and obs.sha256 != want:
        parts.append(f"published with sha256 {obs.sha256}, not {want}")
    elif obs.detail:
        parts.append(obs.detail)
    if obs.error:
        parts.append(f"cannot read: {obs.error}")
    return "; ".join(parts) or "not published"


def given_up(obs: Observation, want: str | None, keep_waiting: bool) -> bool:
    """The file waited for is left out as broken, as it is now: without --sha256 any file
    of that name, with it the file of that sha256 (a broken older upload is waited past)."""
    if keep_waiting or not obs.broken:
        return False
    return want is None or obs.broken_sha256 == want


def run(args: argparse.Namespace) -> int:
    subdir, filename = args.package
    want: str | None = args.sha256
    started = time.monotonic()
    deadline = started + args.timeout
    http = HttpCache(timeout=max(1.0, min(10.0, args.timeout)))
    source: Source | None = None
    said = ""
    while True:
        if source is None:
            try:
                source = _resolve(args.target, http)
            except FetchError as exc:
                obs = Observation(error=str(exc))
            except TargetError as exc:
                print(f"conda-indexd: error: {exc}", file=sys.stderr)
                return 2
        if source is not None:
            obs = source.look(subdir, filename)
            if obs.sha256 is not None and (want is None or obs.sha256 == want):
                waited = time.monotonic() - started
                print(f"{subdir}/{filename} is published (sha256 {obs.sha256}) after {waited:.1f} s")
                return 0
        state = describe(obs, want)
        if given_up(obs, want, args.keep_waiting):
            print(f"{PROG}: {subdir}/{filename}: {state} (--keep-waiting waits for a re-upload)", file=sys.stderr)
            return 1
        now = time.monotonic()
        if now >= deadline:
            print(
                f"{PROG}: timed out after {args.timeout:g} s: {subdir}/{filename}: {state}",
                file=sys.stderr,
            )
            return 1
        if state != said:  # one line per change, so a CI log shows what it is waiting for
            print(f"waiting for {subdir}/{filename}: {state}", file=sys.stderr, flush=True)
            said = state
        time.sleep(min(args.interval, deadline - now))
