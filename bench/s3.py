"""S3 benchmark on a real Ceph RGW: conda-indexd's event-to-publish next to rattler-index's
`index_s3` re-runs on the same bucket contents.

    python bench/s3.py                  # 10k archives over 4 subdirs
    python bench/s3.py --sizes 10000 100000

For each size it starts a throwaway RGW (tests/rgwserver.py, beast with tcp_nodelay),
builds a synthetic channel of real archives (bench/synth.py), uploads it once, then
measures, conda-indexd first and rattler-index on the same prefix once conda-indexd is done
(conda-indexd's outputs and the bucket notification are removed before rattler runs):
- conda-indexd: cold `index s3://`, a no-op re-run, and the daemon's PUT -> published
  time through a real RGW bucket notification (median of 10 single-package PUTs);
- rattler-index (py-rattler `rattler.index.index_s3`, zst + shards): cold (without the
  archives whose records rattler rejects: it stops the whole run on the first one), and a
  re-run after one package was added (what a batch indexer costs per upload); on Ceph RGW 16
  that re-run does not finish with its precondition checks on (every conditional PUT
  gets 412: RGW wants If-Match unquoted), so it is also run without them.
Needs radosgw, ceph-mon, ceph-osd, boto3 and py-rattler.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from archives import write_archive  # noqa: E402
from rgwserver import RgwCluster, missing_tools  # noqa: E402
from run import LAYOUTS, build_channel  # noqa: E402
from synth import archive_records  # noqa: E402

TOKEN = "bench-token"


def client(cluster: RgwCluster, service: str = "s3") -> Any:
    import boto3
    from botocore.config import Config

    env = cluster.env()
    return boto3.client(service, endpoint_url=cluster.endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"],
                        config=Config(s3={"addressing_style": "path"}, max_pool_connections=32))  # fmt: skip


def upload(s3: Any, bucket: str, prefix: str, folder: Path) -> int:
    """One PutObject per file (the archives are small: upload_file's transfer manager costs
    more than the PUT)."""
    files = [p for p in folder.rglob("*") if p.is_file()]

    def put(p: Path) -> None:
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(folder).as_posix()}", Body=p.read_bytes())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, files))
    return len(files)


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed: {proc.stderr[-2000:]}")
    return time.monotonic() - started


def records_of(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    try:
        doc = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return {}
    return {**doc.get("packages", {}), **doc.get("packages.conda", {})}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def invalid_for_rattler(layout: dict[str, int]) -> list[str]:
    """Keys of archives whose index.json py-rattler's own parsers reject (a `noarch` that is
    neither python nor generic, a match spec such as `ray[default,data] >=2.9`): real
    records that conda-index and conda-indexd publish and rattler-index stops the whole
    `index_s3` run on."""
    import rattler

    def rejected(rec: dict) -> bool:
        try:
            rattler.IndexJson.from_str(json.dumps(rec))
            for spec in [*rec.get("depends", ()), *rec.get("constrains", ())]:
                rattler.MatchSpec(spec)
        except Exception:  # noqa: BLE001 - any rejection counts
            return True
        return False

    bad = []
    for seed, (subdir, count) in enumerate(sorted(layout.items())):
        bad += [f"{subdir}/{fn}" for fn, rec in archive_records(count, subdir, seed=seed) if rejected(rec)]
    return bad


def bench_size(n: int, work: Path, tools: list[str]) -> dict[str, float]:
    layout = LAYOUTS.get(n) or {"linux-64": n // 2, "noarch": n - n // 2}
    big = max(layout, key=lambda k: layout[k])
    channel = work / "channel"
    t = time.monotonic()
    build_channel(channel, layout)
    print(f"built {n} archives in {time.monotonic() - t:.0f} s", flush=True)
    cluster = RgwCluster(work / "rgw").start()
    out: dict[str, float] = {}
    try:
        env = {**os.environ, **cluster.env()}
        s3 = client(cluster)
        s3.create_bucket(Bucket="bench")
        t = time.monotonic()
        upload(s3, "bench", "ours", channel)
        print(f"uploaded {n} in {time.monotonic() - t:.0f} s", flush=True)
        cli = [sys.executable, "-m", "conda_indexd", "index", "s3://bench/ours", "--cache-dir", str(work / "state"), "--log-format", "json"]
        steps = [
            ("conda-indexd cold index s3://", lambda: {"": timed(cli, env)}),
            ("conda-indexd no-op re-run", lambda: {"": timed(cli, env)}),
            ("conda-indexd daemon", lambda: event_to_publish(cluster, s3, env, work, big)),
        ] if "conda-indexd" in tools else []  # fmt: skip
        if "rattler-index" in tools:
            steps.append(("rattler-index", lambda: rattler_runs(cluster, s3, work, big, invalid_for_rattler(layout))))
        for what, step in steps:
            for name, seconds in step().items():
                out[f"{what} {name}".strip()] = seconds
                print(f"  {what} {name}: {seconds:.2f} s", flush=True)
    finally:
        cluster.stop()
    return out


def event_to_publish(cluster: RgwCluster, s3: Any, env: dict[str, str], work: Path, subdir: str) -> dict[str, float]:
    port = free_port()
    sns = client(cluster, "sns")
    topic = sns.create_topic(Name="bench", Attributes={"push-endpoint": f"http://127.0.0.1:{port}/s3-events?token={TOKEN}", "persistent": "false"})
    s3.put_bucket_notification_configuration(Bucket="bench", NotificationConfiguration={"TopicConfigurations": [
        {"Id": "bench", "TopicArn": topic["TopicArn"], "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})  # fmt: skip
    daemon = subprocess.Popen([sys.executable, "-m", "conda_indexd", "watch", "s3://bench/ours", "--cache-dir", str(work / "state"),
                               "--listen", f"127.0.0.1:{port}", "--debounce", "0.2", "--log-format", "json"],
                              env={**env, "CONDA_INDEXD_EVENTS_TOKEN": TOKEN}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        extra = work / "extra"
        times = []
        for i, (fn, rec) in enumerate(archive_records(10, subdir, seed=99, skip=0)):
            folder = extra / str(i)
            folder.mkdir(parents=True)
            write_archive(folder, fn, rec)
            if fn in records_of(s3, "bench", f"ours/{subdir}/repodata.json"):
                continue
            started = time.monotonic()
            s3.upload_file(str(folder / fn), "bench", f"ours/{subdir}/{fn}")
            while fn not in records_of(s3, "bench", f"ours/{subdir}/repodata.json"):
                time.sleep(0.02)
            times.append(time.monotonic() - started)
        return {"PUT -> published (median of 10, notification)": statistics.median(times),
                "PUT -> published (slowest of 10)": max(times)}  # fmt: skip
    finally:
        daemon.terminate()
        daemon.wait(30)
        drop_notifications(cluster, "bench")


def clear_outputs(s3: Any, bucket: str, prefix: str) -> None:
    """Delete everything under the prefix but the archives (conda-indexd's outputs, shards
    and `.cache/`)."""
    doomed = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        doomed += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith((".conda", ".tar.bz2"))]
    for i in range(0, len(doomed), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in doomed[i : i + 1000]], "Quiet": True})


def drop_notifications(cluster: RgwCluster, bucket: str) -> None:
    """RGW's `DELETE /BUCKET?notification` (an empty PutBucketNotificationConfiguration is
    MalformedXML on RGW 16), signed with botocore's SigV4."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    env = cluster.env()
    request = AWSRequest(method="DELETE", url=f"{cluster.endpoint}/{bucket}?notification")
    S3SigV4Auth(Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]), "s3", env["AWS_DEFAULT_REGION"]).add_auth(request)
    with urllib.request.urlopen(urllib.request.Request(request.url, method="DELETE", headers=dict(request.headers)), timeout=30) as resp:
        if resp.status not in (200, 204):
            raise SystemExit(f"could not remove the bucket notification: HTTP {resp.status}")


