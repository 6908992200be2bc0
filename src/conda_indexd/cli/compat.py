"""conda-index 0.13 flags that conda-indexd has no option of its own for.

Every `python -m conda_index` 0.13 flag is accepted by `conda-indexd index` and `watch`:
either with the same meaning (the flags below that name what conda-indexd always does)
or refused with exit 2 and one line saying what to use instead or why not. The flags
conda-indexd implements itself (--output, --subdir, --bz2, ...) are in cli/main.py.
"""

from __future__ import annotations

import argparse
import os

from conda_indexd.config import DEFAULT_DB_URL, Db

# (flag, value that is refused) -> the one line
REFUSED: dict[tuple[str, object], str] = {
    ("compact", False): "--no-compact is not supported: conda-indexd writes compact JSON only "
    "(conda-index's default, byte for byte); pretty-print a copy with `python -m json.tool repodata.json`",
    ("update_cache", False): "--no-update-cache is not supported: conda-indexd always lists the subdir "
    "(repodata from cache.db alone, for packages not on disk, is not offered)",
    ("write_monolithic", False): "--no-write-monolithic is not supported: conda-indexd always writes repodata.json "
    "next to the shards, for clients without shard support",
}


def add_flags(p: argparse.ArgumentParser) -> None:
    """conda-index's flags for what conda-indexd always does (defaults as conda-index's)."""
    p.add_argument("--compact", action=argparse.BooleanOptionalAction, default=True, help="compact JSON (always; --no-compact is refused)")
    p.add_argument(
        "--update-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="list the subdir to refresh the cache (always; --no-update-cache is refused)",
    )
    p.add_argument(
        "--update-only",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="add and update packages, but keep the records of packages no longer on disk (conda-index's meaning; for machines that hold only the new files)",
    )
    p.add_argument("--upstream-stage", default="fs", metavar="STAGE", help="cache stage to index from: only 'fs', the files on disk")
    p.add_argument(
        "--write-monolithic", action=argparse.BooleanOptionalAction, default=True, help="write repodata.json (always; --no-write-monolithic is refused)"
    )
    p.add_argument(
        "--repodata-next",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CEP-48: put every package into the v3 map (conda-index's meaning); clients that do not read v3 then see "
        "an empty channel. Without it only packages that need v3 go there",
    )
    p.add_argument(
        "--db",
        default=Db.SQLITE3.value,
        metavar="{sqlite3,postgresql}",
        help="cache backend: sqlite3 (<subdir>/.cache/cache.db, the default) or postgresql "
        "(conda-index's tables in --db-url's database; needs the postgresql extra)",
    )
    p.add_argument(
        "--db-url",
        default=os.environ.get("CONDA_INDEX_DBURL", DEFAULT_DB_URL),
        metavar="URL",
        help=f"database URL for --db postgresql (default: $CONDA_INDEX_DBURL, else {DEFAULT_DB_URL}); conda-index's SQLAlchemy URLs work too",
    )


REPODATA_NEXT_WARNING = "--repodata-next: every package goes into the v3 map only (CEP-48); clients that do not read v3 see an empty channel"


def refusal(args: argparse.Namespace) -> str | None:
    """The one line refusing a conda-index flag conda-indexd does not do, or None."""
    for (dest, refused_value), line in REFUSED.items():
        if getattr(args, dest) is refused_value:
            return line
    if args.upstream_stage != "fs":
        return (f"--upstream-stage {args.upstream_stage}: only 'fs' (the files on disk) is supported; "
                "'clone' reads conda-forge's test database, which conda-indexd does not")  # fmt: skip
    if args.db not in tuple(Db):
        return f"--db {args.db}: choose sqlite3 (the default) or postgresql"
    if args.db == Db.POSTGRESQL and not args.db_url.startswith(("postgresql:", "postgres:", "postgresql+", "postgres+")):
        return f"--db-url {args.db_url!r}: expected a postgresql:// URL"
    return None
