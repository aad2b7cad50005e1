"""Prometheus metrics: the ingress counts requests; each engine replica counts its loop's UNet calls.

``GET /metrics`` answers the ingress's own metrics and, gathered from every engine replica at scrape time,
theirs with a ``replica`` label, so one scrape shows the whole application whatever the number of replicas.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

# The *_created series only repeat when each process started.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Latency buckets (seconds) from a tiny model's milliseconds to a long generation's minutes on CPU.
SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class IngressMetrics:
    """What the ingress sees of every request; one registry per ingress replica."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "audioldm_requests",
            "Generation requests answered, by HTTP status (499: the client went away first)",
            ["status"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "audioldm_requests_in_flight", "Generation requests admitted and not yet answered", registry=self.registry
        )
        self.queue_seconds = Histogram(
            "audioldm_queue_seconds",
            "Seconds from a request's admission by a replica to its first UNet call",
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.compute_seconds = Histogram(
            "audioldm_compute_seconds",
            "Seconds from a request's first UNet call to its audio",
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "audioldm_request_seconds",
            "Seconds from a request's arrival to its answer, for answered generations (200)",
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.replicas_ready = Gauge(
            "audioldm_replicas_ready", "Engine replicas loaded, warmed and answering", registry=self.registry
        )


class ReplicaMetrics:
    """What one engine replica's loop does."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.unet_calls = Counter("audioldm_unet_calls", "UNet calls made", registry=self.registry)
        self.unet_rows = Counter("audioldm_unet_rows", "UNet rows computed (guidance doubles)", registry=self.registry)
        self.batch_size = Histogram(
            "audioldm_batch_size", "Requests per UNet call", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.unet_seconds = Counter("audioldm_unet_seconds", "Seconds in UNet calls", registry=self.registry)
        self.decode_calls = Counter(
            "audioldm_decode_calls", "VAE decoder and vocoder calls made", ["stage"], registry=self.registry
        )
        self.decode_seconds = Counter(
            "audioldm_decode_seconds", "Seconds in VAE decoder and vocoder calls", ["stage"], registry=self.registry
        )
        self.held = Gauge(
            "audioldm_replica_requests", "Requests the replica holds (in its loop or waiting)", registry=self.registry
        )

    def exposition(self) -> str:
        return generate_latest(self.registry).decode("utf-8")


class ReplicaCollector(Collector):
    """The replicas' expositions (gathered by the ingress just before a scrape), each sample labelled with the
    replica it came from."""

    def __init__(self) -> None:
        self.expositions: Sequence[tuple[str, str]] = ()

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for replica, text in self.expositions:
            for family in text_string_to_metric_families(text):
                target = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    target.add_sample(sample.name, {**sample.labels, "replica": replica}, sample.value)
        return list(merged.values())
