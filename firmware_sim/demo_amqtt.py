"""The demo's broker steps on the embedded broker (amqtt with fleet's checks).

This broker runs in the simulator's process, so the steps read its view of the
live connections (the serial each device presents, its refused and kicked
counters) directly, and a monitoring subscriber, enrolled like any fleet
client, sees what the devices publish.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time

from device_agent.mqtt_tls import TlsIdentity
from firmware_sim.bench import wait_until
from firmware_sim.demo_context import (
    ADMIN,
    DemoContext,
    StepFailed,
    Verified,
    short_serial,
)
from firmware_sim.device import BrokerAddress
from firmware_sim.observer import Observer
from firmware_sim.world import LOOPBACK, BrokerThread
from fleet.authority.admin import issue_enrollment_token

OBSERVER_ID = "demo-observer"
OBSERVED = ("devices/+/telemetry", "devices/+/status")


class EmbeddedBrokerSteps:
    start_text = (
        "Start the embedded MQTT broker (amqtt with fleet's mTLS check, topic "
        "ACL and live revocation), and a monitoring subscriber."
    )

    def __init__(self, context: DemoContext) -> None:
        self.context = context
        self.observer: Observer | None = None

    def broker(self) -> Verified:
        world = self.context.world
        broker = world.start_broker()
        broker.allow_observer(OBSERVER_ID, OBSERVED)
        # The observer is a fleet client too: enrolled over EST with a one-time token.
        token = world.store(
            lambda s: issue_enrollment_token(
                s, OBSERVER_ID, lifetime=dt.timedelta(minutes=10), actor=ADMIN, now=world.now()
            )
        )
        watcher = self.context.sim_device(OBSERVER_ID)
        identity = watcher.enroll(token=token.token)
        self.observer = Observer(
            LOOPBACK,
            broker.port,
            OBSERVER_ID,
            TlsIdentity(identity.cert_path, identity.key),
            watcher.state.cacerts_path.read_bytes(),
        )
        if not self.observer.start(OBSERVED):
            raise StepFailed("the monitoring subscriber could not connect and subscribe")
        return Verified(
            f"mqtts://{LOOPBACK}:{broker.port}; observer subscribed to {', '.join(OBSERVED)}",
            "mTLS listener up; observer enrolled (token) and subscribed",
        )

    def connect(self) -> Verified:
        broker = self._broker()
        devices = self.context.devices
        self.context.connect_all(BrokerAddress(LOOPBACK, broker.port))
        wrong = [
            d.device_id
            for d in devices
            if d.identity is None or broker.serials_of(d.device_id) != {d.identity.serial}
        ]
        if wrong:
            raise StepFailed(f"the broker does not see the issued serial of {', '.join(wrong)}")
        return Verified(
            f"the broker admitted {len(devices)}/{len(devices)}, each with the "
            "serial it was issued",
            f"broker admitted {len(devices)}/{len(devices)}, serials as issued",
        )

    def telemetry(self) -> Verified:
        observer = self._observer()
        self.context.publish_telemetry()
        ids = [d.device_id for d in self.context.devices]
        missing = observer.wait_for(ids, "telemetry", timeout=15)
        if missing:
            raise StepFailed(f"no telemetry from {', '.join(missing[:5])}")
        sample = next(p for s, p in observer.messages[ids[0]] if s == "telemetry")
        reading = {k: v for k, v in sample.items() if k in ("temperature_c", "humidity_pct")}
        return Verified(
            f"the observer received {len(ids)}/{len(ids)} readings (e.g. {ids[0]}: {reading})",
            f"the observer received {len(ids)}/{len(ids)} readings",
        )

    def renew(self) -> Verified:
        broker, observer = self._broker(), self._observer()
        device, old, new = self.context.renew_first()
        if not device.reconnect_with_current_identity(timeout=10):
            raise StepFailed("the device did not reconnect with the renewed certificate")
        assert device.identity is not None
        seen = broker.serials_of(device.device_id)
        if seen != {device.identity.serial}:
            raise StepFailed(f"the broker sees serial(s) {_hex(seen)}, not the new {new}")
        if observer.wait_for(
            [device.device_id], "status", lambda p: p.get("cert_serial") == new, timeout=10
        ):
            raise StepFailed("no status message with the new serial reached the observer")
        return Verified(
            f"{device.device_id}: serial {short_serial(old)} → {short_serial(new)}; the broker "
            f"now sees {short_serial(new)}, and its status message carries it",
            "new serial: seen by the broker and in the device's status message",
        )

    def revoke(self) -> Verified:
        broker = self._broker()
        device = self.context.revoked_device()
        session = device.session
        if session is None or not session.connected:
            raise StepFailed(f"{device.device_id} is not connected before the revocation")
        refused_before = broker.refused_revoked()
        kicked_before = broker.kicked("revoked")
        started = time.monotonic()
        self.context.revoke(device)
        kicked = wait_until(
            lambda: not broker.serials_of(device.device_id) and not session.connected, 10
        )
        if not kicked or broker.kicked("revoked") <= kicked_before:
            raise StepFailed("the broker did not close the revoked device's session within 10 s")
        kicked_ms = (time.monotonic() - started) * 1000
        device.disconnect()
        # The device's own MQTT code tries again with the same certificate.
        retry = device.connect(BrokerAddress(LOOPBACK, broker.port))
        refused = wait_until(lambda: broker.refused_revoked() > refused_before, 10)
        admitted = retry.connections > 0 or bool(broker.serials_of(device.device_id))
        device.disconnect()
        if admitted or not refused:
            raise StepFailed("the revoked device's reconnect was not refused by the broker")
        return Verified(
            f"{device.device_id} (serial {short_serial(device.serial)}) kicked live "
            f"{kicked_ms:.0f} ms after the revocation; its reconnect was refused (revoked)",
            f"kicked live in {kicked_ms:.0f} ms; reconnect refused (revoked)",
        )

    def stop(self) -> None:
        """Stop what these steps started beside the world (the world stops the broker)."""
        if self.observer is not None:
            with contextlib.suppress(Exception):
                self.observer.stop()

    def _broker(self) -> BrokerThread:
        broker = self.context.world.broker
        if broker is None:
            raise StepFailed("the broker is not running")
        return broker

    def _observer(self) -> Observer:
        if self.observer is None:
            raise StepFailed("the observer is not running")
        return self.observer


def _hex(serials: set[int]) -> str:
    return ", ".join(f"{s:x}" for s in sorted(serials)) or "none"
