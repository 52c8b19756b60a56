"""The embedded broker for tests: a real `EmbeddedBroker` on its own event loop thread,
plus MQTT clients (paho-mqtt, and a raw TLS socket for protocol-level attacks).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import queue
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker_plugins.amqtt.runner import EmbeddedBroker
from broker_plugins.amqtt.settings import AmqttSettings
from firmware_sim.lightmqtt import mqtt_string, remaining_length
from tests.support.fleet_server import FleetServer
from tests.support.ports import free_port

T = TypeVar("T")

# CONNACK 5 ("not authorized") of MQTT 3.1.1, as paho-mqtt 2 reports it (a v5 reason code).
NOT_AUTHORIZED = 135


def broker_files(server: FleetServer, directory: Path) -> tuple[Path, Path, Path]:
    """(server cert, server key, fleet CA bundle) from a fleet data directory."""
    bundle = directory / "fleet-ca.pem"
    bundle.write_bytes(server.issuing_pem.read_bytes() + server.root_pem.read_bytes())
    tls = server.data_dir / "tls"
    return tls / "server.pem", tls / "server.key", bundle


def broker_settings(server: FleetServer, directory: Path, **overrides: Any) -> AmqttSettings:
    cert, key, bundle = broker_files(server, directory)
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": free_port(),
        "tls_cert": cert,
        "tls_key": key,
        "fleet_ca": bundle,
        "store_url": f"sqlite:///{server.data_dir / 'fleet.db'}",
    }
    values.update(overrides)
    return AmqttSettings(**values)


class BrokerThread:
    """An EmbeddedBroker served by a private event loop in a daemon thread."""

    def __init__(self, settings: AmqttSettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.broker = EmbeddedBroker(settings)

    def start(self) -> BrokerThread:
        self.thread.start()
        self.call(self.broker.start)
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self.broker.stop, timeout=20)
        with contextlib.suppress(Exception):
            self.call(_cancel_leftovers, timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float = 15) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(_wrap(fn), self.loop)
        return future.result(timeout)

    @property
    def port(self) -> int:
        return self.broker.port

    def refused(self, reason: str) -> float:
        value = self.broker.metrics.registry.get_sample_value(
            "fleet_broker_connects_refused_total", {"reason": reason}
        )
        return value or 0.0


async def _cancel_leftovers() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _wrap(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


@contextlib.contextmanager
def running_broker(settings: AmqttSettings) -> Iterator[BrokerThread]:
    broker = BrokerThread(settings).start()
    try:
        yield broker
    finally:
        broker.stop()


# -- clients -----------------------------------------------------------------------------


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


class Device:
    """A paho-mqtt client with blocking helpers; messages land in ``messages``."""

    def __init__(
        self,
        port: int,
        client_id: str,
        ctx: ssl.SSLContext,
        *,
        clean_session: bool = True,
        keepalive: int = 30,
    ) -> None:
        self.port = port
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        self.client.tls_set_context(ctx)
        self.client.reconnect_delay_set(60, 120)  # never reconnect on its own in a test
        self.keepalive = keepalive
        self.connack: queue.Queue[int] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.disconnected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connack.put(int(rc.value) if hasattr(rc, "value") else int(rc))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.disconnected.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.messages.put((message.topic, bytes(message.payload)))

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, codes: Any, props: Any) -> None:
        self.subacks.put([int(c.value) for c in codes])

    def connect(self, timeout: float = 5) -> int | None:
        """CONNACK return code, or None if the connection ended without one."""
        self.disconnected.clear()
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=self.keepalive)
        except (OSError, ssl.SSLError):
            return None
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                return self.connack.get(timeout=0.05)
            if self.disconnected.is_set():
                return None
        return None

    def subscribe(self, topic_filter: str, qos: int = 1) -> list[int]:
        self.client.subscribe(topic_filter, qos)
        return self.subacks.get(timeout=5)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            info.wait_for_publish(timeout=5)

    def receive(self, timeout: float = 2) -> tuple[str, bytes] | None:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


def expect_refused(device: Device) -> None:
    rc = device.connect()
    device.close()
    assert rc != 0, "the broker admitted a connection it must refuse"


# -- raw MQTT over TLS (for attacks paho will not make) -------------------------------------


def raw_connect(
    port: int,
    ctx: ssl.SSLContext,
    client_id: str,
    *,
    keepalive: int = 0,
    clean_session: bool = True,
    will: tuple[str, bytes] | None = None,
    will_retain: bool = False,
) -> tuple[ssl.SSLSocket, int | None]:
    """A TLS socket after CONNECT; returns it and the CONNACK code (None if none came)."""
    sock = ctx.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="127.0.0.1"
    )
    flags = 0x02 if clean_session else 0
    payload = mqtt_string(client_id)
    if will is not None:
        flags |= 0x04 | 0x08 | (0x20 if will_retain else 0)  # will, QoS 1, retain
        payload += mqtt_string(will[0]) + mqtt_string(will[1])
    variable = mqtt_string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body = variable + payload
    sock.sendall(b"\x10" + remaining_length(len(body)) + body)
    try:
        data = sock.recv(4)
    except (OSError, ssl.SSLError):
        return sock, None
    if len(data) < 4 or data[0] != 0x20:
        return sock, None
    return sock, data[3]


def wait_closed(sock: ssl.SSLSocket, timeout: float) -> float | None:
    """Seconds until the peer closed ``sock`` (None if still open after ``timeout``)."""
    start = time.monotonic()
    sock.settimeout(0.05)
    while time.monotonic() - start < timeout:
        try:
            if sock.recv(1024) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except (OSError, ssl.SSLError):
            return time.monotonic() - start
    return None


# -- certificates the fleet server would never issue ----------------------------------------


def mint_client_cert(
    directory: Path,
    name: str,
    *,
    common_name: str,
    issuer_cert: Path | x509.Certificate,
    issuer_key: Path | ec.EllipticCurvePrivateKey,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    client_auth: bool = True,
) -> tuple[Path, Path]:
    """A client certificate signed by any key we hold. Returns (cert+issuer PEM, key PEM)."""
    if isinstance(issuer_cert, Path):
        issuer_cert = x509.load_pem_x509_certificate(issuer_cert.read_bytes())
    if isinstance(issuer_key, Path):
        loaded = serialization.load_pem_private_key(issuer_key.read_bytes(), None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        issuer_key = loaded
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if client_auth:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path = directory / f"{name}.pem"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + issuer_cert.public_bytes(serialization.Encoding.PEM)
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A throwaway self-signed CA (a rogue one)."""
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


