"""The embedded broker: store -> revocation cache -> gate -> hardened amqtt, run as one."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from prometheus_client import CollectorRegistry

from broker_plugins.amqtt._hardening import HardenedBroker, require_amqtt_version
from broker_plugins.amqtt.gate import BrokerMetrics, ConnectionGate
from broker_plugins.amqtt.settings import AmqttSettings
from broker_plugins.metrics_http import MetricsServer
from broker_plugins.revocation_cache import CacheSettings, RevocationCache
from fleet.store.factory import open_store
from fleet.store.protocol import Store
from fleet.store.redis_durability import FEED_READER

log = logging.getLogger("fleet.broker")

# How long start() waits for the first revocation snapshot before serving
# anyway (every connect is refused as stale until it arrives).
INITIAL_SNAPSHOT_SECONDS = 5.0


class EmbeddedBroker:
    def __init__(
        self,
        settings: AmqttSettings,
        *,
        store: Store | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        require_amqtt_version()
        self.settings = settings
        self._store = store
        self._owns_store = store is None
        self.metrics = BrokerMetrics(registry)
        self.cache: RevocationCache | None = None
        self.gate: ConnectionGate | None = None
        self.broker: HardenedBroker | None = None
        self.port = settings.port
        self._metrics_server: MetricsServer | None = None

    async def start(self) -> None:
        s = self.settings
        ssl_context = s.ssl_context()
        policy = s.trust_policy()
        if self._store is None:
            self._store = await open_store(s.store_url, redis=FEED_READER)
        self.cache = RevocationCache(
            self._store,
            CacheSettings(
                max_staleness=s.max_staleness,
                fail_open=s.fail_open,
                snapshot_file=s.revocation_snapshot_file,
            ),
            registry=self.metrics.registry,
        )
        await self.cache.start(initial_timeout=INITIAL_SNAPSHOT_SECONDS)
        self.gate = ConnectionGate(
            policy=policy, acl=s.acl(), revocations=self.cache, metrics=self.metrics
        )
        self.cache.on_revoked(self.gate.on_revoked)
        config: dict[str, Any] = {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{_bind_host(s.host)}:{s.port}", "ssl": True}
            },
            "plugins": {
                "broker_plugins.amqtt.plugins.FleetAuthPlugin": {"gate": self.gate},
                "broker_plugins.amqtt.plugins.FleetTopicPlugin": {"gate": self.gate},
            },
            "session_expiry_interval": s.session_expiry_seconds,
        }
        self.broker = HardenedBroker(config, gate=self.gate, ssl_context=ssl_context)
        self.cache.on_revoked(self.broker.forget_revoked)
        await self.broker.start()
        self.port = self.broker.find_port()
        if s.metrics_port is not None:
            self._metrics_server = MetricsServer(
                s.metrics_host or "127.0.0.1", s.metrics_port, self.metrics.registry
            )
        log.info(
            "broker started",
            extra={
                "fields": {
                    "event": "broker_started",
                    "listen": f"{s.host}:{self.port}",
                    "revocation_seq": self.cache.seq,
                    "revocation_snapshot_file": str(s.revocation_snapshot_file),
                    "fail_open": s.fail_open,
                    "max_staleness": s.max_staleness,
                }
            },
        )

    async def stop(self) -> None:
        if self.broker is not None:
            await self.broker.shutdown()
            self.broker = None
        if self.cache is not None:
            await self.cache.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None
        if self._owns_store and self._store is not None:
            await self._store.close()
            self._store = None

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
            log.info("broker stopped", extra={"fields": {"event": "stopped"}})


def _bind_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
