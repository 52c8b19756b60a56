"""The demo's broker steps on Mosquitto 2.0 with the fleet plugin and its sidecar.

The fleet plugin confines every client to devices/<its id>/#: there is no
monitoring subscriber. These steps observe the broker's side through the
sidecar's /metrics (the plugin's accepted / refused / kicked counters) and the
broker's own log (each connection, each PUBLISH that passed the plugin's topic
ACL), and each device's own MQTT session (connected, disconnected, the serial
it presents).
"""

from __future__ import annotations

import time

from firmware_sim.bench import wait_until
from firmware_sim.demo_context import DemoContext, StepFailed, Verified, short_serial
from firmware_sim.device import BrokerAddress
from firmware_sim.mosquitto import MosquittoNode
from firmware_sim.world import LOOPBACK


class MosquittoSteps:
    start_text = (
        "Start Mosquitto with the fleet plugin: build the plugin, mint the "
        "sidecar certificate, generate mosquitto.conf, sync once, then run mosquitto and "
        "the sidecar (revocation feed -> plugin, /metrics)."
    )

    def __init__(self, context: DemoContext) -> None:
        self.context = context
        self.node: MosquittoNode | None = None

    def broker(self) -> Verified:
        world = self.context.world
        node = MosquittoNode(
            self.context.work_dir / "mosquitto", data_dir=world.data_dir,
            store_url=world.store_url(),
        )  # fmt: skip
        self.node = node
        plugin = node.build()
        cert, key = node.sidecar_cert()
        conf = node.configure(plugin, cert, key)
        if str(plugin) not in conf:
            raise StepFailed("the generated mosquitto.conf does not load the plugin")
        node.sync_once()
        if not (node.directory / "state" / "revocations.txt").is_file():
            raise StepFailed("`sync --once` wrote no revocation snapshot")
        node.start_broker()
        node.start_sidecar()
        if "fleet: sidecar connected" not in node.log_text():
            raise StepFailed("the sidecar is not connected to the broker")
        return Verified(
            f"mqtts://{LOOPBACK}:{node.port} (mosquitto pid {node.broker_pid}, plugin "
            f"{plugin.name}); sidecar pid {node.sidecar_pid} connected, /metrics on "
            f"{LOOPBACK}:{node.metrics_port}. No monitoring subscriber here: the plugin confines "
            "every client to devices/<id>/#, so the broker log and the sidecar's counters "
            "are observed instead",
            "plugin built, sidecar connected, plugin counters on /metrics",
        )

    def connect(self) -> Verified:
        node = self._node()
        devices = self.context.devices
        mark, before = node.log_mark(), node.accepted()
        self.context.connect_all(BrokerAddress(LOOPBACK, node.port))
        n = len(devices)
        accepted = node.wait_metric("accepted", before + n - 0.5)
        if accepted - before < n:
            raise StepFailed(
                f"the plugin's accepted counter rose by {accepted - before:.0f}, not {n}"
            )
        ids = {d.device_id for d in devices}
        unseen = sorted(ids - node.connected_clients(mark))
        if unseen:
            raise StepFailed(f"the broker log shows no connection of {', '.join(unseen[:5])}")
        return Verified(
            f"the plugin accepted {n}/{n} (fleet_mosquitto_connects_accepted "
            f"{before:.0f} → {accepted:.0f} on the sidecar's /metrics); the broker log shows "
            "each device connected under its own id",
            f"plugin accepted {n}/{n} (sidecar /metrics), each in the broker log",
        )

    def telemetry(self) -> Verified:
        node = self._node()
        mark = node.log_mark()
        self.context.publish_telemetry()
        wanted = {(d.device_id, f"devices/{d.device_id}/telemetry") for d in self.context.devices}
        wait_until(lambda: wanted <= node.published(mark), 15, step=0.1)
        missing = sorted(d for d, _ in wanted - node.published(mark))
        if missing:
            raise StepFailed(f"the broker received no telemetry from {', '.join(missing[:5])}")
        n = len(wanted)
        return Verified(
            f"the broker received {n}/{n} readings, each on the device's own topic and past "
            "the plugin's ACL (broker log: Received PUBLISH)",
            f"the broker received {n}/{n} readings past the topic ACL (broker log)",
        )

    def renew(self) -> Verified:
        node = self._node()
        device, old, new = self.context.renew_first()
        mark, before = node.log_mark(), node.accepted()
        if not device.reconnect_with_current_identity(timeout=10):
            raise StepFailed("the device did not reconnect with the renewed certificate")
        session = device.session
        assert session is not None
        if session.serial != new:
            raise StepFailed(f"the session presents serial {session.serial}, not the new {new}")
        accepted = node.wait_metric("accepted", before)
        if accepted <= before:
            raise StepFailed("the plugin's accepted counter did not rise for the reconnect")
        status = (device.device_id, f"devices/{device.device_id}/status")
        if not wait_until(lambda: status in node.published(mark), 10, step=0.1):
            raise StepFailed("the broker received no status message after the reconnect")
        return Verified(
            f"{device.device_id}: serial {short_serial(old)} → {short_serial(new)}; the plugin "
            f"accepted its reconnect with the new certificate (accepted {before:.0f} → "
            f"{accepted:.0f}), and its status message (cert_serial = the new serial, as its "
            "session reports) reached the broker",
            "reconnect accepted by the plugin; status (new serial) reached the broker",
        )

    def revoke(self) -> Verified:
        node = self._node()
        device = self.context.revoked_device()
        session = device.session
        if session is None or not session.connected:
            raise StepFailed(f"{device.device_id} is not connected before the revocation")
        kicked_before = node.kicked()
        started = time.monotonic()
        self.context.revoke(device)
        if not wait_until(lambda: not session.connected, 10):
            raise StepFailed("the device's session was not closed within 10 s")
        kicked_ms = (time.monotonic() - started) * 1000
        kicked = node.wait_metric("kicked", kicked_before)
        if kicked <= kicked_before:
            raise StepFailed("the plugin's kicked counter did not rise")
        device.disconnect()
        # Let the counters settle (the session may have retried on its own meanwhile).
        time.sleep(2 * node.heartbeat_seconds + 0.3)
        refused_before = node.refused_revoked()
        # The device's own MQTT code tries again with the same certificate.
        retry = device.connect(BrokerAddress(LOOPBACK, node.port))
        refused = wait_until(lambda: node.refused_revoked() > refused_before, 10, step=0.1)
        admitted = retry.connections > 0
        device.disconnect()
        if admitted or not refused:
            raise StepFailed("the revoked device's reconnect was not refused by the plugin")
        return Verified(
            f"{device.device_id} (serial {short_serial(device.serial)}) kicked live "
            f"{kicked_ms:.0f} ms after the revocation (its session saw the disconnect; "
            f"kicked {kicked_before:.0f} → {kicked:.0f}); its reconnect was refused (revoked) "
            f'(refused{{reason=~"…_revoked"}} {refused_before:.0f} → {node.refused_revoked():.0f})',
            f"kicked live in {kicked_ms:.0f} ms; reconnect refused (revoked)",
        )

    def stop(self) -> None:
        """Stop mosquitto and the sidecar, if the broker step started them."""
        if self.node is not None:
            self.node.stop()

    def _node(self) -> MosquittoNode:
        if self.node is None:
            raise StepFailed("mosquitto is not running")
        return self.node
