"""A real Mosquitto 2.0 with the fleet plugin and its sidecar, and paho-mqtt test clients.

Everything is started from the files the product generates: the plugin from
`fleet-broker mosquitto build`, mosquitto.conf from `fleet-broker mosquitto
config`, the sidecar from `fleet-broker mosquitto sync`. Processes are ours and
stopped by their own PID.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import ipaddress
import re
import ssl
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fleet.pki.ca import (
    CertifiedKey,
    authority_key_identifier,
    create_server_certificate,
    load_certificates_pem,
)
from fleet.pki.keys import PrivateKey, load_private_key_pem
from tests.support.binaries import need_binary
from tests.support.factory import write_pem
from tests.support.ports import free_port, listening
from tests.support.process import stop_process

FLEET_BROKER = str(Path(sys.executable).with_name("fleet-broker"))


def fleet_broker(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the `fleet-broker` CLI; returns the finished process."""
    result = subprocess.run(
        [FLEET_BROKER, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"fleet-broker {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def load_ca(data_dir: Path, stem: str) -> CertifiedKey:
    """A CA of a fleet data directory (ca/<stem>.pem + .key)."""
    cert = load_certificates_pem((data_dir / "ca" / f"{stem}.pem").read_bytes())[0]
    key = load_private_key_pem((data_dir / "ca" / f"{stem}.key").read_bytes())
    return CertifiedKey(cert, key)


def broker_server_cert(data_dir: Path, out: Path) -> tuple[Path, Path]:
    """The broker's TLS server certificate, signed by the fleet root (devices trust it)."""
    pair = create_server_certificate(
        load_ca(data_dir, "root"),
        common_name="127.0.0.1",
        dns_names=["localhost"],
        ip_addresses=[ipaddress.ip_address("127.0.0.1")],
        now=dt.datetime.now(dt.UTC),
    )
    return write_pem(out, pair)


@dataclasses.dataclass
class BrokerNode:
    """Settings file, generated mosquitto.conf, the broker and the sidecar of one node."""

    directory: Path
    settings: Path
    port: int
    conf: Path = dataclasses.field(init=False)
    broker: subprocess.Popen[bytes] | None = None
    sidecar: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.conf = self.directory / "mosquitto.conf"

    @property
    def broker_log(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def sidecar_log(self) -> Path:
        return self.directory / "sidecar.log"

    def configure(self) -> None:
        self.conf.write_text(fleet_broker("mosquitto", "config", "--config", self.settings).stdout)

    def start_broker(self) -> None:
        exe = need_binary("mosquitto")
        with self.broker_log.open("ab") as log:
            self.broker = subprocess.Popen(
                [exe, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while not listening(self.port):
            if self.broker.poll() is not None:
                raise RuntimeError(f"mosquitto exited early:\n{self.broker_log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto is not listening:\n{self.broker_log.read_text()}")
            time.sleep(0.02)

    def stop_broker(self) -> None:
        _stop(self.broker)
        self.broker = None

    def start_sidecar(self, *, wait: bool = True) -> None:
        mark = _size(self.sidecar_log)
        with self.sidecar_log.open("ab") as log:
            self.sidecar = subprocess.Popen(
                [FLEET_BROKER, "mosquitto", "sync", "--config", str(self.settings)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_sidecar_log("resynced the plugin", after=mark)

    def stop_sidecar(self) -> None:
        _stop(self.sidecar)
        self.sidecar = None

    def stop(self) -> None:
        self.stop_sidecar()
        self.stop_broker()

    def wait_sidecar_log(self, text: str, *, after: int = 0, timeout: float = 15) -> None:
        _wait_for(self.sidecar_log, text, after, timeout, self.sidecar)

    def wait_broker_log(self, pattern: str, *, after: int = 0, timeout: float = 5) -> str:
        """The first broker log line after offset ``after`` matching ``pattern``."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            text = self.broker_log.read_bytes()[after:].decode(errors="replace")
            for line in text.splitlines():
                if regex.search(line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no broker log line matches {pattern!r}:\n{text}")
            time.sleep(0.02)

    def log_mark(self) -> int:
        return _size(self.broker_log)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _wait_for(
    path: Path, text: str, after: int, timeout: float, proc: subprocess.Popen[bytes] | None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_bytes()[after:].decode(errors="replace") if path.exists() else ""
        if text in content:
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited while waiting for {text!r}:\n{content}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} never said {text!r}:\n{content}")
        time.sleep(0.02)


_stop = stop_process


def write_settings(
    directory: Path,
    *,
    data_dir: Path,
    store_url: str,
    plugin: Path,
    sidecar_cert: Path,
    sidecar_key: Path,
    crl_url: str = "",
    extra: str = "",
    issuing_ca: Path | None = None,
    port: int | None = None,
) -> BrokerNode:
    """A settings file for a node on a loopback port (free unless given), and its mosquitto.conf."""
    directory.mkdir(parents=True, exist_ok=True)
    server_cert, server_key = broker_server_cert(data_dir, directory / "broker")
    port = port or free_port()
    settings = directory / "broker.toml"
    settings.write_text(
        f"""[store]
url = "{store_url}"

[mosquitto]
listen = "127.0.0.1:{port}"
server_cert = "{server_cert}"
server_key = "{server_key}"
root_ca = "{data_dir / "ca/root.pem"}"
issuing_ca = "{issuing_ca or data_dir / "ca/issuing.pem"}"
plugin = "{plugin}"
sidecar_cert = "{sidecar_cert}"
sidecar_key = "{sidecar_key}"
crl_url = "{crl_url}"
user = "{getpass.getuser()}"
heartbeat_seconds = 0.5
{extra}
"""
    )
    node = BrokerNode(directory, settings, port)
    node.configure()
    return node


@dataclasses.dataclass(frozen=True)
class BrokerNodes:
    """Broker nodes of one fleet: its data directory and store, one plugin build, and
    one sidecar certificate (issued from the fleet's issuing CA) shared by every node."""

    data_dir: Path
    store_url: str
    plugin: Path
    sidecar_cert: Path
    sidecar_key: Path

    @classmethod
    def issue(
        cls, data_dir: Path, base: Path, plugin: Path, store_url: str | None = None
    ) -> BrokerNodes:
        """Issue the sidecar certificate into ``base``; the store defaults to the data
        directory's SQLite database (what `fleet serve` on it uses)."""
        sidecar_cert, sidecar_key = base / "sidecar.pem", base / "sidecar.key"
        fleet_broker(
            "mosquitto", "sidecar-cert",
            "--issuing-cert", data_dir / "ca/issuing.pem",
            "--issuing-key", data_dir / "ca/issuing.key",
            "--out-cert", sidecar_cert,
            "--out-key", sidecar_key,
        )  # fmt: skip
        store_url = store_url or f"sqlite:///{data_dir / 'fleet.db'}"
        return cls(data_dir, store_url, plugin, sidecar_cert, sidecar_key)

    def node(
        self,
        directory: Path,
        *,
        crl_url: str = "",
        extra: str = "",
        issuing_ca: Path | None = None,
        port: int | None = None,
    ) -> BrokerNode:
        """A node's settings and mosquitto.conf in ``directory`` (see write_settings)."""
        return write_settings(
            directory,
            data_dir=self.data_dir,
            store_url=self.store_url,
            plugin=self.plugin,
            sidecar_cert=self.sidecar_cert,
            sidecar_key=self.sidecar_key,
            crl_url=crl_url,
            extra=extra,
            issuing_ca=issuing_ca,
            port=port,
        )


# -- MQTT clients --------------------------------------------------------------------


class Session:
    """One paho-mqtt client over mutual TLS, its network loop in a thread."""

    def __init__(
        self,
        port: int,
        *,
        ca: Path,
        cert: Path | None,
        key: Path | None,
        client_id: str,
        username: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.client_id = client_id
        self.host = host
        self.connack: ReasonCode | None = None
        self.connected = threading.Event()
        self.done = threading.Event()  # CONNACK received or the connection failed
        self.disconnected = threading.Event()
        self.disconnected_at = 0.0
        self.messages: list[tuple[str, bytes]] = []
        self.granted: dict[int, list[ReasonCode]] = {}
        self._subscribed = threading.Condition()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
            # Tests reconnect explicitly: a kicked session that came back by itself
            # would be a second connection the test never made.
            reconnect_on_failure=False,
        )
        context = ssl.create_default_context(cafile=str(ca))
        if cert is not None and key is not None:
            context.load_cert_chain(str(cert), str(key))
        client.tls_set_context(context)
        if username is not None:
            client.username_pw_set(username, "ignored")
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self.client = client
        self.port = port

    def open(self, timeout: float = 5) -> bool:
        """Connect; True when CONNACK accepted us within ``timeout``."""
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except (OSError, ssl.SSLError):
            self.done.set()
            return False
        self.client.loop_start()
        self.done.wait(timeout)
        # A TLS 1.3 server refuses the client certificate after the client's
        # handshake is done: the refusal arrives as a closed connection.
        return self.connected.is_set() and not self.disconnected.is_set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connack = reason_code
        if not reason_code.is_failure:
            self.connected.set()
        else:
            client.disconnect()
        self.done.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self.disconnected.is_set():
            self.disconnected_at = time.monotonic()
        self.disconnected.set()
        self.done.set()
        # No automatic reconnection: tests reconnect explicitly.
        client.disconnect()

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        self.done.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.messages.append((msg.topic, bytes(msg.payload)))

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._subscribed:
            self.granted[mid] = reason_codes
            self._subscribed.notify_all()

    def subscribe(self, topic: str, timeout: float = 5) -> bool:
        """Subscribe (QoS 1); True if the broker granted it."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        with self._subscribed:
            self._subscribed.wait_for(lambda: mid in self.granted, timeout)
        codes = self.granted.get(mid)
        assert codes is not None, f"no SUBACK for {topic}"
        return not codes[0].is_failure

    def publish(self, topic: str, payload: bytes, timeout: float = 5) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout)


# -- certificates the fleet server would never issue (attacks, CA mistakes) ---------


def mint_client_cert(
    directory: Path,
    name: str,
    *,
    common_name: str,
    issuer: CertifiedKey,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key: PrivateKey | None = None,
    client_auth: bool = True,
    ca: bool = False,
) -> tuple[Path, Path]:
    """A certificate signed by ``issuer`` (with AKI, like fleet's). (cert, key).

    By default a P-256 clientAuth end-entity certificate; ``key``, ``client_auth=False``
    (no EKU extension at all) and ``ca=True`` (basicConstraints cA) make the
    certificates a CA mistake or an attacker would present.
    """
    now = dt.datetime.now(dt.UTC)
    key = key or ec.generate_private_key(ec.SECP256R1())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # over-long CNs are one of the attacks
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name, _validate=False)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(authority_key_identifier(issuer.certificate), critical=False)
    )
    if client_auth:
        eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
        builder = builder.add_extension(eku, critical=False)
    cert = builder.sign(issuer.private_key, hashes.SHA256())
    cert_path, key_path = write_pem(directory / f"{name}.pem", CertifiedKey(cert, key))
    # Send the issuer along, as an attacker would: TLS then builds the chain to the root.
    with cert_path.open("ab") as chain:
        chain.write(issuer.certificate.public_bytes(Encoding.PEM))
    return cert_path, key_path


def rogue_ca(common_name: str) -> CertifiedKey:
    """A self-signed CA nobody trusts."""
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(cert, key)
