"""Prometheus metrics of a broker's revocation cache
(broker_plugins.revocation_cache): how fresh it is, what it applied, how often
it resynchronised, and whether its snapshot file is behind."""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge


class CacheReadings(Protocol):
    """What the gauges read from the cache, at each scrape."""

    @property
    def seq(self) -> int: ...

    @property
    def snapshot_pending(self) -> bool: ...

    def staleness_seconds(self) -> float: ...

    def usable(self) -> bool: ...


class CacheMetrics:
    """Prometheus metrics of one cache, in the given registry."""

    def __init__(self, registry: CollectorRegistry, cache: CacheReadings) -> None:
        self.staleness = Gauge(
            "fleet_broker_revocation_staleness_seconds",
            "Seconds since the last successful contact with the revocation feed",
            registry=registry,
        )
        self.staleness.set_function(cache.staleness_seconds)
        self.usable = Gauge(
            "fleet_broker_revocation_usable",
            "1 if connects are decided on the revocation data, 0 if refused as stale",
            registry=registry,
        )
        self.usable.set_function(lambda: 1.0 if cache.usable() else 0.0)
        self.seq = Gauge(
            "fleet_broker_revocation_feed_seq",
            "Sequence of the last revocation event applied",
            registry=registry,
        )
        self.seq.set_function(lambda: float(cache.seq))
        self.events = Counter(
            "fleet_broker_revocation_events",
            "Revocation events applied from the feed",
            registry=registry,
        )
        self.resyncs = Counter(
            "fleet_broker_revocation_resyncs",
            "Resynchronisations with the store, by cause",
            ["cause"],
            registry=registry,
        )
        self.errors = Counter(
            "fleet_broker_revocation_feed_errors",
            "Failed attempts to reach the revocation feed",
            registry=registry,
        )
        self.snapshot_pending = Gauge(
            "fleet_broker_revocation_snapshot_pending",
            "1 while revocations are applied but not yet written to the snapshot file",
            registry=registry,
        )
        self.snapshot_pending.set_function(lambda: 1.0 if cache.snapshot_pending else 0.0)
        self.snapshot_errors = Counter(
            "fleet_broker_revocation_snapshot_write_errors",
            "Failed writes of the revocation snapshot file",
            registry=registry,
        )