def rattler_runs(cluster: RgwCluster, s3: Any, work: Path, subdir: str, invalid: list[str]) -> dict[str, float]:
    try:
        from rattler.index import S3Credentials, index_s3
    except ImportError:
        return {"(py-rattler not installed)": float("nan")}
    env = cluster.env()
    creds = S3Credentials(endpoint_url=cluster.endpoint, region=env["AWS_DEFAULT_REGION"], access_key_id=env["AWS_ACCESS_KEY_ID"],
                          secret_access_key=env["AWS_SECRET_ACCESS_KEY"], addressing_style="path")  # fmt: skip

    def run(checks: bool = True, limit: float = 600) -> float:
        """Seconds, or inf when it did not finish within `limit` (on Ceph RGW 16 a re-run
        with precondition checks gets 412 on every conditional PUT and retries on)."""

        async def bounded() -> None:
            await asyncio.wait_for(index_s3("s3://bench/ours", credentials=creds, write_zst=True, write_shards=True,
                                            precondition_checks=checks), limit)  # fmt: skip

        started = time.monotonic()
        try:
            asyncio.run(bounded())
        except TimeoutError:
            return float("inf")
        return time.monotonic() - started

    clear_outputs(s3, "bench", "ours")  # a cold run: its conditional PUTs would get 412 on ours
    out: dict[str, float] = {}
    for key in invalid:  # it stops the whole run on the first one: time it without them
        s3.delete_object(Bucket="bench", Key=f"ours/{key}")
    print(f"  rattler-index: {len(invalid)} archives it rejects deleted first", flush=True)
    out["cold index_s3"] = run()
    print(f"  rattler-index cold: {out['cold index_s3']:.2f} s", flush=True)
    fn, rec = next(iter(archive_records(1, subdir, seed=98)))
    folder = work / "rattler-extra"
    folder.mkdir()
    write_archive(folder, fn, rec)
    s3.upload_file(str(folder / fn), "bench", f"ours/{subdir}/{fn}")
    out["re-run after one PUT"] = run(limit=60)
    if out["re-run after one PUT"] == float("inf"):
        out["re-run after one PUT, precondition_checks=False"] = run(checks=False)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument("--tools", nargs="+", choices=["conda-indexd", "rattler-index"], default=["conda-indexd", "rattler-index"])
    args = parser.parse_args()
    missing = missing_tools()
    if missing:
        print(f"needs Ceph RGW: missing {', '.join(missing)}")
        return 2
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="conda-indexd-s3bench-") as tmp:
            results = bench_size(n, Path(tmp), args.tools)
        print(f"\n{n} archives")
        for what, seconds in results.items():
            print(f"  {what:<62} {seconds:8.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
