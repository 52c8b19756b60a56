"""The sidecar's MQTT client, built one way for every broker it talks to.

The sidecar talks MQTT to its own broker (the plugin link, plugin_link.py) and to
every peer node (peers.py), always as the sidecar identity over the broker's
TLS listener: the same CA bundle, certificate and key, MQTT 3.1.1 with a clean
session. Only the client id and how patiently it reconnects differ.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from broker_plugins.mosquitto.config import MosquittoSettings


def sidecar_client(
    settings: MosquittoSettings, client_id: str, *, max_reconnect_delay: int
) -> mqtt.Client:
    """A paho client that presents the sidecar certificate and trusts the broker's CA."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    client.tls_set(
        ca_certs=str(settings.broker_cafile or settings.root_ca),
        certfile=str(settings.sidecar_cert),
        keyfile=str(settings.sidecar_key),
    )
    client.reconnect_delay_set(min_delay=1, max_delay=max_reconnect_delay)
    return client


def stop_clients(clients: Iterable[mqtt.Client], wait_seconds: float) -> None:
    """Disconnect, and let each network thread go within ``wait_seconds``.

    paho's thread sleeps up to a second at a time in its reconnect back-off
    (the broker stopped first, as systemd does); it is a daemon thread and
    holds nothing to flush, so a stop does not wait for it beyond that.
    """
    clients = list(clients)
    for client in clients:
        client.disconnect()
    stoppers = [
        threading.Thread(target=client.loop_stop, name="paho-stop", daemon=True)
        for client in clients
    ]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join(wait_seconds)
