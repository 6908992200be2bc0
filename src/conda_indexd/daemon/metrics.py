"""Prometheus metrics, prefix `conda_indexd_`, labels only subdir, kind or reason."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120)


class Metrics:
    """One registry per daemon (tests can run several), with the process metrics."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: they double the scrape for nothing
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        p = "conda_indexd_"
        self.events = Counter(p + "events_total", "File events seen, by kind", ["kind"], registry=r)
        self.queue_pending = Gauge(p + "queue_pending", "Subdirs waiting to be indexed", registry=r)
        self.packages = Gauge(p + "packages", "Records published in repodata.json", ["subdir"], registry=r)
        self.packages_indexed = Counter(p + "packages_indexed_total", "Archives read and stored", ["subdir"], registry=r)
        self.package_errors = Counter(p + "package_errors_total", "Archives that could not be indexed", ["subdir", "reason"], registry=r)
        self.skipped = Gauge(p + "packages_skipped", "Archives currently left out of repodata", ["subdir"], registry=r)
        self.future_timestamps = Gauge(
            p + "future_timestamps", "Published packages whose build timestamp is later than their indexed_timestamp (CEP-47)", ["subdir"], registry=r
        )
        self.attested = Gauge(p + "attested_packages", "Published records advertising an attestation sidecar (attestations_sha256)", ["subdir"], registry=r)
        self.sidecars_refused = Gauge(
            p + "attestation_sidecars_refused",
            "Packages whose attestation sidecar is refused (published without it), by reason",
            ["subdir", "reason"],
            registry=r,
        )
        self.publish_duration = Histogram(
            p + "publish_duration_seconds", "Time to index and publish a subdir", ["subdir"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.event_to_publish = Histogram(
            p + "event_to_publish_seconds",
            "From a subdir's first pending event to its files replaced",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.last_publish = Gauge(p + "last_publish_timestamp_seconds", "When a subdir's files were last replaced", ["subdir"], registry=r)
        self.rescans = Counter(p + "rescans_total", "Full rescans, by reason", ["reason"], registry=r)
        self.repodata_bytes = Gauge(p + "repodata_bytes", "Size of repodata.json", ["subdir"], registry=r)
        self.subdir_errors = Counter(p + "subdir_errors_total", "Indexing runs of a subdir that failed", ["subdir", "reason"], registry=r)
        self.shards_written = Counter(p + "shards_written_total", "CEP-16 shard files written", ["subdir"], registry=r)
        self.shards_deleted = Counter(p + "shards_deleted_total", "Unreferenced shard files deleted after the retention", ["subdir"], registry=r)
        self.uploads_in_progress = Gauge(p + "uploads_in_progress", "Package files held back as still being written", ["subdir"], registry=r)
        self.ready = Gauge(p + "ready", "1 once the start-up reconcile has published every subdir", registry=r)
        self.leader = Gauge(p + "leader", "1 while this daemon is the leader of a pair (--db postgresql)", registry=r)
        self.leadership_changes = Counter(
            p + "leadership_changes_total", "Times this daemon took over (to=leader) or stepped down (to=standby)", ["to"], registry=r
        )
        for reason in ("startup", "periodic", "overflow", "signal", "replaced", "patches"):
            self.rescans.labels(reason)
        for kind in ("created", "modified", "closed", "moved", "deleted", "subdir"):
            self.events.labels(kind)

        # a channel in a bucket (stores/s3/store.S3Stats, s3watch's endpoint)
        self.s3_requests = Counter(p + "s3_requests_total", "Requests to the object store, by operation and HTTP status", ["operation", "status"], registry=r)
        self.s3_bytes = Counter(p + "s3_bytes_total", "Object bytes read or written", ["direction"], registry=r)
        self.s3_events = Counter(
            p + "s3_events_total",
            "Bucket notification records received, queued or ignored, and POSTs rejected (no token, not event JSON)",
            ["outcome"],
            registry=r,
        )

        self.s3_multipart_aborted = Counter(
            p + "s3_multipart_aborted_total",
            "Unfinished multipart uploads of our outputs aborted (left by a killed process or a failed run)",
            registry=r,
        )

    def request(self, operation: str, status: str) -> None:
        self.s3_requests.labels(operation, status).inc()

    def transferred(self, direction: str, count: int) -> None:
        self.s3_bytes.labels(direction).inc(count)

    def s3_event(self, outcome: str, count: int) -> None:
        self.s3_events.labels(outcome).inc(count)

    def totals(self, metric: Counter) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of a counter's series, for the status page (no scrape format)."""
        return [(dict(s.labels), s.value) for family in metric.collect() for s in family.samples if s.name.endswith("_total")]

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
