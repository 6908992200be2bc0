"""deploy/grafana/conda-indexd.json, the Grafana dashboard: its structure (what
deploy/grafana/dashboard.py writes, unique panel ids, a data source and targets on every
panel, only metrics the daemon exports), then every panel's every query run by Debian's
real Prometheus, scraping real daemons doing real work, until each returns data:

- a daemon on a channel folder: uploads renamed in, one written slowly (an upload in
  progress), one broken archive (a refusal);
- an active/standby pair on an s3:// bucket of the session's Ceph RGW with its cache in
  the session's PostgreSQL (the S3 and leadership panels), whose leader is stopped so
  the standby takes over.

Skips with a reason without prometheus, the Ceph daemons or PostgreSQL 15."""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemonproc import DaemonProcess, free_port, wait_for
from pkgfactory import conda_bytes, index_json, make_package, make_truncated_conda
from rgwserver import RgwCluster

REPO = Path(__file__).resolve().parents[1]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "conda-indexd.json"
METRICS_PY = REPO / "src" / "conda_indexd" / "daemon" / "metrics.py"
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# what Grafana puts in place of its variables, for a Prometheus scraping every second
GRAFANA_VARS = {"__rate_interval": "10s", "__interval": "5s", "__range": "5m", "job": ".*", "instance": ".*", "subdir": ".*"}
LEASE = "3"  # seconds: the pair's lease (CONDA_INDEXD_LEASE), so a takeover is quick

pytestmark = pytest.mark.timeout(600)


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but the rows (collapsed rows hold theirs inside)."""
    out = []
    for p in doc["panels"]:
        if p["type"] == "row":
            out += p.get("panels", [])
        else:
            out.append(p)
    return out


def substitute(expr: str) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in GRAFANA_VARS, f"unknown variable ${name} in {expr}"
        return GRAFANA_VARS[name]

    out = re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)
    assert "$" not in out, out
    return out


def exported_metrics() -> set[str]:
    """The daemon's metric names as Prometheus shows them (histograms: _bucket, _count, _sum)."""
    text = METRICS_PY.read_text()
    names: set[str] = set()
    for kind, name in re.findall(r"(Counter|Gauge|Histogram)\(\s*p \+ \"(\w+)\"", text):
        full = "conda_indexd_" + name
        names |= {full + s for s in ("_bucket", "_count", "_sum")} if kind == "Histogram" else {full}
    return names


# --- the JSON ---------------------------------------------------------------------------------


