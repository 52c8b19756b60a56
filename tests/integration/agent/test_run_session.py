"""The device's MQTT session (device_agent.mqtt) against a real fleet server and Mosquitto.

Devices are enrolled by curl + openssl (a third-party EST client); an
"observer" device, allowed by an extra ACL line to read ``devices/#``,
watches what the session publishes. The broker has a CRL from `fleet crl`, so
a test can revoke a certificate and prove which one the session presents.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from device_agent.keystore import FileKey
from device_agent.mqtt import MqttSession, SessionSettings, status_topic
from device_agent.mqtt_tls import TlsIdentity
from tests.integration.est.conftest import Fleet, running_fleet
from tests.support.mosquitto import Mosquitto, Observer, observer_acl
from tests.support.ports import free_port

pytestmark = [
    pytest.mark.needs_binary("mosquitto"),
    pytest.mark.needs_binary("openssl"),
    pytest.mark.needs_binary("curl"),
]

OBSERVER = "observer-run"


@dataclasses.dataclass
class Enrolled:
    device_id: str
    cert: Path
    key: Path

    @property
    def serial(self) -> str:
        return f"{x509.load_pem_x509_certificate(self.cert.read_bytes()).serial_number:x}"

    def identity(self) -> TlsIdentity:
        return TlsIdentity(self.cert, FileKey.open(self.key))


@dataclasses.dataclass
class Env:
    fleet: Fleet
    broker: Mosquitto
    observer: Observer
    crl: Path

    def enroll(self, device_id: str | None = None) -> Enrolled:
        device = self.fleet.new_device(device_id=device_id)
        key, csr = self.fleet.csr(device.device_id)
        cert = self.fleet.issued(self.fleet.enroll(device, csr), device.device_id)
        return Enrolled(device.device_id, cert, key)

    def renew(self, current: Enrolled) -> Enrolled:
        key, csr = self.fleet.csr(f"{current.device_id}-renewed")
        cert = self.fleet.issued(self.fleet.reenroll(current.cert, current.key, csr), "renewed")
        return Enrolled(current.device_id, cert, key)

    def fleet_cli(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "fleet", *args, "--config", str(self.fleet.server.config_path)],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def revoke(self, enrolled: Enrolled) -> None:
        """Revoke one certificate, publish the CRL to the broker and make it re-read it."""
        self.fleet_cli("cert", "revoke", enrolled.serial, "--reason", "superseded")
        self.fleet_cli("crl", "--out", str(self.crl))
        self.broker.reload()
        time.sleep(0.3)

    def settings(self, device_id: str, **overrides: object) -> SessionSettings:
        values: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.broker.port,
            "device_id": device_id,
            "trust": self.fleet.server.root_pem.read_bytes(),
            "heartbeat_interval": 30.0,
            "reconnect_min": 0.2,
            "reconnect_max": 2.0,
            **overrides,
        }
        return SessionSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("run-session")
    with running_fleet(base) as fleet:
        crl = base / "fleet.crl.pem"
        env = Env(fleet, None, None, crl)  # type: ignore[arg-type]
        env.fleet_cli("crl", "--out", str(crl))  # mosquitto will not start without it
        broker = Mosquitto(
            base / "mosquitto",
            fleet.server.data_dir,
            extra_acl=observer_acl(OBSERVER),
            crlfile=crl,
            persistence=True,
        ).start()
        try:
            watcher = env.enroll(OBSERVER)
            observer = Observer(broker, OBSERVER, watcher.cert, watcher.key, fleet.server.root_pem)
            try:
                yield dataclasses.replace(env, broker=broker, observer=observer)
            finally:
                observer.close()
        finally:
            broker.stop()


def _json(payload: bytes) -> dict[str, object]:
    body = json.loads(payload)
    assert isinstance(body, dict)
    return body


def _heartbeat_from(device_id: str, serial: str | None = None) -> Callable[[str, bytes], bool]:
    def match(topic: str, payload: bytes) -> bool:
        if topic != status_topic(device_id):
            return False
        return serial is None or _json(payload).get("cert_serial") == serial

    return match


@pytest.fixture
def session_for(env: Env) -> Iterator[list[MqttSession]]:
    started: list[MqttSession] = []
    yield started
    for session in started:
        assert session.stop(timeout=15), "session thread did not stop"


def test_connects_as_the_device_and_heartbeats(env: Env, session_for: list[MqttSession]) -> None:
    device = env.enroll()
    session = MqttSession(env.settings(device.device_id, heartbeat_interval=0.5), device.identity())
    session_for.append(session)
    session.start()
    assert session.wait_connected(10), env.broker.log()[-2000:]
    # Two heartbeats: the one sent on connect, then the periodic one.
    for _ in range(2):
        _, payload = env.observer.wait_for(_heartbeat_from(device.device_id))
    body = _json(payload)
    assert body["device_id"] == device.device_id
    assert body["cert_serial"] == device.serial
    assert int(str(body["seq"])) >= 2
    # The broker saw the device id as client id, with a persistent session (c0).
    (line,) = env.broker.connections_of(device.device_id)
    assert "c0" in line
    assert f"u'{device.device_id}'" in line


def test_renewal_swap_presents_the_new_certificate_and_keeps_queued_qos1(
    env: Env, session_for: list[MqttSession]
) -> None:
    old = env.enroll()
    session = MqttSession(env.settings(old.device_id), old.identity())
    session_for.append(session)
    session.start()
    assert session.wait_connected(10)
    env.observer.wait_for(_heartbeat_from(old.device_id, old.serial))
    new = env.renew(old)
    assert new.serial != old.serial
    # The broker now refuses the old certificate on new connections: only the
    # renewed one can get the session back.
    env.revoke(old)

    # A burst larger than paho's in-flight window (20), then the swap at once:
    # some messages are in flight, most still queued, when the socket closes.
    count = 60
    for n in range(count):
        session.publish("telemetry", json.dumps({"n": n}))
    assert session.swap_identity(new.identity(), timeout=15), env.broker.log()[-3000:]
    assert session.serial == new.serial

    seen: set[int] = set()
    deadline = time.monotonic() + 20
    while len(seen) < count and time.monotonic() < deadline:
        _, payload = env.observer.wait_for(
            lambda t, _p: t == f"devices/{old.device_id}/telemetry",
            timeout=deadline - time.monotonic(),
        )
        seen.add(int(str(_json(payload)["n"])))
    assert seen == set(range(count))  # at-least-once: duplicates allowed, no loss
    env.observer.wait_for(_heartbeat_from(old.device_id, new.serial))
    assert len(env.broker.connections_of(old.device_id)) == 2

    # Control: the revoked old certificate no longer gets in.
    stale = MqttSession(
        env.settings(old.device_id, reconnect_min=5.0, reconnect_max=5.0), old.identity()
    )
    session_for.append(stale)
    stale.start()
    assert not stale.wait_connected(3)


def test_qos1_published_while_broker_down_arrive_after_it_returns(
    env: Env, session_for: list[MqttSession]
) -> None:
    device = env.enroll()
    session = MqttSession(env.settings(device.device_id), device.identity())
    session_for.append(session)
    session.start()
    assert session.wait_connected(10)
    env.observer.wait_for(_heartbeat_from(device.device_id))

    env.broker.stop()
    deadline = time.monotonic() + 10
    while session.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not session.connected
    for n in range(10):
        session.publish("events", json.dumps({"n": n}))
    time.sleep(0.5)
    env.broker.start(env.broker.port)  # persistence: the observer's subscription survives

    seen: set[int] = set()
    deadline = time.monotonic() + 20
    while len(seen) < 10 and time.monotonic() < deadline:
        _, payload = env.observer.wait_for(
            lambda t, _p: t == f"devices/{device.device_id}/events",
            timeout=deadline - time.monotonic(),
        )
        seen.add(int(str(_json(payload)["n"])))
    assert seen == set(range(10))


def test_broker_down_at_start_backs_off_then_connects(
    env: Env, session_for: list[MqttSession]
) -> None:
    """A TCP stand-in that accepts and hangs up counts the attempts; then the real broker."""
    device = env.enroll()
    port = free_port()
    attempts: list[float] = []
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.2)
    standing_in = True

    def accept() -> None:
        while standing_in:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            attempts.append(time.monotonic())
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    session = MqttSession(
        env.settings(device.device_id, port=port, reconnect_min=0.5, reconnect_max=2.0),
        device.identity(),
    )
    session_for.append(session)
    session.start()
    time.sleep(6)
    standing_in = False
    thread.join(5)
    listener.close()
    # Backoff 0.5, 1, 2, 2, ... with jitter in [d/2, d]: at most ~9 tries in 6 s,
    # where a tight loop would make thousands.
    assert 3 <= len(attempts) <= 10, attempts
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(gap >= 0.2 for gap in gaps), gaps
    assert session.connect_attempts == len(attempts)

    broker = Mosquitto(env.broker.directory.parent / "late-broker", env.fleet.server.data_dir)
    broker.start(port)
    try:
        assert session.wait_connected(10), broker.log()
        assert broker.connections_of(device.device_id)
    finally:
        assert session.stop(timeout=15)
        broker.stop()