# -- a fleet server, its devices and a broker that follows its store ------------------------


class AmqttEnv:
    def __init__(self, fleet: Any, work: Path) -> None:
        from tests.integration.est.conftest import Fleet

        assert isinstance(fleet, Fleet)
        self.fleet = fleet
        self.work = work
        self.ca = fleet.server.root_pem
        self.broker: BrokerThread | None = None

    def settings(self, **overrides: Any) -> AmqttSettings:
        return broker_settings(self.fleet.server, self.work, **overrides)

    def start_broker(self, **overrides: Any) -> BrokerThread:
        self.broker = BrokerThread(self.settings(**overrides)).start()
        return self.broker

    def stop_broker(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def enroll(self, device_id: str | None = None) -> tuple[str, Path, Path]:
        """A device enrolled over EST by the real server: (device id, cert PEM, key)."""
        device = self.fleet.new_device(device_id=device_id)
        key, csr = self.fleet.csr(device.device_id)
        cert = self.fleet.issued(self.fleet.enroll(device, csr), device.device_id)
        return device.device_id, cert, key

    def device(self, client_id: str, cert: Path | None, key: Path | None, **kwargs: Any) -> Device:
        assert self.broker is not None
        return Device(self.broker.port, client_id, client_context(self.ca, cert, key), **kwargs)

    def connected(self, client_id: str, cert: Path, key: Path, **kwargs: Any) -> Device:
        device = self.device(client_id, cert, key, **kwargs)
        assert device.connect() == 0
        return device

    def revoke_device(self, device_id: str) -> int:
        from fleet.records import RevocationReason

        event = self.fleet.server.store(
            lambda s: s.revoke_device(
                device_id, RevocationReason.KEY_COMPROMISE, dt.datetime.now(dt.UTC)
            )
        )
        assert event is not None
        return event.seq

    def issuing(self, name: str, common_name: str, **kwargs: Any) -> tuple[Path, Path]:
        """A certificate signed directly with the fleet issuing CA key (never recorded)."""
        ca_dir = self.fleet.server.data_dir / "ca"
        return mint_client_cert(
            self.work,
            name,
            common_name=common_name,
            issuer_cert=ca_dir / "issuing.pem",
            issuer_key=ca_dir / "issuing.key",
            **kwargs,
        )


@contextlib.contextmanager
def amqtt_env(base: Path, **broker_overrides: Any) -> Iterator[AmqttEnv]:
    from tests.integration.est.conftest import running_fleet

    with running_fleet(base) as fleet:
        env = AmqttEnv(fleet, fleet.work)
        env.start_broker(**broker_overrides)
        try:
            yield env
        finally:
            env.stop_broker()


# -- `fleet-broker amqtt` as its own process ----------------------------------------------


class BrokerProcess:
    """`fleet-broker amqtt --config broker.toml`, a child process of the test (ours, by PID).

    The config sits in ``directory``, so the revocation snapshot file is
    ``directory/revocations.snapshot`` (the default, beside broker.toml).
    """

    def __init__(self, server: FleetServer, directory: Path, store_url: str) -> None:
        cert, key, bundle = broker_files(server, directory)
        self.directory = directory
        self.port = free_port()
        self.metrics_port = free_port()
        self.config = directory / "broker.toml"
        self.config.write_text(
            "[listener]\n"
            f'address = "127.0.0.1:{self.port}"\n'
            f'tls_cert = "{cert}"\n'
            f'tls_key = "{key}"\n'
            f'fleet_ca = "{bundle}"\n'
            "[store]\n"
            f'url = "{store_url}"\n'
            "[metrics]\n"
            f'address = "127.0.0.1:{self.metrics_port}"\n'
        )
        self.log = directory / "broker.log"
        self.proc: Any = None

    @property
    def snapshot_file(self) -> Path:
        return self.directory / "revocations.snapshot"

    def start(self, timeout: float = 20) -> BrokerProcess:
        import subprocess
        import sys

        exe = Path(sys.executable).with_name("fleet-broker")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(exe), "amqtt", "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while self.metric("fleet_broker_revocation_usable") is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fleet-broker amqtt exited:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"fleet-broker amqtt did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        return self

    def metric(self, name: str) -> float | None:
        """A sample without labels from the broker's /metrics (None if it does not answer)."""
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                text = response.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return float(value)
        return None

    def kill(self) -> None:
        """SIGKILL: no clean stop, nothing flushed at exit."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        from tests.support.process import stop_process

        proc, self.proc = self.proc, None
        stop_process(proc)
