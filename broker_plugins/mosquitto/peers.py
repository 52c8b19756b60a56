"""One session per device across broker nodes: session announcements to the peers.

MQTT allows one session per client id; one Mosquitto enforces it by itself
(a second CONNECT with the same id closes the first), but several nodes behind
a TCP balancer do not know each other's sessions. With ``peers`` set, the
plugin announces every device it admits ("<device_id> <unix ms>" on
``$fleet/v1/sessions``, to the sidecar only); the sidecar passes it, as a
``session <device_id> <ms>`` control command, to every peer node's listener.
A peer's plugin closes its own session of that device if it began earlier:
the newest connection wins, and a late announcement never closes a newer one.

Fail safe by construction: nothing here can refuse a connection. A lost
announcement (a peer down, a full queue) leaves the older session up, which is
what a device sees with a single broker whose TCP session went half-open.

The link to each peer is the sidecar certificate over the peer's own TLS
listener, client id ``<sidecar_cn>@<node_name>`` (never the peer's own
sidecar's id, which it would take over); the plugin accepts only ``session``
commands from such a link. No file is shared between nodes.
"""

from __future__ import annotations

import logging

import paho.mqtt.client as mqtt
from paho.mqtt.client import CallbackOnConnect_v2, CallbackOnDisconnect_v2
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from broker_plugins.mosquitto.config import CONTROL_TOPIC, MosquittoSettings
from broker_plugins.mosquitto.sidecar_client import sidecar_client, stop_clients
from fleet.kernel.device_id import is_device_id

log = logging.getLogger(__name__)

STOP_SECONDS = 3.0
# Announcements queued per peer while it is unreachable: older ones are worthless once
# the device reconnected, and a peer that is down holds no session to close anyway.
MAX_QUEUED = 1000
MAX_ANNOUNCEMENT = 128


def session_command(payload: bytes) -> str | None:
    """The ``session`` command for one plugin announcement; None when it is malformed."""
    if len(payload) > MAX_ANNOUNCEMENT:
        return None
    try:
        device_id, ms = payload.decode("ascii").split(" ")
    except ValueError:  # not ASCII (UnicodeDecodeError), or not two fields
        return None
    if not is_device_id(device_id) or not ms.isdigit() or len(ms) > 15:
        return None
    return f"session {device_id} {int(ms)}"


class PeerLinks:
    """One MQTT link per peer node (paho network threads); ``announce`` is thread-safe."""

    def __init__(self, settings: MosquittoSettings) -> None:
        self._links: list[tuple[str, int, mqtt.Client]] = []
        for host, port in settings.peer_addresses:
            client = sidecar_client(settings, settings.peer_client_id, max_reconnect_delay=5)
            client.max_queued_messages_set(MAX_QUEUED)
            client.on_connect = _on_connect(f"{host}:{port}")
            client.on_disconnect = _on_disconnect(f"{host}:{port}")
            self._links.append((host, port, client))

    def start(self) -> None:
        for host, port, client in self._links:
            client.connect_async(host, port, keepalive=30)
            client.loop_start()

    def stop(self) -> None:
        stop_clients((client for _, _, client in self._links), STOP_SECONDS)

    def announce(self, command: str) -> None:
        """Send one ``session`` command to every peer (QoS 1, queued while a peer is away)."""
        for host, port, client in self._links:
            info = client.publish(CONTROL_TOPIC, command.encode(), qos=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.warning("session announcement to peer %s:%d dropped: %s", host, port, info.rc)


def _on_connect(name: str) -> CallbackOnConnect_v2:
    def on_connect(
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("peer broker %s refused the session link: %s", name, reason_code)
        else:
            log.info("session link to peer broker %s up", name)

    return on_connect


def _on_disconnect(name: str) -> CallbackOnDisconnect_v2:
    def on_disconnect(
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        log.warning("session link to peer broker %s down (%s); reconnecting", name, reason_code)

    return on_disconnect
