"""The embedded broker: store -> revocation cache -> gate -> hardened amqtt, run as one."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import ssl
from typing import Any

from prometheus_client import CollectorRegistry

from broker_plugins.amqtt._hardening import HardenedBroker, require_amqtt_version
from broker_plugins.amqtt.gate import BrokerMetrics, ConnectionGate
from broker_plugins.amqtt.settings import AmqttSettings
from broker_plugins.ca_refresh import refresh_bundle
from broker_plugins.metrics_http import MetricsServer
from broker_plugins.revocation_cache import CacheSettings, RevocationCache
from fleet.kernel.clock import Clock, SystemClock
from fleet.kernel.errors import FleetError
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
        clock: Clock | None = None,
    ) -> None:
        require_amqtt_version()
        self.settings = settings
        # Admission judges validity with this clock (OpenSSL's handshake does not check
        # time: settings.ssl_context sets X509_V_FLAG_NO_CHECK_TIME), so the simulator can
        # move the broker through the years with the server and the devices.
        self.clock: Clock = clock or SystemClock()
        self._store = store
        self._owns_store = store is None
        self.metrics = BrokerMetrics(registry)
        self.cache: RevocationCache | None = None
        self.gate: ConnectionGate | None = None
        self.broker: HardenedBroker | None = None
        self.port = settings.port
        self._metrics_server: MetricsServer | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._ca_task: asyncio.Task[None] | None = None
        self._ca_pem = b""

    async def start(self) -> None:
        s = self.settings
        ssl_context = self._ssl_context = s.ssl_context()
        self._ca_pem = s.fleet_ca.read_bytes()
        policy = s.trust_policy()
        if self._store is None:
            self._store = await open_store(s.store_url, redis=FEED_READER)
        self.cache = RevocationCache(
            self._store,
            CacheSettings(
                max_staleness=s.max_staleness,
                fail_open=s.fail_open,
                snapshot_file=s.revocation_snapshot_file,
                report_as=s.reported_name,
            ),
            registry=self.metrics.registry,
        )
        await self.cache.start(initial_timeout=INITIAL_SNAPSHOT_SECONDS)
        self.gate = ConnectionGate(
            policy=policy,
            acl=s.acl(),
            revocations=self.cache,
            metrics=self.metrics,
            now=self.clock.now,
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
        self._ca_task = asyncio.create_task(self._follow_fleet_ca(), name="fleet-ca")
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

    async def _follow_fleet_ca(self) -> None:
        """Trust what fleet_ca holds now: refreshed from /cacerts, or edited by hand."""
        s = self.settings
        while True:
            await asyncio.sleep(s.ca_refresh_seconds)
            try:
                if s.cacerts_url:
                    context = ssl.create_default_context(cafile=str(s.fleet_ca))
                    await asyncio.to_thread(
                        refresh_bundle, s.fleet_ca, s.cacerts_url, context, dt.datetime.now(dt.UTC)
                    )
                self.reload_fleet_ca()
            except (OSError, FleetError) as exc:
                log.warning("fleet CA bundle not refreshed, keeping it: %s", exc)

    def reload_fleet_ca(self, *, force: bool = False) -> bool:
        """Swap the trust policy when fleet_ca changed (or ``force``); True when it did.

        The rotation refresh (``_follow_fleet_ca``), a root rollover and SIGHUP all
        come here. The gate's kernel policy is replaced whole, so a CA dropped from
        the bundle (``fleet ca retire``/``retire-root``) stops admitting devices at
        once. OpenSSL can add CAs to a live context but not remove them, so a
        retired CA still passes the handshake and is refused by the policy with
        ``unknown_issuer``. A bundle that does not load keeps the trust in force
        (FleetError/OSError, logged by callers).
        """
        pem = self.settings.fleet_ca.read_bytes()
        if self.gate is None or self._ssl_context is None:
            raise RuntimeError("the broker is not running")
        if pem == self._ca_pem and not force:
            return False
        policy = self.settings.trust_policy()
        self._ssl_context.load_verify_locations(cadata=pem.decode())
        self.gate.policy = policy
        self._ca_pem = pem
        log.info(
            "fleet CA bundle reloaded",
            extra={"fields": {"event": "fleet_ca_reloaded", "anchors": len(policy.anchors),
                              "issuers": len(policy.issuers)}},
        )  # fmt: skip
        return True

    async def stop(self) -> None:
        if self._ca_task is not None:
            self._ca_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ca_task
            self._ca_task = None
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

    async def reload_trust(self) -> None:
        """Re-read the fleet CA bundle now, changed or not (SIGHUP, a root rollover)."""
        self.reload_fleet_ca(force=True)

    async def _reload_on_signal(self) -> None:
        try:
            await self.reload_trust()
        except FleetError as exc:
            log.error("SIGHUP: keeping the fleet CAs in force: %s", exc.message)
        except OSError as exc:  # ssl.SSLError included: a bundle OpenSSL cannot load
            log.error("SIGHUP: keeping the fleet CAs in force: %s", exc)

    async def serve_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        reloads: set[asyncio.Task[None]] = set()

        def reload() -> None:
            task = asyncio.create_task(self._reload_on_signal())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)  # e.g. after `fleet ca rotate-root`
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
            log.info("broker stopped", extra={"fields": {"event": "stopped"}})


def _bind_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
