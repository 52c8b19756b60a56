"""`fleet-sim demo`: the whole system, end to end, in one command on embedded defaults.

Each step says in plain words what happens, does it with the real pieces (the
`fleet` command line, `fleet serve`, the embedded broker, the device agent's
own enrollment, renewal and MQTT code), and then checks the outcome by
observation: the broker's view of live connections, what a subscriber
received, the server's audit log. The demo exits 0 only if every step was
verified; the first failing step ends it (the later ones are reported as not run).

``--broker mosquitto`` runs the same steps on a real Mosquitto 2.0 with the fleet
plugin and its sidecar (firmware_sim.mosquitto). The plugin lets no client read
other devices' topics, so there the steps observe the sidecar's /metrics (the
plugin's counters), the broker's log and each device's own MQTT session instead
of a monitoring subscriber.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TextIO

from device_agent.errors import AgentError, Pending, Refused
from device_agent.mqtt_tls import TlsIdentity
from firmware_sim.device import BrokerAddress, SimDevice
from firmware_sim.factory import FactoryOutput, run_factory
from firmware_sim.mosquitto import INSTALL_COMMAND, MosquittoNode, missing_requirements
from firmware_sim.observer import Observer
from firmware_sim.world import LOOPBACK, BrokerThread, World, WorldError
from fleet.authority.admin import issue_enrollment_token
from fleet.authority.lifecycle import revoke_device
from fleet.records import AuditRecord, DeviceState, RevocationReason
from fleet.store.protocol import Store

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_AVAILABLE = 3

OBSERVER_ID = "demo-observer"
OBSERVED = ("devices/+/telemetry", "devices/+/status")
ADMIN = "admin:fleet-sim-demo"
ENROLL_WORKERS = 8


class StepFailed(Exception):
    """A step's outcome was not what it must be (the message says what was seen)."""


@dataclasses.dataclass
class StepResult:
    number: int
    name: str
    verified: bool | None  # None: not run
    detail: str
    seconds: float = 0.0


@dataclasses.dataclass
class DemoOptions:
    devices: int = 20
    broker: str = "amqtt"
    keep: bool = False
    work_dir: Path | None = None
    out: TextIO = dataclasses.field(default_factory=lambda: sys.stdout)


