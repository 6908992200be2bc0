"""A/B of the no-op `index s3://` re-run of two (or more) source trees on one throwaway
Ceph RGW and one uploaded channel:

    python bench/s3noop.py --size 10000 --trees /tmp/base /work/wt --rounds 3

The channel (bench/run.py's layout for the size) is uploaded once and indexed cold by
the first tree; each tree then gets its own copy of that state folder and one warming
run (a tree may keep other state), and the rounds alternate between the trees: each
round times every tree's no-op re-run straight against RGW, then counts its requests
once through tests/faultproxy.py (the proxy's own latency is kept out of the timings).
Needs radosgw, ceph-mon, ceph-osd and boto3.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from faultproxy import FaultProxy  # noqa: E402
from rgwserver import RgwCluster  # noqa: E402
from run import LAYOUTS, build_channel  # noqa: E402
from s3 import client, upload  # noqa: E402


def run(tree: Path, state: Path, env: dict[str, str], profile: Path | None = None) -> float:
    python = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else [sys.executable]
    argv = [*python, "-m", "conda_indexd", "index", "s3://bench/ours", "--cache-dir", str(state), "--log-format", "json"]
    started = time.monotonic()
    proc = subprocess.run(argv, env={**env, "PYTHONPATH": str(tree / "src")}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: exit {proc.returncode}: {proc.stderr[-2000:]}")
    return time.monotonic() - started


def kind(method: str, target: str) -> str:
    path, _, query = target.partition("?")
    if "list-type=2" in query:
        return "LIST"
    if query.startswith("uploads") or "&uploads" in query:
        return "LIST-UPLOADS"
    if path.count("/") == 1:
        return f"{method} bucket"
    return f"{method} {path.rsplit('/', 1)[-1] if '.conda-indexd-lease' not in path else 'lease'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--trees", type=Path, nargs="+", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="also run each tree once under cProfile, into this folder")
    args = parser.parse_args()
    layout = LAYOUTS.get(args.size) or {"linux-64": args.size // 2, "noarch": args.size - args.size // 2}
    with tempfile.TemporaryDirectory(prefix="s3noop-") as tmp:
        work = Path(tmp)
        t = time.monotonic()
        build_channel(work / "channel", layout)
        print(f"built {args.size} archives in {time.monotonic() - t:.0f} s: {layout}", flush=True)
        cluster = RgwCluster(work / "rgw").start()
        try:
            env = {**os.environ, **cluster.env()}
            s3 = client(cluster)
            s3.create_bucket(Bucket="bench")
            t = time.monotonic()
            upload(s3, "bench", "ours", work / "channel")
            print(f"uploaded in {time.monotonic() - t:.0f} s", flush=True)
            cold = work / "state-cold"
            print(f"cold index ({args.trees[0]}): {run(args.trees[0], cold, env):.1f} s", flush=True)
            states = {}
            for i, tree in enumerate(args.trees):
                states[tree] = work / f"state-{i}"
                shutil.copytree(cold, states[tree])
                print(f"warming run {tree}: {run(tree, states[tree], env):.2f} s", flush=True)
            times: dict[Path, list[float]] = {tree: [] for tree in args.trees}
            counts: dict[Path, Counter[str]] = {}
            for r in range(args.rounds):
                for tree in args.trees:
                    times[tree].append(run(tree, states[tree], env))
                    print(f"round {r + 1} {tree}: {times[tree][-1]:.2f} s  (load {os.getloadavg()[0]:.1f})", flush=True)
            for tree in args.trees:
                with FaultProxy(cluster.endpoint) as proxy:
                    run(tree, states[tree], {**env, "AWS_ENDPOINT_URL": proxy.endpoint})
                    counts[tree] = Counter(kind(f.method, f.target) for f in proxy.journal)
            for i, tree in enumerate(args.trees):
                if args.profile:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    run(tree, states[tree], env, args.profile / f"{i}.prof")
            for tree in args.trees:
                print(f"{tree}: no-op median {statistics.median(times[tree]):.2f} s, runs {[round(x, 2) for x in times[tree]]}; "
                      f"requests {sum(counts[tree].values())}: {dict(sorted(counts[tree].items()))}")  # fmt: skip
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
