"""A scale-out fleet as separate hosts (see netns.py): the README's "Scale out" picture.

    device (10.10.0.100) ──> lb 10.10.0.2  HAProxy, TCP passthrough (docs/haproxy/fleet.cfg)
                               :8443 ──> fleet-a 10.10.0.11, fleet-b 10.10.0.12  (`fleet serve`)
                               :8883 ──> broker-a 10.10.0.21, broker-b 10.10.0.22
                                         (Mosquitto + fleet plugin + sidecar, `fleet-broker
                                         mosquitto init`)
    store 10.10.0.31: the shared store both fleet nodes and both sidecars use
                      (PostgreSQL: its synchronous standby at 10.10.0.32)

The store is a role with one start function per engine (``STORE_ENGINES``):
one Redis, or a PostgreSQL primary with a synchronous standby whose schema
``fleet db upgrade`` applies before any node starts; every node and sidecar
gets the URL naming both PostgreSQL hosts (``target_session_attrs=read-write``),
so after a promotion they find the new primary by themselves. Every node gets a
copy of one data directory (same CA, same server certificate naming the
balancer and both nodes).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from device_agent.est_client import ClientCertificate, EstClient
from device_agent.keystore import FileKey
from fleet.datadir import init_data_dir
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.pki.ca import CertifiedKey, certificate_to_pem
from tests.support.binaries import need_binary
from tests.support.factory import make_bootstrap, make_manufacturer, manifest_csv, write_pem
from tests.support.netns import Host, Network
from tests.support.postgres_replication import PostgresPair, start_postgres_pair

REPO = Path(__file__).resolve().parents[2]
HAPROXY_CONFIG = REPO / "docs/haproxy/fleet.cfg"
BIN = Path(sys.executable).parent
FLEET = str(BIN / "fleet")
FLEET_BROKER = str(BIN / "fleet-broker")

# The addresses of docs/haproxy/fleet.cfg (last octet in 10.10.0.0/24).
ADDRESSES = {
    "lb": 2,
    "fleet-a": 11,
    "fleet-b": 12,
    "broker-a": 21,
    "broker-b": 22,
    "device": 100,
}
STORE_OCTET = 31  # the store's host; a PostgreSQL standby takes the next address
EST_PORT = 8443
MQTT_PORT = 8883


# -- the store role: one start function per engine ------------------------------------


@dataclasses.dataclass(frozen=True)
class StoreRole:
    """What the store role started: the URL every node uses, and the PostgreSQL pair
    behind it (None on Redis) for a test that kills its primary."""

    url: str
    postgres: PostgresPair | None = None


def start_redis_store(net: Network, directory: Path) -> StoreRole:
    """The store role on Redis: one redis-server on the host "store"."""
    return StoreRole(start_redis(net.add_host("store", STORE_OCTET), directory))


def start_postgresql_store(net: Network, directory: Path) -> StoreRole:
    """The store role on PostgreSQL: a primary ("store") and a synchronous standby
    ("store-standby"), the URL naming both, and the schema applied with
    ``fleet db upgrade`` (run on the primary's host: `fleet serve` refuses a
    database without it)."""
    pair = start_postgres_pair(net, STORE_OCTET)
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "fleet.toml"
    config.write_text(f'[store]\nurl = "{pair.url}"\n')
    pair.primary.run([FLEET, "db", "upgrade", "--config", config])
    return StoreRole(pair.url, pair)


def start_redis(host: Host, directory: Path, *extra: str) -> str:
    """redis-server on ``host`` port 6379, persisting every write (AOF, fsync always);
    ``extra`` arguments are appended (e.g. ``--replicaof``)."""
    exe = need_binary("redis-server")
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "redis.log"
    proc = host.popen(
        [
            exe,
            "--bind", host.address,
            "--port", "6379",
            "--protected-mode", "no",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", directory,
            *extra,
        ],
        log=log,
    )  # fmt: skip
    host.wait_listening(6379, proc, log)
    return f"redis://{host.address}:6379/0"


def start_sqlite_store(net: Network, directory: Path) -> StoreRole:
    """The store role on SQLite: one file on the machine's own filesystem, which the
    namespaces share. Not a host of its own: valid for ONE fleet node only (the
    benchmark's single-machine baseline), never for two."""
    directory.mkdir(parents=True, exist_ok=True)
    return StoreRole(f"sqlite:///{directory / 'fleet.db'}")


STORE_ENGINES: dict[str, Callable[[Network, Path], StoreRole]] = {
    "sqlite": start_sqlite_store,
    "redis": start_redis_store,
    "postgresql": start_postgresql_store,
}


# -- fleet nodes -------------------------------------------------------------------------


@dataclasses.dataclass
class FleetNode:
    host: Host
    data_dir: Path
    store_url: str
    workers: int = 1
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.data_dir / "fleet.toml"

    @property
    def log(self) -> Path:
        return self.data_dir / "serve.log"

    @property
    def base(self) -> str:
        return f"https://{self.host.address}:{EST_PORT}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "FLEET_STORE_URL": self.store_url, "FLEET_CONFIG": str(self.config)}

    def start(self) -> None:
        self.proc = self.host.popen(
            [
                sys.executable, "-m", "fleet", "serve",
                "--config", self.config,
                "--listen", f"{self.host.address}:{EST_PORT}",
                "--workers", str(self.workers),
            ],
            log=self.log,
            env=self.env,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self.healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"fleet serve on {self.host.name} exited:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"fleet serve on {self.host.name} never healthy")
            time.sleep(0.1)

    def healthy(self) -> bool:
        return fetch(self.host, f"{self.base}/healthz", self.data_dir / "ca/root.pem")[0] == 200

    def kill(self) -> None:
        """kill -9: no goodbye, in-flight requests die with the process."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def fleet(self, *args: str | Path) -> str:
        """Run the `fleet` CLI on this node (its store); stdout."""
        return self.host.run([FLEET, *args], env=self.env).stdout.decode()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def fetch(
    client: Host,
    url: str,
    cafile: Path,
    *,
    data: bytes | None = None,
    content_type: str = "",
    token: str = "",
) -> tuple[int, bytes]:
    """(status, body) of one HTTPS request made from ``client`` (with an admin bearer
    ``token`` if given); status 0 if unreachable."""

    def go() -> tuple[int, bytes]:
        context = ssl.create_default_context(cafile=str(cafile))
        headers = {"Content-Type": content_type} if content_type else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:  # noqa: S310
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except OSError:
            return 0, b""

    return client.call(go)


# -- broker nodes ------------------------------------------------------------------------


@dataclasses.dataclass
class BrokerHost:
    host: Host
    directory: Path
    broker: subprocess.Popen[bytes] | None = None
    sidecar: subprocess.Popen[bytes] | None = None

    @property
    def settings(self) -> Path:
        return self.directory / "broker.toml"

    @property
    def broker_log(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def sidecar_log(self) -> Path:
        return self.directory / "sidecar.log"

    def start(self) -> None:
        """The README's three commands, run on this host."""
        exe = need_binary("mosquitto")
        self.host.run([FLEET_BROKER, "mosquitto", "sync", "--config", self.settings, "--once"])
        self.broker = self.host.popen(
            [exe, "-c", self.directory / "mosquitto.conf"], log=self.broker_log
        )
        self.host.wait_listening(MQTT_PORT, self.broker, self.broker_log)
        self.sidecar = self.host.popen(
            [FLEET_BROKER, "mosquitto", "sync", "--config", self.settings], log=self.sidecar_log
        )
        wait_log(self.sidecar_log, "resynced the plugin", self.sidecar)

    def holds(self, device_id: str) -> bool:
        """Whether the broker log shows ``device_id`` connected here."""
        text = self.broker_log.read_text(errors="replace") if self.broker_log.exists() else ""
        return f" as {device_id} " in text


def wait_log(
    path: Path, text: str, proc: subprocess.Popen[bytes] | None, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited while waiting for {text!r}:\n{content[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} never said {text!r}:\n{content[-4000:]}")
        time.sleep(0.05)


# -- the whole picture -------------------------------------------------------------------


@dataclasses.dataclass
class Cluster:
    net: Network
    work: Path
    store: StoreRole
    nodes: dict[str, FleetNode]
    brokers: dict[str, BrokerHost]
    lb: Host
    device: Host
    manufacturer: CertifiedKey
    balancer: subprocess.Popen[bytes] | None = None

    @property
    def root_pem(self) -> Path:
        return self.nodes["fleet-a"].data_dir / "ca/root.pem"

    @property
    def issuing_pem(self) -> Path:
        return self.nodes["fleet-a"].data_dir / "ca/issuing.pem"

    @property
    def balancer_log(self) -> Path:
        return self.work / "lb/haproxy.log"

    @property
    def est_url(self) -> str:
        return f"https://{self.lb.address}:{EST_PORT}"

    def add_devices(self, names: list[str]) -> dict[str, tuple[Path, Path]]:
        """Bootstrap certificates for ``names`` and their manifest, imported on node A."""
        now = dt.datetime.now(dt.UTC)
        boot_dir = self.work / "bootstrap"
        boot_dir.mkdir(exist_ok=True)
        out: dict[str, tuple[Path, Path]] = {}
        rows = []
        for name in names:
            pair = make_bootstrap(self.manufacturer, name, now=now)
            out[name] = write_pem(boot_dir / name, pair)
            rows.append((name, sha256_fingerprint(pair.certificate), "m1", "b1"))
        manifest = self.work / f"manifest-{names[0]}.csv"
        manifest.write_text(manifest_csv(rows))
        self.nodes["fleet-a"].fleet("manifest", "import", manifest)
        return out


def build_cluster(net: Network, work: Path, *, engine: str = "redis", workers: int = 1) -> Cluster:
    """Every host of the picture, started; torn down with ``net``."""
    hosts = {name: net.add_host(name, octet) for name, octet in ADDRESSES.items()}
    store = STORE_ENGINES[engine](net, work / "store")
    store_url = store.url

    names = [hosts[n].address for n in ("lb", "fleet-a", "fleet-b")]
    seed = init_data_dir(work / "fleet-a", now=dt.datetime.now(dt.UTC), server_names=names)
    shutil.copytree(seed.data_dir, work / "fleet-b", symlinks=True)
    nodes = {
        name: FleetNode(hosts[name], work / name, store_url, workers=workers)
        for name in ("fleet-a", "fleet-b")
    }

    brokers = {}
    for name in ("broker-a", "broker-b"):
        directory = work / name
        brokers[name] = BrokerHost(hosts[name], directory)
        subprocess.run(
            [
                FLEET_BROKER, "mosquitto", "init",
                "--fleet-data", seed.data_dir,
                "--out", directory,
                "--listen", f"{hosts[name].address}:{MQTT_PORT}",
                "--store-url", store_url,
                "--server-name", hosts["lb"].address,
                "--server-name", hosts[name].address,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )  # fmt: skip
        # One session per device across the broker nodes: each names itself and
        # its peer, in the lines `mosquitto init` leaves commented for that.
        peer = hosts["broker-b" if name == "broker-a" else "broker-a"].address
        settings = directory / "broker.toml"
        text = settings.read_text()
        for commented, line in (
            ('# node_name = "mqtt-a"', f'node_name = "{name}"'),
            ('# peers = ["10.0.0.12:8883"]', f'peers = ["{peer}:{MQTT_PORT}"]'),
        ):
            assert commented in text, f"`mosquitto init` no longer writes {commented!r}"
            text = text.replace(commented, line, 1)
        settings.write_text(text)
    # The plugin pins the sidecar certificate, and a peer link presents the other
    # node's: every node shares the first node's sidecar certificate. Then each
    # node's mosquitto.conf is written again from broker.toml (the pin, and the
    # plugin's session announcements that `peers` turns on), as the README says
    # ("Several broker nodes").
    for file in ("sidecar.pem", "sidecar.key"):
        shutil.copy2(work / "broker-a" / file, work / "broker-b" / file)
    for name in ("broker-a", "broker-b"):
        conf = subprocess.run(
            [FLEET_BROKER, "mosquitto", "config", "--config", work / name / "broker.toml"],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        (work / name / "mosquitto.conf").write_text(conf.stdout)

    for node in nodes.values():
        node.start()
    manufacturer = make_manufacturer("Acme", now=dt.datetime.now(dt.UTC))
    maker_pem = work / "acme-ca.pem"
    write_pem(work / "acme-ca", manufacturer)
    nodes["fleet-a"].fleet("trust", "add-manufacturer", maker_pem)
    for broker in brokers.values():
        broker.start()

    cluster = Cluster(net, work, store, nodes, brokers, hosts["lb"], hosts["device"], manufacturer)
    cluster.balancer = start_haproxy(hosts["lb"], work / "lb")
    return cluster


def start_haproxy(host: Host, directory: Path) -> subprocess.Popen[bytes]:
    """HAProxy with docs/haproxy/fleet.cfg as it is, in the foreground (-db)."""
    exe = need_binary("haproxy")
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "haproxy.log"
    proc = host.popen([exe, "-db", "-f", HAPROXY_CONFIG], log=log)
    host.wait_listening(EST_PORT, proc, log)
    host.wait_listening(MQTT_PORT, proc, log)
    return proc


# -- devices (the agent's EST client, paho for MQTT), run on the device host ---------------


@dataclasses.dataclass(frozen=True)
class Enrolled:
    device_id: str
    cert: Path
    key: Path
    serial: int


def enroll(
    cluster: Cluster,
    device_id: str,
    bootstrap: tuple[Path, Path],
    key: ec.EllipticCurvePrivateKey | None = None,
) -> Enrolled:
    """First enrollment of ``device_id`` through the balancer, with the device agent's
    EST client and ``key`` (a fresh P-256 key by default), from the device host."""
    root = x509.load_pem_x509_certificate(cluster.root_pem.read_bytes())
    directory = cluster.work / "devices"
    directory.mkdir(exist_ok=True)
    key = key or ec.generate_private_key(ec.SECP256R1())
    cert_path, key_path = directory / f"{device_id}.pem", directory / f"{device_id}.key"
    credential = ClientCertificate(bootstrap[0], FileKey.open(bootstrap[1]))
    csr = FileKey(device_id, key_path, key).sign_csr(
        x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    )

    def go() -> x509.Certificate:
        return EstClient(cluster.est_url, root, timeout=10).simpleenroll(csr, credential)

    cert = cluster.device.call(go)
    write_pem(directory / device_id, CertifiedKey(cert, key))
    assert cert_path.read_bytes() == certificate_to_pem(cert)
    return Enrolled(device_id, cert_path, key_path, cert.serial_number)
