"""Writes conda-indexd.json, the Grafana dashboard for conda-indexd's Prometheus metrics.

    python deploy/grafana/dashboard.py           # (re)write conda-indexd.json beside this file
    python deploy/grafana/dashboard.py --check   # exit 1 when conda-indexd.json is not what this writes

Edit this file, not the JSON: tests/test_grafana.py checks that the two agree and runs
every panel's query against a real Prometheus scraping real daemons. The data source is
the dashboard variable DS_PROMETHEUS (a data source picker), so the JSON imports as it is
(Dashboards -> Import, or file provisioning) and every panel follows the picker.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("conda-indexd.json")
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
SEL = 'job=~"$job", instance=~"$instance"'  # every query is limited by these two variables
SUB = SEL + ', subdir=~"$subdir"'  # and by subdir where the metric has one


def target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


class Layout:
    """Panels on Grafana's 24-column grid: rows, then panels left to right."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.height = 0

    def _next_id(self) -> int:
        return len(self.panels) + 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "id": self._next_id(), "title": title, "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})  # fmt: skip
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.height
            self.x, self.height = 0, 0

    def panel(self, kind: str, title: str, description: str, targets: list[tuple[str, str]], *, width: int = 8,
              height: int = 8, unit: str = "short", **extra: Any) -> None:  # fmt: skip
        if self.x + width > 24:
            self._newline()
        refs = "ABCDEFGH"
        panel: dict[str, Any] = {
            "type": kind,
            "id": self._next_id(),
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"h": height, "w": width, "x": self.x, "y": self.y},
            "targets": [target(expr, legend, refs[i]) for i, (expr, legend) in enumerate(targets)],
            "fieldConfig": {"defaults": {"unit": unit, **extra.pop("defaults", {})}, "overrides": []},
            "options": extra.pop("options", {}),
        }
        if kind == "timeseries":
            panel["fieldConfig"]["defaults"].setdefault("custom", {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                                                   "showPoints": "never", "spanNulls": True})  # fmt: skip
            panel["options"].setdefault("legend", {"displayMode": "list", "placement": "bottom", "showLegend": True})
            panel["options"].setdefault("tooltip", {"mode": "multi", "sort": "desc"})
        panel.update(extra)
        self.panels.append(panel)
        self.x += width
        self.height = max(self.height, height)


def quantiles(metric: str, by: str, selector: str, legend: str) -> list[tuple[str, str]]:
    return [
        (f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))", legend.format(q=name))
        for q, name in (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"))
    ]