class Demo:
    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        self.out = options.out
        self.results: list[StepResult] = []
        self.work_dir = options.work_dir or Path(tempfile.mkdtemp(prefix="fleet-demo-"))
        self.world = World(self.work_dir)
        self.factory: FactoryOutput | None = None
        self.devices: list[SimDevice] = []
        self.observer: Observer | None = None
        self.mosquitto: MosquittoNode | None = None
        self.rng = random.Random()  # noqa: S311 - simulated sensor readings
        self.failed = False
        self.short = ""  # the step's one-line summary for the final table

    # -- output --------------------------------------------------------------------------
    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    # -- steps -----------------------------------------------------------------------------
    def steps(self) -> list[tuple[str, str, Callable[[], str]]]:
        n = self.options.devices
        amqtt = self.options.broker == "amqtt"
        broker_step: tuple[str, str, Callable[[], str]] = (
            (
                "broker",
                "Start the embedded MQTT broker (amqtt with fleet's mTLS check, topic "
                "ACL and live revocation), and a monitoring subscriber.",
                self.step_broker,
            )
            if amqtt
            else (
                "broker",
                "Start Mosquitto with the fleet plugin: build the plugin, mint the "
                "sidecar certificate, generate mosquitto.conf, sync once, then run mosquitto and "
                "the sidecar (revocation feed -> plugin, /metrics).",
                self.mq_step_broker,
            )
        )
        return [
            ("init", "Create the fleet: `fleet init` makes a CA hierarchy, a server TLS "
             "certificate and a SQLite database in a temporary directory.", self.step_init),
            ("factory", f"The factory makes a manufacturer CA and {n} devices, each with a "
             "bootstrap key and certificate (IDevID-like), and a manifest.", self.step_factory),
            ("trust", "The fleet admin trusts the manufacturer CA "
             "(`fleet trust add-manufacturer`).", self.step_trust),
            ("manifest", "…and imports the factory manifest, which pins each device's "
             "bootstrap certificate (`fleet manifest import`).", self.step_manifest),
            ("server", "Start the EST server (`fleet serve`) on a free loopback port.",
             self.step_server),
            broker_step,
            ("enroll", "Every device enrolls over EST with its bootstrap certificate: it "
             "makes its own key, and gets a short-lived operational certificate.",
             self.step_enroll),
            ("connect", "Every device connects to the broker over mutual TLS with its new "
             "certificate.", self.step_connect if amqtt else self.mq_step_connect),
            ("telemetry", "Every device publishes a telemetry reading on "
             "devices/<id>/telemetry.", self.step_telemetry if amqtt else self.mq_step_telemetry),
            ("renew", "One device renews its certificate (EST simplereenroll, new key) and "
             "reconnects with it.", self.step_renew if amqtt else self.mq_step_renew),
            ("revoke", "An admin revokes one device (reason keyCompromise) while it is "
             "connected.", self.step_revoke if amqtt else self.mq_step_revoke),
            ("clone", "A clone shows up: a second device with an enrolled device's bootstrap "
             "certificate and key, asking for a certificate for a new key.", self.step_clone),
        ]  # fmt: skip

    def step_init(self) -> str:
        self.world.init()
        if not self.world.config_path.is_file() or not self.world.root_pem.is_file():
            raise StepFailed("fleet init did not write fleet.toml and ca/root.pem")
        self.short = "CA hierarchy, server TLS cert, SQLite store"
        return f"root CA {self.world.root_fingerprint[:16]}…, data in {self.world.data_dir}"

    def step_factory(self) -> str:
        self.factory = run_factory(
            self.work_dir / "factory", self.options.devices, now=self.world.now()
        )
        lines = self.factory.manifest.read_text().strip().splitlines()
        if len(lines) != self.options.devices + 1:
            raise StepFailed(f"manifest has {len(lines) - 1} devices")
        first, last = self.factory.devices[0].device_id, self.factory.devices[-1].device_id
        self.short = f"{len(self.factory.devices)} bootstrap certificates + manifest.csv"
        return f"{len(self.factory.devices)} devices {first} … {last}, manifest.csv written"

    def step_trust(self) -> str:
        factory = self._factory()
        self.world.fleet("trust", "add-manufacturer", factory.ca_cert)
        listed = json.loads(self.world.fleet("trust", "list", "--json"))
        text = json.dumps(listed)
        if "Acme Device CA" not in text:
            raise StepFailed(f"`fleet trust list` does not show the manufacturer: {text[:200]}")
        self.short = "`fleet trust list` shows the manufacturer CA"
        return "trusted: Acme Device CA"

    def step_manifest(self) -> str:
        factory = self._factory()
        result = json.loads(self.world.fleet("manifest", "import", factory.manifest, "--json"))
        if result.get("created") != self.options.devices:
            raise StepFailed(f"import created {result.get('created')} devices: {result}")
        self.short = f"{result['created']} devices registered with their bootstrap pins"
        return f"{result['created']} devices registered"

    def step_server(self) -> str:
        server = self.world.start_server()
        self.short = "/healthz answers 200 over TLS"
        return f"healthy at {server.base} (pid {server.pid})"

    def step_broker(self) -> str:
        broker = self.world.start_broker()
        broker.allow_observer(OBSERVER_ID, OBSERVED)
        # The observer is a fleet client too: enrolled over EST with a one-time token.
        token = self.world.store(
            lambda s: issue_enrollment_token(
                s, OBSERVER_ID, lifetime=dt.timedelta(minutes=10), actor=ADMIN, now=self.world.now()
            )
        )
        watcher = self._sim_device(OBSERVER_ID)
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
        self.short = "mTLS listener up; observer enrolled (token) and subscribed"
        return f"mqtts://{LOOPBACK}:{broker.port}; observer subscribed to {', '.join(OBSERVED)}"

    def step_enroll(self) -> str:
        factory = self._factory()
        self.devices = [
            self._sim_device(d.device_id, bootstrap_cert=d.cert, bootstrap_key=d.key)
            for d in factory.devices
        ]
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(ENROLL_WORKERS) as pool:
            futures = {pool.submit(d.enroll, max_wait=20.0): d for d in self.devices}
            errors = []
            for future in concurrent.futures.as_completed(futures):
                try:
                    future.result()
                except AgentError as exc:
                    errors.append(f"{futures[future].device_id}: {exc.message}")
        elapsed = time.monotonic() - started
        if errors:
            raise StepFailed(f"{len(errors)} enrollment(s) failed: {'; '.join(errors[:3])}")
        states = self.world.store(lambda s: _device_states(s, [d.device_id for d in self.devices]))
        inactive = [d for d, state in states.items() if state is not DeviceState.ACTIVE]
        if inactive:
            raise StepFailed(f"the server does not list as active: {', '.join(inactive[:5])}")
        example = self.devices[0]
        self.short = (
            f"{len(self.devices)}/{len(self.devices)} enrolled over EST, active on the server"
        )
        return (
            f"{len(self.devices)}/{len(self.devices)} enrolled in {elapsed:.1f} s, all active "
            f"on the server (e.g. {example.device_id}: serial {_short(example.serial)})"
        )

    def _connect_all(self, address: BrokerAddress) -> None:
        """Start every device's MQTT session and wait until all are up."""
        for device in self.devices:
            device.connect(address)
        not_connected = [
            d.device_id
            for d in self.devices
            if d.session is None or not d.session.wait_connected(10)
        ]
        if not_connected:
            raise StepFailed(f"not connected after 10 s: {', '.join(not_connected[:5])}")

    def step_connect(self) -> str:
        broker = self._broker()
        address = BrokerAddress(LOOPBACK, broker.port)
        self._connect_all(address)
        wrong = [
            d.device_id
            for d in self.devices
            if d.identity is None or broker.serials_of(d.device_id) != {d.identity.serial}
        ]
        if wrong:
            raise StepFailed(f"the broker does not see the issued serial of {', '.join(wrong)}")
        self.short = f"broker admitted {len(self.devices)}/{len(self.devices)}, serials as issued"
        return (
            f"the broker admitted {len(self.devices)}/{len(self.devices)}, each with the "
            "serial it was issued"
        )

    def step_telemetry(self) -> str:
        observer = self._observer()
        for device in self.devices:
            device.publish_telemetry(
                temperature_c=round(self.rng.uniform(18.0, 26.0), 1),
                humidity_pct=round(self.rng.uniform(30.0, 60.0), 1),
            )
        ids = [d.device_id for d in self.devices]
        missing = observer.wait_for(ids, "telemetry", timeout=15)
        if missing:
            raise StepFailed(f"no telemetry from {', '.join(missing[:5])}")
        sample = next(p for s, p in observer.messages[ids[0]] if s == "telemetry")
        reading = {k: v for k, v in sample.items() if k in ("temperature_c", "humidity_pct")}
        self.short = f"the observer received {len(ids)}/{len(ids)} readings"
        return f"the observer received {len(ids)}/{len(ids)} readings (e.g. {ids[0]}: {reading})"

    def step_renew(self) -> str:
        broker, observer = self._broker(), self._observer()
        device = self.devices[0]
        old = device.serial
        result = device.renew(force=True)
        new = device.serial
        if not result.renewed or new is None or new == old:
            raise StepFailed(f"renewal did not give a new certificate ({result.message})")
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
        self.short = "new serial: seen by the broker and in the device's status message"
        return (
            f"{device.device_id}: serial {_short(old)} → {_short(new)}; the broker now sees "
            f"{_short(new)}, and its status message carries it"
        )

    def step_revoke(self) -> str:
        broker = self._broker()
        device = self.devices[1] if len(self.devices) > 1 else self.devices[0]
        session = device.session
        if session is None or not session.connected:
            raise StepFailed(f"{device.device_id} is not connected before the revocation")
        refused_before = broker.refused_revoked()
        kicked_before = broker.kicked("revoked")
        started = time.monotonic()
        revocation = self.world.store(
            lambda s: revoke_device(
                s, device.device_id, RevocationReason.KEY_COMPROMISE,
                actor=ADMIN, now=self.world.now(), note="fleet-sim demo",
            )
        )  # fmt: skip
        if revocation.event is None:
            raise StepFailed("the store reports the device as already revoked")
        kicked = _wait_until(
            lambda: not broker.serials_of(device.device_id) and not session.connected, 10
        )
        if not kicked or broker.kicked("revoked") <= kicked_before:
            raise StepFailed("the broker did not close the revoked device's session within 10 s")
        kicked_ms = (time.monotonic() - started) * 1000
        device.disconnect()
        # The device's own MQTT code tries again with the same certificate.
        retry = device.connect(BrokerAddress(LOOPBACK, broker.port))
        refused = _wait_until(lambda: broker.refused_revoked() > refused_before, 10)
        admitted = retry.connections > 0 or bool(broker.serials_of(device.device_id))
        device.disconnect()
        if admitted or not refused:
            raise StepFailed("the revoked device's reconnect was not refused by the broker")
        self.short = f"kicked live in {kicked_ms:.0f} ms; reconnect refused (revoked)"
        return (
            f"{device.device_id} (serial {_short(device.serial)}) kicked live "
            f"{kicked_ms:.0f} ms after the revocation; its reconnect was refused (revoked)"
        )

    def step_clone(self) -> str:
        factory = self._factory()
        victim = factory.devices[2 % len(factory.devices)]
        clone = self._sim_device(
            victim.device_id,
            bootstrap_cert=victim.cert,
            bootstrap_key=victim.key,
            state_name=f"clone-of-{victim.device_id}",
        )
        try:
            clone.enroll(max_wait=0.0)
        except Pending as exc:
            outcome = f"held (202, retry after {exc.retry_after:.0f} s) pending an admin"
        except Refused as exc:
            outcome = f"refused ({exc.status} {exc.reason})"
        else:
            raise StepFailed("the clone was issued a certificate")
        records = self.world.store(lambda s: _audit_of(s, victim.device_id))
        flagged = [r for r in records if r.event.detail.get("flag") == "possible_clone"]
        if not flagged:
            raise StepFailed("the audit log has no possible_clone flag for the attempt")
        status = "held (202)" if outcome.startswith("held") else "refused (403)"
        self.short = f"clone {status}; audit flagged possible_clone"
        return (
            f"clone of {victim.device_id} {outcome}; audit #{flagged[-1].seq} "
            f"{flagged[-1].event.action}/{flagged[-1].event.reason} flagged possible_clone"
        )

    # -- the same steps on Mosquitto ---------------------------------------------------------
    # The fleet plugin confines every client to devices/<its id>/#: there is no monitoring
    # subscriber. These steps observe the broker's side through the sidecar's /metrics
    # (the plugin's accepted / refused / kicked counters) and the broker's own log (each
    # connection, each PUBLISH that passed the plugin's topic ACL), and each device's own
    # MQTT session (connected, disconnected, the serial it presents).
    def mq_step_broker(self) -> str:
        node = MosquittoNode(
            self.work_dir / "mosquitto", data_dir=self.world.data_dir,
            store_url=self.world.store_url(),
        )  # fmt: skip
        self.mosquitto = node
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
        self.short = "plugin built, sidecar connected, plugin counters on /metrics"
        return (
            f"mqtts://{LOOPBACK}:{node.port} (mosquitto pid {node.broker_pid}, plugin "
            f"{plugin.name}); sidecar pid {node.sidecar_pid} connected, /metrics on "
            f"{LOOPBACK}:{node.metrics_port}. No monitoring subscriber here: the plugin confines "
            "every client to devices/<id>/#, so the broker log and the sidecar's counters "
            "are observed instead"
        )

    def mq_step_connect(self) -> str:
        node = self._mosquitto()
        mark, before = node.log_mark(), node.accepted()
        address = BrokerAddress(LOOPBACK, node.port)
        self._connect_all(address)
        n = len(self.devices)
        accepted = node.wait_metric("accepted", before + n - 0.5)
        if accepted - before < n:
            raise StepFailed(
                f"the plugin's accepted counter rose by {accepted - before:.0f}, not {n}"
            )
        ids = {d.device_id for d in self.devices}
        unseen = sorted(ids - node.connected_clients(mark))
        if unseen:
            raise StepFailed(f"the broker log shows no connection of {', '.join(unseen[:5])}")
        self.short = f"plugin accepted {n}/{n} (sidecar /metrics), each in the broker log"
        return (
            f"the plugin accepted {n}/{n} (fleet_mosquitto_connects_accepted "
            f"{before:.0f} → {accepted:.0f} on the sidecar's /metrics); the broker log shows "
            "each device connected under its own id"
        )

    def mq_step_telemetry(self) -> str:
        node = self._mosquitto()
        mark = node.log_mark()
        for device in self.devices:
            device.publish_telemetry(
                temperature_c=round(self.rng.uniform(18.0, 26.0), 1),
                humidity_pct=round(self.rng.uniform(30.0, 60.0), 1),
            )
        wanted = {(d.device_id, f"devices/{d.device_id}/telemetry") for d in self.devices}
        _wait_until(lambda: wanted <= node.published(mark), 15, step=0.1)
        missing = sorted(d for d, _ in wanted - node.published(mark))
        if missing:
            raise StepFailed(f"the broker received no telemetry from {', '.join(missing[:5])}")
        n = len(wanted)
        self.short = f"the broker received {n}/{n} readings past the topic ACL (broker log)"
        return (
            f"the broker received {n}/{n} readings, each on the device's own topic and past "
            "the plugin's ACL (broker log: Received PUBLISH)"
        )

    def mq_step_renew(self) -> str:
        node = self._mosquitto()
        device = self.devices[0]
        old = device.serial
        result = device.renew(force=True)
        new = device.serial
        if not result.renewed or new is None or new == old:
            raise StepFailed(f"renewal did not give a new certificate ({result.message})")
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
        if not _wait_until(lambda: status in node.published(mark), 10, step=0.1):
            raise StepFailed("the broker received no status message after the reconnect")
        self.short = "reconnect accepted by the plugin; status (new serial) reached the broker"
        return (
            f"{device.device_id}: serial {_short(old)} → {_short(new)}; the plugin accepted "
            f"its reconnect with the new certificate (accepted {before:.0f} → {accepted:.0f}), "
            "and its status message (cert_serial = the new serial, as its session reports) "
            "reached the broker"
        )

    def mq_step_revoke(self) -> str:
        node = self._mosquitto()
        device = self.devices[1] if len(self.devices) > 1 else self.devices[0]
        session = device.session
        if session is None or not session.connected:
            raise StepFailed(f"{device.device_id} is not connected before the revocation")
        kicked_before = node.kicked()
        started = time.monotonic()
        revocation = self.world.store(
            lambda s: revoke_device(
                s, device.device_id, RevocationReason.KEY_COMPROMISE,
                actor=ADMIN, now=self.world.now(), note="fleet-sim demo",
            )
        )  # fmt: skip
        if revocation.event is None:
            raise StepFailed("the store reports the device as already revoked")
        if not _wait_until(lambda: not session.connected, 10):
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
        refused = _wait_until(lambda: node.refused_revoked() > refused_before, 10, step=0.1)
        admitted = retry.connections > 0
        device.disconnect()
        if admitted or not refused:
            raise StepFailed("the revoked device's reconnect was not refused by the plugin")
        self.short = f"kicked live in {kicked_ms:.0f} ms; reconnect refused (revoked)"
        return (
            f"{device.device_id} (serial {_short(device.serial)}) kicked live "
            f"{kicked_ms:.0f} ms after the revocation (its session saw the disconnect; "
            f"kicked {kicked_before:.0f} → {kicked:.0f}); its reconnect was refused (revoked) "
            f'(refused{{reason=~"…_revoked"}} {refused_before:.0f} → {node.refused_revoked():.0f})'
        )

    # -- helpers ------------------------------------------------------------------------------
    def _sim_device(
        self,
        device_id: str,
        *,
        bootstrap_cert: Path | None = None,
        bootstrap_key: Path | None = None,
        state_name: str | None = None,
    ) -> SimDevice:
        return SimDevice(
            device_id,
            self.work_dir / "devices" / (state_name or device_id),
            server=self.world.server.base,
            ca_fingerprint=self.world.root_fingerprint,
            bootstrap_cert=bootstrap_cert,
            bootstrap_key=bootstrap_key,
            rng=random.Random(device_id),  # noqa: S311 - jitter, not secrets
        )

    def _factory(self) -> FactoryOutput:
        if self.factory is None:
            raise StepFailed("the factory step did not run")
        return self.factory

    def _broker(self) -> BrokerThread:
        if self.world.broker is None:
            raise StepFailed("the broker is not running")
        return self.world.broker

    def _mosquitto(self) -> MosquittoNode:
        if self.mosquitto is None:
            raise StepFailed("mosquitto is not running")
        return self.mosquitto

    def _observer(self) -> Observer:
        if self.observer is None:
            raise StepFailed("the observer is not running")
        return self.observer

    # -- run ------------------------------------------------------------------------------------
    def run(self) -> int:
        options = self.options
        broker = (
            "embedded amqtt broker" if options.broker == "amqtt" else "Mosquitto + fleet plugin"
        )
        self.say(
            f"fleet demo: {options.devices} simulated devices on embedded defaults "
            f"(SQLite, {broker}), all on {LOOPBACK}"
        )
        self.say(f"work directory: {self.work_dir}")
        self.say()
        try:
            for number, (name, text, action) in enumerate(self.steps(), start=1):
                if self.failed:
                    self.results.append(StepResult(number, name, None, "not run"))
                    continue
                self.say(f"{number:2d}. {text}")
                started = time.monotonic()
                self.short = ""
                try:
                    detail = action()
                except Exception as exc:  # any failure is reported, and ends the demo
                    message = _failure(exc)
                    self.failed = True
                    self.results.append(
                        StepResult(number, name, False, message, time.monotonic() - started)
                    )
                    self.say(f"    ✗ {message}")
                    continue
                self.results.append(
                    StepResult(number, name, True, self.short or detail, time.monotonic() - started)
                )
                self.say(f"    ✓ {detail}")
        finally:
            self.cleanup()
        self.summary()
        return EXIT_OK if all(r.verified for r in self.results) else EXIT_FAILED

    def cleanup(self) -> None:
        for device in self.devices:
            with contextlib.suppress(Exception):
                device.disconnect(timeout=3)
        if self.observer is not None:
            with contextlib.suppress(Exception):
                self.observer.stop()
        if self.mosquitto is not None:
            self.mosquitto.stop()
        self.world.stop()
        logging.shutdown()
        if self.options.keep:
            self.say()
            self.say(f"kept: {self.work_dir} (server.log in fleet-data/, demo.log)")
        else:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def summary(self) -> None:
        self.say()
        width = max(len(r.name) for r in self.results)
        self.say(f"  {'step':<{width}}  result     time    what was verified")
        self.say(f"  {'-' * width}  ---------  ------  {'-' * 40}")
        for r in self.results:
            mark = {True: "✓ ok", False: "✗ FAILED", None: "- not run"}[r.verified]
            seconds = f"{r.seconds:5.1f}s" if r.verified is not None else "     -"
            detail = r.detail if len(r.detail) <= 90 else r.detail[:89] + "…"
            self.say(f"  {r.name:<{width}}  {mark:<9}  {seconds}  {detail}")
        self.say()
        ok = sum(1 for r in self.results if r.verified)
        if ok == len(self.results):
            self.say(f"demo OK: all {ok} steps verified")
        else:
            self.say(f"demo FAILED: {ok} of {len(self.results)} steps verified")


