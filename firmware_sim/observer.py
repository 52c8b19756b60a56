"""A monitoring subscriber: sees what devices publish, so the simulator verifies by observation.

It is an MQTT client over mutual TLS like any device (its certificate comes
from the fleet, enrolled with a one-time token); the broker lets it read the
filters it was granted (``BrokerThread.allow_observer``) and nothing else.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from device_agent.mqtt_tls import TlsIdentity, tls_context


class Observer:
    def __init__(
        self, host: str, port: int, client_id: str, identity: TlsIdentity, trust: bytes
    ) -> None:
        self.host, self.port = host, port
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        context: ssl.SSLContext = tls_context(identity, trust)
        self.client.tls_set_context(context)
        self.client.reconnect_delay_set(1, 5)
        self._cond = threading.Condition()
        self._connected = False
        self._granted: list[int] | None = None
        # device id -> messages (topic suffix, decoded JSON payload), in arrival order
        self.messages: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, filters: tuple[str, ...], timeout: float = 10.0) -> bool:
        """Connect and subscribe; True once every filter was granted."""
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self._wait(lambda: self._connected, timeout):
            return False
        self.client.subscribe([(f, 1) for f in filters])
        if not self._wait(lambda: self._granted is not None, timeout):
            return False
        return all(code < 0x80 for code in self._granted or [0x80])

    def stop(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    # -- queries -----------------------------------------------------------------------
    def seen(self, device_id: str, suffix: str, match: Callable[[dict[str, Any]], bool]) -> bool:
        with self._cond:
            return any(s == suffix and match(p) for s, p in self.messages.get(device_id, ()))

    def wait_for(
        self,
        device_ids: list[str],
        suffix: str,
        match: Callable[[dict[str, Any]], bool] = lambda payload: True,
        timeout: float = 10.0,
    ) -> list[str]:
        """Wait until each device published a matching message; the ones still missing."""

        def missing() -> list[str]:
            return [d for d in device_ids if not self.seen(d, suffix, match)]

        self._wait(lambda: not missing(), timeout)
        return missing()

    def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.2))
            return True

    # -- paho callbacks --------------------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._cond:
            self._connected = not reason.is_failure
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, codes: Any, props: Any) -> None:
        with self._cond:
            self._granted = [int(c.value) for c in codes]
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        parts = str(message.topic).split("/", 2)
        if len(parts) != 3 or parts[0] != "devices":
            return
        try:
            payload = json.loads(bytes(message.payload))
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        with self._cond:
            self.messages.setdefault(parts[1], []).append((parts[2], payload))
            self._cond.notify_all()
