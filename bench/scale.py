"""The publish path at conda-forge scale (issue 13): one big subdir of synthetic cache rows
(real corpus records, bench/synth.py) behind placeholder package files, so 1,000,000
records need no million archives. Run:

    python bench/scale.py --sizes 100000 1000000 [--variants plain empty gen5] [--peers]

Each package file is a sparse placeholder whose mtime and size equal its cache row: every
indexer that trusts its cache (conda-indexd, conda-index 0.13) sees an unchanged package
and reads no archive. Added packages are real archives. Per variant (`plain`; `empty`: a
patch_instructions.json of empty `{"name": {}}` entries as conda-index --write-shards
leaves; `gen5`: a gen_patch.py touching 5% of the records), each measure runs in its own
process (peak RSS is that process's):
- start: the worker's first run over an already published channel (a daemon restart);
- +1: one added package with the previous run's memo (the daemon's event->publish minus
  the debounce), median of 10; steady RSS after them;
- no-op rescans: the whole listing again with the memo, right after the +1 events (fs
  rows are compared) and once more (the listing equals the last full one: quiet.py);
- patch change touching 1,000 records (a new patch_instructions.json; `plain` only);
- one-shot `conda-indexd index` re-run after +1, as a subprocess;
- with --peers: conda-index 0.13's re-run after +1 on a copy (rattler-index keeps no
  cache: it would read every placeholder as an archive, so it cannot run here).
Output: json+zst+shards, no bz2. The machine is shared: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from archives import write_archive  # noqa: E402
from conda_indexd.caches.sqlite.cache import SqliteCache  # noqa: E402
from run import measured, tools  # noqa: E402
from synth import add_row, archive_records, records  # noqa: E402

SUBDIR = "linux-64"
GEN5 = """
def _patch_repodata(repodata, subdir):
    fixes = {}
    for section in ("packages", "packages.conda"):
        for i, fn in enumerate(sorted(repodata[section])):
            if i % 20 == 0:
                fixes.setdefault(section, {})[fn] = {"license": "patched-" + str(i % 7)}
    return {"patch_instructions_version": 1, **fixes}
"""


def build(root: Path, n: int) -> None:
    """n cache rows (fs, indexed, index_json) and their placeholder files."""
    folder = root / SUBDIR
    db = folder / ".cache" / "cache.db"
    db.parent.mkdir(parents=True)
    (root / "noarch").mkdir()
    rows = [(fn, rec) for fn, rec in records(n, SUBDIR) if "/" not in fn and "\0" not in fn and not fn.startswith(".")]
    with SqliteCache(db) as cache, cache.transaction():
        for fn, rec in rows:
            add_row(cache, fn, rec, mtime=1.0)
    for fn, rec in rows:
        fd = os.open(folder / fn, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, rec["size"])
            os.utime(fd, (1.0, 1.0))
        finally:
            os.close(fd)


def copy_channel(base: Path, dest: Path) -> None:
    subprocess.run(["cp", "-al", str(base), str(dest)], check=True)
    for db in dest.rglob(".cache/*"):  # the cache and outputs are written in place: own copies
        if db.is_file():
            tmp = db.with_name(db.name + ".copy")
            shutil.copy2(db, tmp)
            os.replace(tmp, db)


_added = [0]


def add_package(channel: Path, tag: str) -> str:
    _added[0] += 1
    fn, rec = next(iter(archive_records(1, SUBDIR, seed=7, skip=_added[0])))
    rec = {**rec, "build": f"{rec['build']}_{tag}{_added[0]}"}
    ext = ".conda" if fn.endswith(".conda") else ".tar.bz2"
    name = f"{rec['name']}-{rec['version']}-{rec['build']}{ext}"
    write_archive(channel / SUBDIR, name, rec)
    return name


def rss_now() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_worker(channel: Path, patch_change: bool) -> dict[str, float]:
    """The daemon's worker path in-process: start, +1 x 10, no-op rescan, patch change."""
    from conda_indexd.backends import index_subdir, open_backends
    from conda_indexd.config import IndexConfig

    config = IndexConfig(channel, threads=2)
    backends = open_backends(config)
    out: dict[str, float] = {}
    t = time.perf_counter()
    result = index_subdir(config, SUBDIR, backends=backends)
    out["start"] = time.perf_counter() - t
    out["start_rss"] = peak_rss()
    memo = result.memo
    times = []
    for _ in range(10):
        name = add_package(channel, "ev")
        t = time.perf_counter()
        result = index_subdir(config, SUBDIR, touched=[name], memo=memo, backends=backends)
        times.append(time.perf_counter() - t)
        assert result.added == [name], result.added
        memo = result.memo
    out["plus_one"] = statistics.median(times)
    out["steady_rss"] = rss_now()
    t = time.perf_counter()
    result = index_subdir(config, SUBDIR, memo=memo, backends=backends)
    out["noop"] = time.perf_counter() - t
    assert not result.written, result.written
    memo = result.memo
    t = time.perf_counter()  # a second one: nothing happened since the last full listing
    result = index_subdir(config, SUBDIR, memo=memo, backends=backends)
    out["noop_quiet"] = time.perf_counter() - t
    assert not result.written, result.written
    if patch_change:
        fns = sorted(memo.digests())[:: max(1, len(memo.digests()) // 1000)][:1000]
        instructions = {"patch_instructions_version": 1, "packages": {}, "packages.conda": {}}
        for fn in fns:
            instructions["packages.conda" if fn.endswith(".conda") else "packages"][fn] = {"license": "changed"}
        (channel / SUBDIR / "patch_instructions.json").write_text(json.dumps(instructions))
        t = time.perf_counter()
        result = index_subdir(config, SUBDIR, touched=[], memo=memo, backends=backends)
        out["patch_change"] = time.perf_counter() - t
        out["patch_change_shards"] = float(result.shards.encoded)
    out["peak_rss"] = peak_rss()
    return out


def in_process(phase: str, channel: Path, *extra: str) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__)), "_phase", phase, str(channel), *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def variant(base: Path, work: Path, name: str, peers: bool) -> dict[str, float | str]:
    channel = work / f"ours-{name}"
    copy_channel(base, channel)
    if name == "empty":
        names = sorted({fn.rsplit("-", 2)[0] for fn in os.listdir(channel / SUBDIR) if fn.endswith((".conda", ".tar.bz2"))})
        (channel / SUBDIR / "patch_instructions.json").write_text(json.dumps({n: {} for n in names}, sort_keys=True, separators=(",", ":")))
    elif name == "gen5":
        (channel / "gen_patch.py").write_text(GEN5)
    ours = tools()["conda-indexd"]
    assert ours is not None
    cmd = [a.replace("{ch}", str(channel)) for a in ours[0]]
    row: dict[str, float | str] = {}
    row["first_index"], row["first_index_rss"], _ = measured(cmd)  # outputs from the cache rows
    row.update(in_process("worker", channel, "patch" if name == "plain" else ""))
    add_package(channel, "oneshot")
    row["oneshot"], row["oneshot_rss"], _ = measured(cmd)
    if peers:
        spec = tools()["conda-index"]
        if spec is None:
            row["conda_index"] = "not installed"
        else:
            theirs = work / f"conda-index-{name}"
            copy_channel(base, theirs)
            if name == "gen5":
                (theirs / "gen_patch.py").write_text(GEN5)
            elif name == "empty":
                shutil.copy2(channel / SUBDIR / "patch_instructions.json", theirs / SUBDIR)
            tcmd = [a.replace("{ch}", str(theirs)) for a in spec[0]]
            measured(tcmd, spec[1])  # its first run writes its outputs (and shards)
            add_package(theirs, "oneshot")
            row["conda_index"], row["conda_index_rss"], _ = measured(tcmd, spec[1])
            shutil.rmtree(theirs)
    shutil.rmtree(channel)
    return row


