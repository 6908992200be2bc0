"""Command line: `conda-indexd index|watch CHANNEL_DIR [options]`, `conda-indexd demo [DIR]`,
`conda-indexd wait` (wait/command.py).

Bad flags and bad paths give one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from conda_indexd import __version__
from conda_indexd.backends import check_reachable, clean_uploads, open_backends, open_lock
from conda_indexd.caches.base import CacheError
from conda_indexd.cli import compat, indexconfig, leftovers
from conda_indexd.cli.progress import ProgressLine
from conda_indexd.cli.s3config import remote_settings
from conda_indexd.config import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_SHARD_RETENTION, Db, IndexConfig, WatchConfig, default_threads
from conda_indexd.daemon.onready import after_ready
from conda_indexd.daemon.supervisor import Daemon
from conda_indexd.errors import Fenced, IndexdError
from conda_indexd.formats.current import CurrentRepodataUnavailable, parse_pins
from conda_indexd.formats.current import available as current_available
from conda_indexd.formats.patches import PatchError
from conda_indexd.ha.lock import ChannelBusy
from conda_indexd.ha.pairlease import index_lease
from conda_indexd.pipeline import ignored
from conda_indexd.pipeline.channel import ChannelDriver
from conda_indexd.pipeline.indexer import SubdirResult
from conda_indexd.stores.base import StoreError
from conda_indexd.util import logs
from conda_indexd.util.fsio import writable_folder
from conda_indexd.wait import command as wait
from conda_indexd.wait.command import TargetError

PROG = "conda-indexd"
T = TypeVar("T")
DEMO_DIR = "demo-channel"  # demo/channel.py's default folder


class UsageError(IndexdError):
    """A bad flag or path: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _zst_level(text: str) -> int:
    value = _positive_int(text)
    if value > 22:
        raise argparse.ArgumentTypeError(f"zstd levels go from 1 to 22: {text}")
    return value