def test_dashboard_is_what_the_generator_writes() -> None:
    out = subprocess.run([sys.executable, GRAFANA / "dashboard.py", "--check"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr


def test_dashboard_structure() -> None:
    doc = load()
    ids = [p["id"] for p in doc["panels"]] + [p["id"] for r in doc["panels"] if r["type"] == "row" for p in r.get("panels", [])]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {sorted(ids)}"
    assert doc["uid"] and doc["title"] and isinstance(doc["schemaVersion"], int)
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == DS, v["name"]
    known = exported_metrics()
    used = set()
    for p in panels(doc):
        where = f"panel {p['id']} {p['title']!r}"
        assert p["datasource"] == DS, where
        assert p["targets"], where
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), where
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, where
        for t in p["targets"]:
            assert t["datasource"] == DS and t["expr"].strip(), where
            substitute(t["expr"])  # only known variables
            names = set(re.findall(r"\bconda_indexd_\w+", t["expr"]))
            assert names <= known, f"{where}: not exported by the daemon: {sorted(names - known)}"
            used |= names
    # what the dashboard is for (docs/deployment.md lists the rows)
    for metric in ("event_to_publish_seconds_bucket", "publish_duration_seconds_count", "packages_indexed_total",
                   "package_errors_total", "packages_skipped", "queue_pending", "uploads_in_progress",
                   "s3_requests_total", "leader", "leadership_changes_total"):  # fmt: skip
        assert "conda_indexd_" + metric in used, metric


# --- every query against a real Prometheus ----------------------------------------------------


class Prometheus:
    def __init__(self, binary: str, folder: Path, targets: list[int]) -> None:
        self.folder = folder
        self.port = free_port()
        folder.mkdir()
        job = {"job_name": "conda-indexd", "scrape_interval": "1s", "scrape_timeout": "1s",
               "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in targets], "labels": {"channel": "test"}}]}  # fmt: skip
        (folder / "prometheus.yml").write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": [job]}))
        self.log = open(folder / "prometheus.log", "wb")  # noqa: SIM115 - open while it runs
        self.proc = subprocess.Popen(
            [binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def get(self, path: str, **params: str) -> Any:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}: {(self.folder / 'prometheus.log').read_text()[-2000:]}")
        url = f"http://127.0.0.1:{self.port}{path}?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}: {(self.folder / 'prometheus.log').read_text()[-2000:]}")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=10) as resp:
            return resp.status == 200

    def query(self, expr: str) -> list[dict[str, Any]]:
        doc = self.get("/api/v1/query", query=expr)
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a number (a quantile over no events is NaN: not yet)."""
    return any(math.isfinite(float(r["value"][1])) for r in result)


def bucket_daemon(tmp_path: Path, bucket: str, db_url: str, n: int) -> DaemonProcess:
    """One daemon of the bucket's pair: `watch s3://BUCKET/chan`, polling, cache in PostgreSQL."""
    home = tmp_path / f"pair{n}"
    home.mkdir()
    d = DaemonProcess(home, debounce=0.2, log=home / "daemon.log", env={"CONDA_INDEXD_LEASE": LEASE})
    d.args[d.args.index(str(home))] = f"s3://{bucket}/chan"
    d.args += ["--cache-dir", str(home / "state"), "--polling", "--poll-interval", "1", "--db", "postgresql", "--db-url", db_url]
    return d


def role(d: DaemonProcess) -> str:
    return str(json.loads(d.get("/status.json")[1])["role"]["role"])


class Work:
    """Uploads while the queries are polled: a package a second into the folder (renamed
    into place) and into the bucket; once, a broken archive and a slow upload in the folder."""

    def __init__(self, channel: Path, staging: Path, s3: Any, bucket: str) -> None:
        self.channel, self.staging, self.s3, self.bucket = channel, staging, s3, bucket
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.count = 0
        self.thread = threading.Thread(target=self._run, name="uploads", daemon=True)

    def _run(self) -> None:
        try:
            noarch = self.channel / "noarch"
            make_truncated_conda(self.staging / "broken-1.0-0.conda", index_json("broken", "1.0", "0")).replace(noarch / "broken-1.0-0.conda")
            slow = conda_bytes("slow-1.0-0.conda", index_json("slow", "1.0", "0"), {"lib/data": b"x" * 200_000})
            with open(noarch / "slow-1.0-0.conda", "wb") as f:  # an upload in progress past --settle
                f.write(slow[: len(slow) // 2])
                f.flush()
                time.sleep(3)  # not cut short by stop: the file must be held back, then completed
                f.write(slow[len(slow) // 2 :])
            while not self.stop.is_set():
                self.count += 1
                n = self.count
                name = f"work{n % 5}-1.{n}-0.conda"  # made under its own name (a .conda's parts are named by it)
                make_package(self.staging / name, index_json(f"work{n % 5}", f"1.{n}", "0")).replace(noarch / name)
                body = conda_bytes(f"remote{n % 5}-1.{n}-0.conda", index_json(f"remote{n % 5}", f"1.{n}", "0"), {"lib/x": str(n).encode()})
                self.s3.put_object(Bucket=self.bucket, Key=f"chan/noarch/remote{n % 5}-1.{n}-0.conda", Body=body)
                self.stop.wait(1)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def __enter__(self) -> Work:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


@pytest.fixture
def prometheus_binary() -> str:
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").is_file() else None)
    if not path:
        pytest.skip("prometheus is not installed (apt-get install prometheus; .ci/run installs it)")
    return path


@pytest.fixture
def daemons(tmp_path: Path, rgw: RgwCluster, bucket: str, pg_server: Any) -> Iterator[tuple[DaemonProcess, list[DaemonProcess]]]:
    channel = tmp_path / "channel"
    make_package(channel / "noarch" / "base-1.0-0.conda", index_json("base", "1.0", "0"))
    folder = DaemonProcess(channel, settle=1.0)
    db_url = pg_server.createdb("grafana")
    pair = [bucket_daemon(tmp_path, bucket, db_url, n) for n in (1, 2)]
    try:
        folder.start(wait_ready=False)
        for d in pair:
            d.start(wait_ready=False)
        for d in (folder, *pair):
            wait_for(lambda d=d: d.get("/readyz")[0] == 200, 90, interval=0.2, what=f"daemon on :{d.port} ready")
        yield folder, pair
    finally:
        for d in (folder, *pair):
            d.stop()
    for d in (folder, *pair):
        assert "Traceback" not in d.log_text(), d.log_text()[-3000:]


def test_every_panel_query_returns_data_from_a_real_prometheus(
    tmp_path: Path, prometheus_binary: str, daemons: tuple[DaemonProcess, list[DaemonProcess]], s3: Any, bucket: str
) -> None:
    folder, pair = daemons
    doc = load()
    queries = [(f"panel {p['id']} {p['title']!r} {t['refId']}", substitute(t["expr"])) for p in panels(doc) for t in p["targets"]]
    # the variables' label_values(METRIC, LABEL): the values they offer
    for v in doc["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["definition"])
            assert m, v["definition"]
            queries.append((f"variable ${v['name']}", f"count by ({m.group(2)}) ({substitute(m.group(1))})"))

    prom = Prometheus(prometheus_binary, tmp_path / "prometheus", [folder.port, *(d.port for d in pair)])
    try:
        wait_for(prom.ready, 60, interval=0.3, what="prometheus ready")
        with Work(folder.channel, tmp_path / "staging", s3, bucket) as work:
            # a takeover: the pair's leader stops (SIGTERM), the standby takes the lease
            leader = wait_for(lambda: next((d for d in pair if role(d) == "leader"), None), 60, interval=0.2, what="a leader")
            standby = next(d for d in pair if d is not leader)
            wait_for(lambda: prom.query(f'conda_indexd_leader{{instance="127.0.0.1:{leader.port}"}} == 1'), 60, interval=0.5,
                     what="the first leader scraped")  # fmt: skip
            leader.signal(signal.SIGTERM)
            wait_for(lambda: role(standby) == "leader", 60, interval=0.2, what="the standby taking over")

            pending = dict(queries)
            last: dict[str, Any] = {}
            deadline = time.monotonic() + 180
            while pending and time.monotonic() < deadline:
                for name, expr in list(pending.items()):
                    last[name] = result = prom.query(expr)
                    if has_data(result):
                        del pending[name]
                if pending:
                    time.sleep(1)
            assert not work.errors, work.errors
            assert not pending, "no data from: " + "; ".join(f"{n}: {e} -> {last.get(n)}" for n, e in pending.items())
            wait_for(lambda: work.count >= 3 or work.errors, 120, interval=0.2, what="three upload rounds")
            assert not work.errors, work.errors
            # the work was what the panels show: a refusal, an upload held back, a takeover
            for expr, what in (
                ('conda_indexd_package_errors_total{subdir="noarch"} > 0', "the broken archive refused"),
                ('max_over_time(conda_indexd_uploads_in_progress{subdir="noarch"}[10m]) > 0', "the slow upload held back"),
                (f'conda_indexd_leadership_changes_total{{instance="127.0.0.1:{standby.port}", to="leader"}} > 0', "the takeover"),
                ('sum(conda_indexd_packages{subdir="noarch"}) > 3', "uploads published"),
            ):
                wait_for(lambda expr=expr: prom.query(expr), 60, interval=0.5, what=f"{what} in Prometheus ({expr}); "
                         f"{prom.query('conda_indexd_uploads_in_progress[10m]')}")  # fmt: skip
            assert not folder.metric("conda_indexd_packages_skipped", subdir="noarch") > 1, "uploads refused besides the broken one"
        statuses = sorted({(r["metric"]["operation"], r["metric"]["status"]) for r in prom.query('conda_indexd_s3_requests_total{status!~"2.."}')})
        print(f"\n{len(queries)} dashboard queries returned data; {work.count} upload rounds; S3 answers not 2xx: {statuses}", file=sys.stderr)
    finally:
        prom.stop()