ROWS = [
    ("first `index` from the cache rows", "first_index", "s"),
    ("its peak RSS", "first_index_rss", "MiB"),
    ("worker start on a published channel (restart)", "start", "s"),
    ("worker +1 package, median of 10", "plus_one", "s"),
    ("worker steady RSS after +1s", "steady_rss", "MiB"),
    ("worker peak RSS (start included)", "peak_rss", "MiB"),
    ("no-op rescan right after the +1 events", "noop", "s"),
    ("no-op rescan after a no-op rescan", "noop_quiet", "s"),
    ("patch change touching 1,000 records", "patch_change", "s"),
    ("  shards re-encoded by it", "patch_change_shards", ""),
    ("one-shot `index` re-run after +1", "oneshot", "s"),
    ("its peak RSS", "oneshot_rss", "MiB"),
    ("conda-index 0.13 re-run after +1", "conda_index", "s"),
    ("its peak RSS", "conda_index_rss", "MiB"),
]


def table(n: int, results: dict[str, dict[str, float | str]]) -> str:
    names = list(results)
    lines = [f"\n## {n:,} records in {SUBDIR}\n", "| measure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, key, unit in ROWS:
        cells = [results[v].get(key, "-") for v in names]
        if all(c == "-" for c in cells):
            continue
        lines.append(f"| {label} | " + " | ".join(f"{c:.3f} {unit}".strip() if isinstance(c, float) else str(c) for c in cells) + " |")
    for v in names:
        r = results[v]
        if isinstance(r.get("conda_index"), float):
            for key, label in (("plus_one", "worker +1"), ("oneshot", "one-shot re-run")):
                value = r.get(key)
                if isinstance(value, float):
                    lines.append(f"\n{v}: conda-index re-run / {label} = {r['conda_index'] / value:.1f}x")  # type: ignore[operator]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_phase":
        phase, channel = sys.argv[2], Path(sys.argv[3])
        assert phase == "worker"
        print(json.dumps(phase_worker(channel, patch_change="patch" in sys.argv[4:])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--variants", nargs="+", choices=["plain", "empty", "gen5"], default=["plain", "empty", "gen5"])
    parser.add_argument("--peers", action="store_true", help="also conda-index 0.13's re-run after +1")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="conda-indexd-scale-"))
    print(f"# conda-indexd scale benchmark, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}", file=sys.stderr)
    try:
        for n in args.sizes:
            base = work / f"base-{n}"
            t = time.perf_counter()
            build(base, n)
            print(f"# {n:,} rows and placeholders in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            results = {}
            for v in args.variants:
                results[v] = variant(base, work, v, args.peers)
                print(f"# {n} {v}: {results[v]}", file=sys.stderr, flush=True)
            shutil.rmtree(base)
            print(table(n, results), flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
