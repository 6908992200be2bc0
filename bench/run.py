"""Side-by-side benchmark: conda-indexd, conda-index 0.13 and rattler-index (py-rattler).

    python bench/run.py                 # 10k archives over 4 subdirs, then 100k
    python bench/run.py --sizes 10000   # one size

For each size it builds a synthetic channel of real archives (records from
../shared/corpus/repodata when present, otherwise generated; bench/synth.py), gives each
tool its own hard-linked copy, and measures with the same outputs (repodata.json, .zst,
CEP-16 shards):
- cold index (and the peak RSS of that process),
- re-index after one package is added to the biggest subdir,
- re-index with nothing changed,
- conda-indexd only: the daemon's event-to-publish time for one added package (median of
  20), and a burst of 10,000 files (time and publishes per subdir).
It prints one table with ratios (other tool / conda-indexd: above 1 means we are faster).
conda-index runs from /tmp/peers (see .ci/run) with ../shared/tools/conda-stub; a tool
that is missing is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from archives import write_archive  # noqa: E402
from synth import archive_records  # noqa: E402

SHARED = Path(os.environ.get("CONDA_INDEXD_SHARED", ROOT.parent / "shared"))
STUB = SHARED / "tools" / "conda-stub"
PEERS = Path(os.environ.get("CONDA_INDEX_PYTHON", "/tmp/peers/bin/python"))
LAYOUTS = {
    # 10k: 4 subdirs; 100k: like the channel, 95,218 of them in linux-64
    10_000: {"linux-64": 4000, "noarch": 3000, "osx-arm64": 1500, "win-64": 1500},
    100_000: {"linux-64": 95_218, "noarch": 3000, "osx-arm64": 1000, "win-64": 782},
}
BIG = "linux-64"


def build_channel(root: Path, layout: dict[str, int]) -> None:
    for seed, (subdir, n) in enumerate(sorted(layout.items())):
        folder = root / subdir
        folder.mkdir(parents=True)
        for fn, rec in archive_records(n, subdir, seed=seed):
            write_archive(folder, fn, rec)


def extra_packages(folder: Path, subdir: str, n: int, tag: str) -> list[Path]:
    """n packages not in the channel yet (their builds carry `tag`)."""
    made = []
    for k, (fn, rec) in enumerate(archive_records(n, subdir, seed=99)):
        rec = {**rec, "build": f"{rec['build']}_{tag}{k}"}
        ext = ".conda" if fn.endswith(".conda") else ".tar.bz2"
        made.append(write_archive(folder, f"{rec['name']}-{rec['version']}-{rec['build']}{ext}", rec))
    return made


def measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(seconds, peak RSS MiB, exit status) of one child process."""
    wrapper = (
        "import json, resource, subprocess, sys, time;"
        "t = time.perf_counter();"
        "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE);"
        "d = time.perf_counter() - t;"
        "sys.stderr.write(p.stderr.decode(errors='replace')[-2000:] if p.returncode else '');"
        "print(json.dumps([d, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, p.returncode]))"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env={**os.environ, **(env or {})})
    if out.returncode:
        raise RuntimeError(out.stderr)
    seconds, rss, rc = json.loads(out.stdout.strip().splitlines()[-1])
    if rc:
        print(f"  ! {cmd[:3]}... exited {rc}: {out.stderr.strip()[-500:]}", file=sys.stderr)
    return seconds, rss, rc


def tools() -> dict[str, tuple[list[str], dict[str, str]] | None]:
    ours = ([sys.executable, "-m", "conda_indexd", "index", "{ch}", "--threads", "2", "--log-format", "json"], {})
    peers_ok = PEERS.exists() and STUB.is_dir()
    conda_index = (
        ([str(PEERS), "-m", "conda_index", "--threads", "2", "--zst", "--write-shards", "--no-current-repodata",
          "--no-channeldata", "{ch}"], {"PYTHONPATH": str(STUB)})
        if peers_ok else None
    )  # fmt: skip
    rattler_py = str(PEERS) if PEERS.exists() else sys.executable
    rattler_code = (
        "import asyncio, sys; from rattler.index import index_fs;asyncio.run(index_fs(sys.argv[1], write_zst=True, write_shards=True, max_parallel=2))"
    )
    try:
        subprocess.run([rattler_py, "-c", "import rattler.index"], check=True, capture_output=True)
        rattler = ([rattler_py, "-c", rattler_code, "{ch}"], {})
    except subprocess.CalledProcessError:
        rattler = None
    return {"conda-indexd": ours, "conda-index": conda_index, "rattler-index": rattler}


def run_tool(spec: tuple[list[str], dict[str, str]], channel: Path) -> tuple[float, float, int]:
    cmd, env = spec
    return measured([a.replace("{ch}", str(channel)) for a in cmd], env)


