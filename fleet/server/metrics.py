"""Prometheus metrics of the server.

With ``--workers N`` every worker is its own process, so metrics use
prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by the
supervisor) and /metrics aggregates all workers.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fleet_est_requests",
            "EST requests by operation, outcome and reason code",
            ["operation", "outcome", "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fleet_est_request_seconds",
            "EST request latency",
            ["operation"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "fleet_http_in_flight",
            "HTTP requests being served",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.rejected_overload = Counter(
            "fleet_http_overload_rejections",
            "Requests answered 503 because the server was saturated",
            registry=self.registry,
        )

        self.ca_days_left = Gauge(
            "fleet_ca_days_to_expiry",
            "Whole days until a fleet CA expires (warnings at 180/90/30)",
            ["role", "state", "issuer"],
            registry=self.registry,
            multiprocess_mode="min",
        )
        self.ca_expiry_warning = Gauge(
            "fleet_ca_expiry_warning_days",
            "The expiry-warning threshold (180, 90 or 30 days) a CA is under; 0 = none",
            ["role", "state", "issuer"],
            registry=self.registry,
            multiprocess_mode="min",
        )
        self.issuer_certificates = Gauge(
            "fleet_issuer_certificates",
            "Certificates per issuing CA by status (good = unexpired, unrevoked)",
            ["issuer", "state", "status"],
            registry=self.registry,
            multiprocess_mode="max",
        )

        # Label children, looked up once: labels() takes a lock and builds a
        # key on every call, and this runs on every request.
        self._request_children: dict[tuple[str, str, str], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}

    def observe_request(self, operation: str, outcome: str, reason: str, seconds: float) -> None:
        key = (operation, outcome, reason)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(*key)
        counter.inc()
        latency = self._latency_children.get(operation)
        if latency is None:
            latency = self._latency_children[operation] = self.latency.labels(operation)
        latency.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
