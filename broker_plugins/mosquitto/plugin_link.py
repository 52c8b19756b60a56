"""The sidecar's MQTT link to its plugin (``$CONTROL/fleet/v1`` over the broker's own
TLS listener, with the sidecar certificate), and the plugin's counters it asks
for, as Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker_plugins.mosquitto.config import (
    CONTROL_TOPIC,
    SESSIONS_TOPIC,
    STATS_TOPIC,
    MosquittoSettings,
)
from broker_plugins.mosquitto.sidecar_client import sidecar_client, stop_clients

log = logging.getLogger("fleet.broker.mosquitto")

# How long a stop waits for paho's network thread (it is a daemon thread).
STOP_SECONDS = 0.2


class PluginLink:
    """The sidecar's MQTT connection to the broker (paho's network thread)."""

    def __init__(
        self,
        settings: MosquittoSettings,
        loop: asyncio.AbstractEventLoop,
        on_session: Callable[[bytes], None] | None = None,
    ) -> None:
        self._loop = loop
        # Called in paho's thread with each session announcement of the plugin (peers).
        self._on_session = on_session
        self.connected = asyncio.Event()
        self.on_connected: asyncio.Queue[None] = asyncio.Queue()
        client = sidecar_client(settings, settings.sidecar_cn, max_reconnect_delay=2)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        # The plugin's last `stats` answer and when it came (monotonic).
        self.stats: dict[str, object] = {}
        self.stats_at: float | None = None
        self._host = settings.connect_host
        self._port = settings.listen_port

    def start(self) -> None:
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect, and let the network thread go within STOP_SECONDS."""
        stop_clients([self._client], STOP_SECONDS)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("the broker refused the sidecar: %s", reason_code)
            return
        client.subscribe(STATS_TOPIC, qos=0)
        if self._on_session is not None:
            client.subscribe(SESSIONS_TOPIC, qos=0)
        self._loop.call_soon_threadsafe(self._connected)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == SESSIONS_TOPIC and self._on_session is not None:
            self._on_session(bytes(msg.payload))  # straight on, from this thread: latency
            return
        if msg.topic != STATS_TOPIC:
            return
        try:
            stats = json.loads(msg.payload)
        except ValueError:
            log.warning("unreadable stats from the plugin")
            return
        if isinstance(stats, dict):
            self._loop.call_soon_threadsafe(self._stats_received, stats)

    def _stats_received(self, stats: dict[str, object]) -> None:
        self.stats = stats
        self.stats_at = time.monotonic()

    def _connected(self) -> None:
        self.connected.set()
        self.on_connected.put_nowait(None)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._loop.call_soon_threadsafe(self.connected.clear)
        log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def send(self, text: str) -> mqtt.MQTTMessageInfo | None:
        """Publish one control message (QoS 1); None when not connected."""
        if not self.connected.is_set():
            return None
        info = self._client.publish(CONTROL_TOPIC, text.encode(), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return info


class _HasLink(Protocol):
    @property
    def link(self) -> PluginLink | None: ...


class PluginStatsCollector(Collector):
    """The plugin's counters, as of its last `stats` answer."""

    def __init__(self, sidecar: _HasLink) -> None:
        self._sidecar = sidecar

    def collect(self) -> Iterator[Metric]:
        link = self._sidecar.link
        stats = link.stats if link is not None else {}
        age = GaugeMetricFamily(
            "fleet_mosquitto_plugin_stats_age_seconds",
            "Seconds since the plugin last answered `stats` (NaN: never)",
        )
        at = link.stats_at if link is not None else None
        age.add_metric([], math.nan if at is None else time.monotonic() - at)
        yield age
        if not stats:
            return
        accepted = CounterMetricFamily(
            "fleet_mosquitto_connects_accepted", "Device connects the plugin accepted"
        )
        accepted.add_metric([], _number(stats.get("accepted")))
        yield accepted
        refused = CounterMetricFamily(
            "fleet_mosquitto_connects_refused",
            "Connects the plugin refused, by reason (fleet.kernel.reasons.BROKER_REFUSALS)",
            labels=["reason"],
        )
        by_reason = stats.get("refused_by_reason")
        if isinstance(by_reason, dict):
            for reason, count in sorted(by_reason.items()):
                refused.add_metric([str(reason)], _number(count))
        yield refused
        kicked = CounterMetricFamily(
            "fleet_mosquitto_sessions_kicked", "Live sessions the plugin closed on revocation"
        )
        kicked.add_metric([], _number(stats.get("kicked")))
        yield kicked
        taken_over = CounterMetricFamily(
            "fleet_mosquitto_sessions_taken_over",
            "Sessions the plugin closed because the device connected to a peer node since",
        )
        taken_over.add_metric([], _number(stats.get("taken_over")))
        yield taken_over
        seq = GaugeMetricFamily(
            "fleet_mosquitto_plugin_seq", "Highest revocation feed sequence the plugin applied"
        )
        seq.add_metric([], _number(stats.get("seq")))
        yield seq
        stale = GaugeMetricFamily(
            "fleet_mosquitto_plugin_stale",
            "1 if the plugin refuses devices as revocation_state_stale (no snapshot, or no "
            "heartbeat for max_staleness_seconds)",
        )
        stale.add_metric([], 1.0 if stats.get("stale") or not stats.get("loaded") else 0.0)
        yield stale
        age = GaugeMetricFamily(
            "fleet_mosquitto_plugin_revocation_age_seconds",
            "Seconds since the plugin's revocation state was last known current",
        )
        age.add_metric([], _number(stats.get("fresh_age")))
        yield age
        limit = GaugeMetricFamily(
            "fleet_mosquitto_plugin_max_staleness_seconds",
            "The plugin's max_staleness_seconds (0: no staleness policy, fails open)",
        )
        limit.add_metric([], _number(stats.get("max_staleness")))
        yield limit


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


# -- the sidecar -------------------------------------------------------------------