# --- the daemon -------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(port: int, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def daemon_figures(channel: Path, scratch: Path) -> dict[str, float]:
    port = free_port()
    scratch.mkdir(parents=True, exist_ok=True)
    log = open(scratch / "daemon.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "conda_indexd", "watch", str(channel), "--listen", f"127.0.0.1:{port}",
         "--debounce", "0.05", "--settle", "0", "--threads", "2", "--log-format", "json"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        staging = scratch / "staging"
        staging.mkdir()
        folder = channel / BIG
        latencies = []
        for pkg in extra_packages(staging, BIG, 20, "event"):
            before = metric(port, "conda_indexd_publish_duration_seconds_count", subdir=BIG)
            t = time.perf_counter()
            os.replace(pkg, folder / pkg.name)
            while True:  # published = the metric moved and repodata.json names the package
                if metric(port, "conda_indexd_publish_duration_seconds_count", subdir=BIG) > before:
                    if pkg.name in (folder / "repodata.json").read_text():
                        break
                time.sleep(0.005)
            latencies.append(time.perf_counter() - t)
        # a burst of 10,000 files into the big subdir
        burst = scratch / "burst"
        burst.mkdir()
        names = [p.name for p in extra_packages(burst, BIG, 10_000, "burst")]
        before = metric(port, "conda_indexd_publish_duration_seconds_count", subdir=BIG)
        t = time.perf_counter()
        for name in names:
            os.replace(burst / name, folder / name)
        want = metric(port, "conda_indexd_packages", subdir=BIG) + len(names)
        while metric(port, "conda_indexd_packages", subdir=BIG) < want:
            time.sleep(0.05)
        burst_s = time.perf_counter() - t
        publishes = metric(port, "conda_indexd_publish_duration_seconds_count", subdir=BIG) - before
        rss = int(Path(f"/proc/{proc.pid}/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
        return {"event_to_publish_median": statistics.median(latencies), "event_to_publish_max": max(latencies),
                "burst_seconds": burst_s, "burst_publishes": publishes, "daemon_peak_rss": rss}  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()


# --- one size ---------------------------------------------------------------------------------


def bench(size: int, work: Path, only: list[str] | None = None) -> dict[str, dict[str, float | str]]:
    layout = LAYOUTS.get(size) or {"linux-64": size}
    base = work / f"channel-{size}"
    t = time.perf_counter()
    build_channel(base, layout)
    print(f"# {size:,} archives built in {time.perf_counter() - t:.0f} s: {layout}", file=sys.stderr)
    results: dict[str, dict[str, float | str]] = {}
    for name, spec in tools().items():
        if only and name not in only:
            results[name] = {"note": "not run"}
            continue
        if spec is None:
            results[name] = {"note": "not installed"}
            continue
        channel = work / f"{name}-{size}"
        subprocess.run(["cp", "-al", str(base), str(channel)], check=True)
        row: dict[str, float | str] = {}
        row["cold"], row["cold_rss"], rc = run_tool(spec, channel)
        if rc:
            row["note"] = f"cold run exited {rc}"
        extra_packages(channel / BIG, BIG, 1, "added")
        row["one_added"], _, _ = run_tool(spec, channel)
        row["noop"], _, _ = run_tool(spec, channel)
        results[name] = row
        print(f"# {name}: {row}", file=sys.stderr)
        if name == "conda-indexd":
            results[name].update(daemon_figures(channel, work / f"daemon-{size}"))
    shutil.rmtree(base)
    return results


def table(size: int, results: dict[str, dict[str, float | str]]) -> str:
    ours = results["conda-indexd"]
    rows = [
        ("cold index", "cold", "s"),
        ("cold index peak RSS", "cold_rss", "MiB"),
        ("re-index, one package added", "one_added", "s"),
        ("re-index, nothing changed", "noop", "s"),
    ]
    lines = [f"\n## {size:,} archives\n", "| measure | conda-indexd | conda-index 0.13 | rattler-index | ratio vs conda-index | ratio vs rattler-index |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for label, key, unit in rows:
        cells = []
        for tool in ("conda-indexd", "conda-index", "rattler-index"):
            value = results[tool].get(key)
            cells.append(f"{value:.2f} {unit}" if isinstance(value, float) else str(results[tool].get("note", "-")))
        ratios = []
        for tool in ("conda-index", "rattler-index"):
            a, b = results[tool].get(key), ours.get(key)
            ratios.append(f"{a / b:.1f}x" if isinstance(a, float) and isinstance(b, float) and b else "-")
        lines.append(f"| {label} | {' | '.join(cells)} | {' | '.join(ratios)} |")
    for label, key, unit in (
        ("daemon: event to publish, median of 20", "event_to_publish_median", "s"),
        ("daemon: event to publish, worst of 20", "event_to_publish_max", "s"),
        ("daemon: burst of 10,000 files, all published", "burst_seconds", "s"),
        ("daemon: publishes of the big subdir for the burst", "burst_publishes", ""),
        ("daemon: peak RSS", "daemon_peak_rss", "MiB"),
    ):
        value = ours.get(key)
        lines.append(f"| {label} | {value:.3f} {unit} | - | - | - | - |" if isinstance(value, float) else f"| {label} | - | - | - | - | - |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--tools", nargs="+", choices=["conda-indexd", "conda-index", "rattler-index"], help="run only these")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="conda-indexd-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# conda-indexd benchmark, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}", file=sys.stderr)
    try:
        for size in args.sizes:
            print(table(size, bench(size, work, args.tools)), flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