def panels() -> list[dict[str, Any]]:
    d = Layout()

    d.row("Publish latency")
    d.panel("timeseries", "Event to publish (p50, p90, p99)",
            "From a subdir's first pending file event to its repodata replaced: what an uploader waits "
            "(conda_indexd_event_to_publish_seconds). Debounce, settle and the run itself add up here.",
            quantiles("conda_indexd_event_to_publish_seconds", "le", SEL, "{q}"), width=12, unit="s")  # fmt: skip
    d.panel("timeseries", "Run and publish time by subdir (p90)",
            "How long indexing and publishing one subdir takes (conda_indexd_publish_duration_seconds), "
            "90th percentile per subdir.",
            quantiles("conda_indexd_publish_duration_seconds", "subdir, le", SUB, "{{subdir}}")[1:2], width=6, unit="s")  # fmt: skip
    d.panel("stat", "Since the last publish",
            "Seconds since each subdir's files were last replaced (a quiet channel grows this; "
            "a stuck one with pending work too: see Queue depth).",
            [(f"time() - max by (subdir) (conda_indexd_last_publish_timestamp_seconds{{{SUB}}})", "{{subdir}}")],
            width=6, unit="s", options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"})  # fmt: skip

    d.row("Throughput")
    d.panel("timeseries", "Publishes per minute",
            "Subdir publishes (runs that replaced a subdir's files) per minute, per subdir.",
            [(f"sum by (subdir) (rate(conda_indexd_publish_duration_seconds_count{{{SUB}}}[$__rate_interval])) * 60",
              "{{subdir}}")], unit="short")  # fmt: skip
    d.panel("timeseries", "Packages read per minute",
            "Archives read and stored in the cache per minute (conda_indexd_packages_indexed_total), per subdir.",
            [(f"sum by (subdir) (rate(conda_indexd_packages_indexed_total{{{SUB}}}[$__rate_interval])) * 60",
              "{{subdir}}")], unit="short")  # fmt: skip
    d.panel("timeseries", "Packages published",
            "Records in each subdir's repodata.json (conda_indexd_packages).",
            [(f"sum by (subdir) (conda_indexd_packages{{{SUB}}})", "{{subdir}}")], unit="short")  # fmt: skip
    d.panel("timeseries", "File events per minute",
            "Changes seen by the folder watcher or the bucket's events and poller, by kind.",
            [(f"sum by (kind) (rate(conda_indexd_events_total{{{SEL}}}[$__rate_interval])) * 60", "{{kind}}")],
            width=24, height=6, unit="short")  # fmt: skip

    d.row("Refusals")
    d.panel("timeseries", "Archives refused per minute, by reason",
            "Archives the indexer could not read and left out of repodata (conda_indexd_package_errors_total), "
            "by subdir and reason (not-a-zip, bad-tar, bad-index-json, ...). The log's 'skipped archive' lines "
            "name the files.",
            [(f"sum by (subdir, reason) (rate(conda_indexd_package_errors_total{{{SUB}}}[$__rate_interval])) * 60",
              "{{subdir}}: {{reason}}")], width=12, unit="short")  # fmt: skip
    d.panel("bargauge", "Archives refused since start, by reason",
            "Counted since each daemon started; the alert CondaIndexdPackageErrors fires on new ones.",
            [(f"sum by (subdir, reason) (conda_indexd_package_errors_total{{{SUB}}})", "{{subdir}}: {{reason}}")],
            width=6, unit="short", options={"reduceOptions": {"calcs": ["lastNotNull"]}, "orientation": "horizontal"})  # fmt: skip
    d.panel("stat", "Archives left out now",
            "Archives currently missing from repodata because they could not be read (conda_indexd_packages_skipped); "
            "they are read again when the file changes.",
            [(f"sum by (subdir) (conda_indexd_packages_skipped{{{SUB}}})", "{{subdir}}")],
            width=6, unit="short", options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"},
            defaults={"thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None},
                                                                   {"color": "orange", "value": 1}]}})  # fmt: skip

    d.row("Queue and uploads")
    d.panel("timeseries", "Queue depth",
            "Subdirs waiting to be indexed (conda_indexd_queue_pending). Work that stays queued while nothing "
            "is published fires CondaIndexdStalled.",
            [(f"max by (instance) (conda_indexd_queue_pending{{{SEL}}})", "{{instance}}")])  # fmt: skip
    d.panel("timeseries", "Uploads in progress",
            "Package files held back as still being written (not closed or renamed, changed within --settle), per subdir.",
            [(f"sum by (subdir) (conda_indexd_uploads_in_progress{{{SUB}}})", "{{subdir}}")])  # fmt: skip
    d.panel("stat", "Ready",
            "1 once the start-up reconcile has published every subdir (/readyz).",
            [(f"min by (instance) (conda_indexd_ready{{{SEL}}})", "{{instance}}")],
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"},
            defaults={"mappings": [{"type": "value", "options": {"0": {"text": "starting", "color": "orange"},
                                                                 "1": {"text": "ready", "color": "green"}}}]})  # fmt: skip

    d.row("Object store (s3:// channels)")
    d.panel("timeseries", "S3 requests per second",
            "Requests to the object store by operation (conda_indexd_s3_requests_total).",
            [(f"sum by (operation) (rate(conda_indexd_s3_requests_total{{{SEL}}}[$__rate_interval]))", "{{operation}}")],
            unit="reqps")  # fmt: skip
    d.panel("timeseries", "S3 answers other than 2xx",
            "Requests not answered 2xx, by operation and status. 404 (a HEAD before a first write) and 412 "
            "(a shard already there, If-None-Match) are part of normal work; 5xx and 'error' (no answer came "
            "back) are failures: the run is retried.",
            [(f'sum by (operation, status) (rate(conda_indexd_s3_requests_total{{{SEL}, status!~"2.."}}[$__rate_interval]))',
              "{{operation}} {{status}}")], unit="reqps")  # fmt: skip
    d.panel("timeseries", "S3 bytes per second",
            "Object bytes read (packages) and written (repodata, shards) (conda_indexd_s3_bytes_total).",
            [(f"sum by (direction) (rate(conda_indexd_s3_bytes_total{{{SEL}}}[$__rate_interval]))", "{{direction}}")],
            unit="Bps")  # fmt: skip

    d.row("Leadership (--db postgresql pairs)")
    d.panel("state-timeline", "Pair role",
            "Which daemon of a pair leads (1) and which stands by (0) (conda_indexd_leader). A single daemon shows 0.",
            [(f"max by (instance) (conda_indexd_leader{{{SEL}}})", "{{instance}}")], width=12,
            defaults={"mappings": [{"type": "value", "options": {"0": {"text": "standby", "color": "blue"},
                                                                 "1": {"text": "leader", "color": "green"}}}]})  # fmt: skip
    d.panel("timeseries", "Takeovers and step-downs",
            "Leadership changes per daemon (conda_indexd_leadership_changes_total): to=leader is a takeover "
            "(or the first daemon of a pair taking the lease), to=standby a step-down.",
            [(f"sum by (instance, to) (increase(conda_indexd_leadership_changes_total{{{SEL}}}[$__rate_interval]))",
              "{{instance}} to {{to}}")], width=6)  # fmt: skip
    d.panel("stat", "Leadership changes since start",
            "Takeovers counted since each daemon started.",
            [(f'sum by (instance) (conda_indexd_leadership_changes_total{{{SEL}, to="leader"}})', "{{instance}}")],
            width=6, options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"})  # fmt: skip
    return d.panels


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "definition": query, "query": {"query": query, "refId": f"{name}-values"},
        "includeAll": True, "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"},
        "refresh": 2, "sort": 1, "regex": "", "hide": 0, "options": [],
    }  # fmt: skip


def dashboard() -> dict[str, Any]:
    return {
        "uid": "conda-indexd",
        "title": "conda-indexd",
        "description": "Publish latency, throughput, refusals, queue, uploads, S3 and pair leadership of conda-indexd daemons.",
        "tags": ["conda", "conda-indexd"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "",
        "schemaVersion": 39,
        "version": 1,
        "links": [],
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "name": "DS_PROMETHEUS",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "options": [],
                },  # fmt: skip
                variable("job", "Job", "label_values(conda_indexd_ready, job)"),
                variable("instance", "Instance", 'label_values(conda_indexd_ready{job=~"$job"}, instance)'),
                variable("subdir", "Subdir", 'label_values(conda_indexd_packages{job=~"$job", instance=~"$instance"}, subdir)'),
            ]
        },
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv == ["--check"]:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT.name} is not what {Path(__file__).name} writes: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    if argv:
        print(f"usage: python {Path(__file__).name} [--check]", file=sys.stderr)
        return 2
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