def add_index_options(p: argparse.ArgumentParser) -> None:
    """The options shared by `index` and (later) `watch`, with conda-index's names."""
    p.add_argument("channel", metavar="CHANNEL_DIR", help="channel folder holding platform subdirs, or s3://BUCKET/PREFIX")
    p.add_argument("--output", metavar="DIR", help="write repodata under DIR (or s3://BUCKET/PREFIX) instead of the channel (cache.db stays in the channel)")
    p.add_argument("--cache-dir", metavar="DIR", help="s3:// channels: the local folder for cache.db (default $XDG_STATE_HOME/conda-indexd/BUCKET/PREFIX)")
    p.add_argument("--subdir", action="append", metavar="S", help="index only this subdir (repeatable)")
    p.add_argument("-n", "--channel-name", help="channel name (used by later outputs such as index.html)")
    p.add_argument("--zst", action=argparse.BooleanOptionalAction, default=None, help="write repodata.json.zst (default: on)")
    p.add_argument("--zst-level", type=_zst_level, default=3, metavar="N", help="zstd level for .zst copies (default: 3)")
    p.add_argument("--bz2", action=argparse.BooleanOptionalAction, default=False, help="write repodata.json.bz2 (default: off)")
    p.add_argument("--run-exports", action=argparse.BooleanOptionalAction, default=False, help="write run_exports.json (CEP-12)")
    p.add_argument("--base-url", metavar="URL", help="packages are served from URL/<subdir>/ (CEP-15, repodata_version 2)")
    p.add_argument(
        "--patch-generator",
        metavar="FILE",
        help="repodata patches: a .py defining _patch_repodata(repodata, subdir), or a .conda/.tar.bz2 "
        "holding <subdir>/patch_instructions.json (default: CHANNEL_DIR/gen_patch.py if present)",
    )
    p.add_argument(
        "--current-repodata",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="write current_repodata.json for conda's classic solver (needs the outputs extra)",
    )
    p.add_argument(
        "--channeldata",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="write channeldata.json, rss.xml and index.html pages (needs the outputs extra)",
    )
    p.add_argument("--rss", action=argparse.BooleanOptionalAction, default=True, help="write rss.xml with --channeldata (default: on)")
    p.add_argument("--html-dependencies", action=argparse.BooleanOptionalAction, default=False, help="show each package's depends in the subdir index.html")
    p.add_argument(
        "-m", "--current-index-versions-file", metavar="FILE", help="YAML {name: [version, ...]}: versions current_repodata.json keeps besides the newest"
    )
    p.add_argument(
        "--write-shards",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write CEP-16 sharded repodata: repodata_shards.msgpack.zst and shards/ (default: on)",
    )
    p.add_argument(
        "--shard-retention",
        type=_duration,
        default=DEFAULT_SHARD_RETENTION,
        metavar="AGE",
        help="delete shards no longer in the index after AGE: seconds or 30s, 15m, 12h, 7d (default 7d)",
    )
    p.add_argument("--threads", type=_positive_int, default=default_threads(), metavar="N", help="archive reader threads")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    p.add_argument("--log-format", choices=("json", "console"), help="default: console on a terminal, JSON lines otherwise")
    p.add_argument(
        "--clean-conda-index-leftovers",
        action="store_true",
        help="remove conda-index's files that conda-indexd supersedes (root-level shards, "
        "repodata_shards_from_packages.msgpack.zst, its index.html), once conda-indexd's shards are in shards/",
    )
    p.add_argument(
        "--from-pkgs-dir",
        action="append",
        metavar="DIR",
        type=Path,
        help="serve this conda package cache (repeatable; writable caches first, as conda reads them): "
        "CHANNEL_DIR is then the output channel, created if missing",
    )
    p.add_argument(
        "--origin-metadata",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --from-pkgs-dir: keep the origin channel's record (repodata_record.json: patched depends, "
        "license, ...) where it differs from index.json (default: on)",
    )
    # hidden (tests): how old an unfinished multipart upload of an output must be to be ours to abort
    p.add_argument("--stale-upload-age", type=_duration, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--indexed-timestamp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="CEP-47: give every record the time its file first entered the channel, in ms (default: on; "
        "--no-indexed-timestamp writes conda-index 0.13's exact bytes)",
    )
    p.add_argument(
        "--reject-future-timestamps",
        action="store_true",
        help="leave out packages whose build timestamp is later than when they were indexed "
        "(in the future when they arrived; CEP-47), as skipped archives (default: flag them only)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="read the [index-config] section of a pixi/rattler config file (write-zst, write-shards, base-url, "
        "repodata-revisions, package-revision-assignment, channel-relations, notices; per-channel tables by "
        "longest path or URL prefix); flags win over it",
    )
    compat.add_flags(p)


def _pkgs_dirs(args: argparse.Namespace, channel: Path) -> tuple[Path, ...]:
    """--from-pkgs-dir folders (existing, distinct, not inside the channel nor holding it).
    The output channel is created if missing."""
    dirs: list[Path] = []
    for given in args.from_pkgs_dir or ():
        folder = given.absolute()
        if not folder.is_dir():
            raise UsageError(f"--from-pkgs-dir: not a folder: {given}")
        real, out = folder.resolve(), channel.resolve()
        if real == out or out.is_relative_to(real) or real.is_relative_to(out):
            raise UsageError(f"--from-pkgs-dir {given}: the channel must be outside the pkgs dir (a pkgs dir is never written to)")
        if folder not in dirs:
            dirs.append(folder)
    if dirs and not channel.exists():
        try:
            channel.mkdir(parents=True)
        except OSError as exc:
            raise UsageError(f"cannot create channel folder {channel}: {exc.strerror or exc}") from None
    return tuple(dirs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Live indexer for conda channels.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    index = sub.add_parser("index", help="index a channel once and exit")
    add_index_options(index)
    watch = sub.add_parser("watch", help="keep a channel indexed: watch for changes and publish them")
    add_index_options(watch)
    watch.add_argument("--listen", type=_listen, default=None, metavar="HOST:PORT", help=LISTEN_HELP)
    watch.add_argument("--debounce", type=_seconds, default=1.0, metavar="S", help="quiet time before a subdir is indexed (default 1)")
    watch.add_argument("--max-delay", type=_seconds, default=10.0, metavar="S", help="longest wait after a subdir's first event (default 10)")
    watch.add_argument(
        "--settle", type=_seconds, default=1.0, metavar="S", help="a file still changing across this many seconds is an upload in progress (default 1)"
    )
    watch.add_argument(
        "--upload-timeout",
        type=_positive_seconds,
        default=600.0,
        metavar="S",
        help="a file opened for writing and never closed is read after this long unchanged (default 600)",
    )
    watch.add_argument("--rescan-interval", type=_positive_seconds, default=600.0, metavar="S", help="full rescan backstop (default 600)")
    watch.add_argument("--polling", action="store_true", help="poll the folder instead of inotify (NFS/CIFS shares)")
    watch.add_argument("--poll-interval", type=_positive_seconds, default=1.0, metavar="S", help="polling interval (default 1)")
    watch.add_argument(
        "--events-token-file", metavar="FILE", help="s3:// channels: the shared secret POST /s3-events requires (default: $CONDA_INDEXD_EVENTS_TOKEN)"
    )
    show = sub.add_parser("demo", help="make a small channel of generated packages and run the daemon on it")
    show.add_argument("dir", nargs="?", default=DEMO_DIR, metavar="DIR", help=f"the demo channel folder, created if missing (default: {DEMO_DIR})")
    show.add_argument("--add", action="store_true", help="add one more package to the demo channel DIR and exit")
    show.add_argument("--listen", type=_listen, default=None, metavar="HOST:PORT", help=LISTEN_HELP)
    show.add_argument("--verbose", action="store_true", help="debug logging")
    show.add_argument("--log-format", choices=("json", "console"), help="default: console on a terminal, JSON lines otherwise")
    wait.add_parser(sub)
    return parser


LISTEN_HELP = (
    f"HTTP for the status page (/ and /status.json), /metrics, /healthz and /readyz (default: $CONDA_INDEXD_LISTEN, else {DEFAULT_HOST}:{DEFAULT_PORT})"
)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text}")
    return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or a number with s, m, h or d: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite age >= 0: {text}")
    return value


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or DEFAULT_HOST, int(port)


def _check_channel_folder(channel: Path, given: str) -> None:
    if not channel.exists():
        raise UsageError(f"channel folder does not exist: {given}")
    if not channel.is_dir():
        raise UsageError(f"channel path is not a folder: {given}")
    if not os.access(channel, os.W_OK):
        raise UsageError(f"channel folder is not writable (cache.db lives there): {given}")


def config_from_args(args: argparse.Namespace) -> IndexConfig:
    refused = compat.refusal(args)
    if refused is not None:
        raise UsageError(refused)
    try:
        remote = remote_settings(args.channel, args.output, args.cache_dir)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if remote is not None:
        channel, channel_url, output_url = remote
    else:
        channel, channel_url, output_url = Path(args.channel).absolute(), None, None
    pkgs_dirs = _pkgs_dirs(args, channel)
    if pkgs_dirs and args.db == Db.POSTGRESQL:
        raise UsageError("--from-pkgs-dir serves local package caches from one daemon; it does not combine with --db postgresql")
    if pkgs_dirs and channel_url is not None:
        raise UsageError("--from-pkgs-dir serves local package caches into a local channel folder, not an s3:// one")
    if channel_url is None:  # (a bucket's state folder was made and checked by remote_settings)
        _check_channel_folder(channel, args.channel)
    output = Path(args.output).absolute() if args.output and output_url is None else None
    if output is not None and (problem := writable_folder(output)):
        raise UsageError(f"output folder: {problem}")
    patch_generator = None
    if args.patch_generator:
        patch_generator = Path(args.patch_generator).absolute()
        if not patch_generator.is_file():
            raise UsageError(f"patch generator not found: {args.patch_generator}")
        if not patch_generator.name.endswith((".py", ".conda", ".tar.bz2")):
            raise UsageError(f"patch generator must be a .py, .conda or .tar.bz2 file: {args.patch_generator}")
    pins_file = None
    if args.current_index_versions_file:
        pins_file = Path(args.current_index_versions_file).absolute()
        try:
            parse_pins(pins_file.read_text(), str(pins_file))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--current-index-versions-file: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - YAML errors
            raise UsageError(f"--current-index-versions-file: not valid YAML ({str(exc).splitlines()[0]})") from None
    settings = indexconfig.Settings()
    if args.config is not None:
        try:
            settings = indexconfig.load(args.config, channel_url or str(channel))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    for flag, wanted in (("--current-repodata", args.current_repodata), ("--channeldata", args.channeldata)):
        if wanted and not current_available():
            raise UsageError(f"{flag} needs py-rattler: pip install 'conda-indexd[outputs]'")
    return IndexConfig(
        channel=channel,
        patch_generator=patch_generator,
        current_repodata=args.current_repodata,
        channeldata=args.channeldata,
        rss=args.rss,
        html_dependencies=args.html_dependencies,
        current_index_versions=pins_file,
        output=output,
        subdirs=tuple(args.subdir or ()),
        channel_name=args.channel_name,
        zst=_first(args.zst, settings.zst, True),
        zst_level=args.zst_level,
        bz2=args.bz2,
        run_exports=args.run_exports,
        base_url=_first(args.base_url, settings.base_url, None),
        threads=args.threads,
        write_shards=_first(args.write_shards, settings.write_shards, True),
        shard_retention=args.shard_retention,
        channel_url=channel_url,
        output_url=output_url,
        db=Db(args.db),
        db_url=args.db_url if args.db == Db.POSTGRESQL else None,
        lease=_lease_from_env(),
        pkgs_dirs=pkgs_dirs,
        origin_overlay=bool(pkgs_dirs) and args.origin_metadata,
        stale_upload_age=args.stale_upload_age,
        indexed_timestamp=args.indexed_timestamp,
        update_only=args.update_only,
        repodata_next=_first(args.repodata_next, settings.all_v3, False),
        v3_always=settings.v3_always,
        v3_message=settings.v3_message,
        channel_relations=settings.channel_relations,
        notices=settings.notices,
        reject_future_timestamps=args.reject_future_timestamps,
    )


def _first(flag: T | None, from_file: T | None, default: T) -> T:
    """A flag given on the command line, else the --config file's value, else the default."""
    return flag if flag is not None else from_file if from_file is not None else default


def run_index(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    log = logs.get_logger(__name__)
    if config.repodata_next:
        log.warning(compat.REPODATA_NEXT_WARNING)
    started = time.monotonic()
    run_time = time.time()  # CEP-47: the indexed_timestamp of what this run finds new
    progress = ProgressLine()
    results: list[SubdirResult] = []
    failed: list[str] = []
    unplaced: list[str] = []
    probe = open_backends(config)
    check_reachable(probe)
    with open_lock(config, probe), index_lease(config) as fence:
        backends = open_backends(config, fence, getattr(fence, "application_name", "conda-indexd")) if fence else probe
        if fence is None:  # a bucket: what a killed run left half uploaded (a pair's lease holder: its daemon)
            clean_uploads(probe.outputs, config.stale_upload_age)
        if config.pkgs_dirs:
            from conda_indexd.daemon.intake.pkgs import sync_once

            unplaced = sync_once(config).failed
        if not config.subdirs and not config.remote:
            ignored.log_ignored(config.channel)
        channel = ChannelDriver(config, backends)  # the same driver as the daemon's worker

        def index_one(subdir: str) -> SubdirResult | None:
            progress.subdir = subdir
            try:
                result = channel.run_subdir(subdir, on_progress=progress, seen_at=run_time)
            except PatchError as exc:  # that subdir keeps its last good repodata
                progress.clear()
                log.error("patches failed; subdir left as it was", subdir=subdir, error=str(exc))
                failed.append(subdir)
                return None
            progress.clear()
            log.info("subdir indexed", **result.log_fields())
            return result

        results = channel.reconcile(index_one, channel.subdirs()) or []
        progress.close()
        channel_files = channel.publish_channel([r.subdir for r in results])
        if channel_files:
            log.info("channel files written", written=channel_files)
        if not config.remote and config.output_url is None:
            leftovers.report(config, args.clean_conda_index_leftovers, [r.subdir for r in results])
    reasons = Counter(f.reason for r in results for f in r.skipped)
    for r in results:
        for f in r.skipped:
            if f not in r.new_failures:
                log.info("still skipped", subdir=r.subdir, path=f.path, reason=f.reason, detail=f.message)
    log.info(
        "channel indexed",
        channel=config.location,
        subdirs=len(results),
        packages=sum(r.packages for r in results),
        extracted=sum(r.extracted for r in results),
        skipped=sum(len(r.skipped) for r in results),
        skipped_by_reason=dict(sorted(reasons.items())),
        failed_subdirs=failed,
        seconds=round(time.monotonic() - started, 3),
    )
    if failed:
        print(f"{PROG}: patches failed for {', '.join(failed)} (their previous repodata is kept)", file=sys.stderr)
        return 1
    if unplaced:
        print(f"{PROG}: {len(unplaced)} package(s) could not be placed into the channel ({unplaced[0]}, ...; see the log)", file=sys.stderr)
        return 1
    return 0


def _lease_from_env() -> float | None:
    """$CONDA_INDEXD_LEASE: the pair's lease in seconds, at least 1 (tests shorten it)."""
    value = os.environ.get("CONDA_INDEXD_LEASE")
    if value is None:
        return None
    try:
        return max(1.0, float(value))
    except ValueError:
        return None


def _with_systemd(config: WatchConfig) -> WatchConfig:
    """systemd's sd_notify variables, for the daemon's Notifier (daemon/sdnotify.py)."""
    return dataclasses.replace(
        config,
        notify_socket=os.environ.get("NOTIFY_SOCKET"),
        watchdog_usec=os.environ.get("WATCHDOG_USEC"),
        watchdog_pid=os.environ.get("WATCHDOG_PID"),
    )


def _listen_from_env() -> tuple[str, int]:
    """$CONDA_INDEXD_LISTEN (the container image sets 0.0.0.0:8650), else loopback."""
    value = os.environ.get("CONDA_INDEXD_LISTEN")
    if not value:
        return DEFAULT_HOST, DEFAULT_PORT
    try:
        return _listen(value)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"CONDA_INDEXD_LISTEN: {exc}") from None


def run_watch(args: argparse.Namespace) -> int:
    index = config_from_args(args)
    if index.repodata_next:
        logs.get_logger(__name__).warning(compat.REPODATA_NEXT_WARNING)
    if args.max_delay < args.debounce:
        raise UsageError("--max-delay must not be shorter than --debounce")
    host, port = args.listen or _listen_from_env()
    config = WatchConfig(
        events_token=_events_token(args, index),
        index=index,
        host=host,
        port=port,
        debounce=args.debounce,
        max_delay=args.max_delay,
        settle=args.settle,
        upload_timeout=args.upload_timeout,
        rescan_interval=args.rescan_interval,
        polling=args.polling,
        poll_interval=args.poll_interval,
    )
    config = _with_systemd(config)
    if index.remote and not config.polling and not config.events_token:
        logs.get_logger(__name__).warning(
            "no bucket notifications (no events token) and no --polling: changes are only seen by the rescan",
            rescan_interval=config.rescan_interval,
        )
    if index.remote or index.output_url:
        return _run_daemon(config)
    return _run_daemon(config, lambda: leftovers.report(index, args.clean_conda_index_leftovers))


def _events_token(args: argparse.Namespace, index: IndexConfig) -> str | None:
    if args.events_token_file and not index.remote:
        raise UsageError("--events-token-file is only for s3:// channels")
    if args.events_token_file:
        try:
            token = Path(args.events_token_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"--events-token-file: {exc.strerror or exc}: {args.events_token_file}") from None
        if not token:
            raise UsageError(f"--events-token-file is empty: {args.events_token_file}")
        return token
    return os.environ.get("CONDA_INDEXD_EVENTS_TOKEN", "").strip() or None


def _run_daemon(config: WatchConfig, *on_ready: Callable[[], object]) -> int:
    """The daemon, with `on_ready` steps run once its start-up reconcile has published."""
    try:
        daemon = Daemon(config)
    except OSError as exc:
        raise UsageError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    if not config.index.subdirs and not config.index.remote:
        ignored.log_ignored(config.index.channel)
    after_ready(daemon.worker.reconciled, daemon.stopping, *on_ready)  # a standby runs them once it leads
    return daemon.run()


def run_demo(args: argparse.Namespace) -> int:
    from conda_indexd.demo import channel as demo  # the package builder: only loaded for this command

    channel = Path(args.dir).absolute()
    try:
        if args.add:
            path = demo.add(channel)
            print(f"added {path.relative_to(channel.parent)}: watch for it on the status page and in noarch/repodata.json")
            return 0
        demo.prepare(channel)
    except demo.DemoError as exc:
        raise UsageError(str(exc)) from None
    host, port = args.listen or _listen_from_env()
    config = _with_systemd(WatchConfig(index=IndexConfig(channel=channel), host=host, port=port))

    def show() -> None:
        print(demo.banner(channel, host, port), flush=True)

    return _run_daemon(config, show)


# The exit status of each failure of ours: the first class listed that it is an instance of. Every one
# ends the command with one line on stderr (`one_line`), never a traceback.
EXIT_CODES: dict[type[IndexdError], int] = {
    UsageError: 2,  # bad arguments or flags (and the demo's folder checks)
    CurrentRepodataUnavailable: 2,  # an output flag without the extra it needs
    TargetError: 2,  # `wait`: a target that names nothing to wait on
    ChannelBusy: 3,  # another live writer holds the channel (its flock or its lease)
    Fenced: 3,  # the lease was taken over mid-run: another writer publishes now
    StoreError: 2,  # the channel cannot be used: unreachable, no such bucket, access denied
    CacheError: 1,  # the cache cannot be used: too new, unwritable, unreachable
    IndexdError: 1,  # anything else of ours
}


def exit_code(exc: IndexdError) -> int:
    """The status of the first class in EXIT_CODES that `exc` is an instance of (a bucket's
    WriterFenced is a StoreError and Fenced at once: another writer took over, 3)."""
    return next((code for cls, code in EXIT_CODES.items() if isinstance(exc, cls)), 1)


def one_line(exc: IndexdError) -> str:
    if isinstance(exc, UsageError):
        return f"{exc} (see {PROG} --help)"
    if isinstance(exc, CacheError):
        return f"{getattr(exc, 'label', 'cache.db')}: {exc}"
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logs.configure(args.log_format, args.verbose)
        if args.command == "index":
            return run_index(args)
        if args.command == "watch":
            return run_watch(args)
        if args.command == "demo":
            return run_demo(args)
        if args.command == "wait":
            return wait.run(args)
        raise UsageError(f"unknown command {args.command}")  # pragma: no cover
    except IndexdError as exc:
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return exit_code(exc)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"{PROG}: error:{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