# -- store queries ------------------------------------------------------------------------


async def _device_states(store: Store, ids: list[str]) -> dict[str, DeviceState]:
    return {d: (await store.get_device(d)).state for d in ids}


async def _audit_of(store: Store, device_id: str) -> list[AuditRecord]:
    return await store.audit_records(device_id=device_id, after_seq=0, limit=1000)


def _wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


def _failure(exc: Exception) -> str:
    if isinstance(exc, AgentError):
        return exc.message
    if isinstance(exc, StepFailed | WorldError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _short(serial: str | None) -> str:
    return "none" if serial is None else serial[:10] + "…"


def _hex(serials: set[int]) -> str:
    return ", ".join(f"{s:x}" for s in sorted(serials)) or "none"


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C: cleanup runs, processes are stopped."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(options: DemoOptions) -> int:
    if options.broker == "mosquitto":
        missing = missing_requirements()
        if missing:
            print(
                f"fleet-sim demo --broker mosquitto: not available here: {', '.join(missing)} "
                f"missing. Install with: {INSTALL_COMMAND} (or use --broker amqtt).",
                file=sys.stderr,
            )
            return EXIT_NOT_AVAILABLE
    elif options.broker != "amqtt":
        print(f"fleet-sim demo --broker {options.broker}: unknown broker", file=sys.stderr)
        return EXIT_NOT_AVAILABLE
    demo = Demo(options)
    log_path = demo.work_dir / "demo.log"
    logging.basicConfig(
        filename=log_path,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        force=True,
    )
    with _terminate_as_exit():
        return demo.run()
