"""Operating both brokers: TLS as strict as the EST server, prompt stops, JSON logs.

One fleet data directory (no EST server needed) and its SQLite store; a real
Mosquitto with the plugin and sidecar, and `fleet-broker amqtt` as its own
process. Third-party clients (`openssl s_client`) check what the listeners offer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.amqtt_broker import BrokerProcess
from tests.support.binaries import need_binary
from tests.support.fleet_server import FleetServer, make_data_dir
from tests.support.mosquitto_broker import BrokerNode, fleet_broker, write_settings
from tests.support.openssl import tls_handshake

pytestmark = [
    pytest.mark.needs_binary("mosquitto"),
    pytest.mark.needs_binary("gcc"),
    pytest.mark.needs_binary("openssl"),
]


@dataclasses.dataclass
class Brokers:
    data: Path
    mosquitto: BrokerNode
    amqtt: BrokerProcess
    client_cert: Path  # the sidecar's: any certificate the TLS layers accept
    client_key: Path

    @property
    def root(self) -> Path:
        return self.data / "ca/root.pem"

    def ports(self) -> dict[str, int]:
        return {"mosquitto": self.mosquitto.port, "amqtt": self.amqtt.port}


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Brokers]:
    need_binary("mosquitto")
    base = tmp_path_factory.mktemp("brokerops")
    config = make_data_dir(base / "fleet-data")
    data = config.parent
    plugin = Path(fleet_broker("mosquitto", "build", "--out", base / "plugin").stdout.strip())
    sidecar_cert, sidecar_key = base / "sidecar.pem", base / "sidecar.key"
    fleet_broker(
        "mosquitto", "sidecar-cert",
        "--issuing-cert", data / "ca/issuing.pem", "--issuing-key", data / "ca/issuing.key",
        "--out-cert", sidecar_cert, "--out-key", sidecar_key,
    )  # fmt: skip
    store_url = f"sqlite:///{data / 'fleet.db'}"
    node = write_settings(
        base / "mosquitto",
        data_dir=data,
        store_url=store_url,
        plugin=plugin,
        sidecar_cert=sidecar_cert,
        sidecar_key=sidecar_key,
    )
    (base / "amqtt").mkdir()
    amqtt = BrokerProcess(FleetServer(config), base / "amqtt", store_url)
    try:
        fleet_broker("mosquitto", "sync", "--config", node.settings, "--once")
        node.start_broker()
        node.start_sidecar()
        amqtt.start()
        yield Brokers(data, node, amqtt, sidecar_cert, sidecar_key)
    finally:
        amqtt.stop()
        node.stop()


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_tls_offers_forward_secret_aead_only(brokers: Brokers, broker: str) -> None:
    """In TLS 1.2 a CBC suite is refused and an AEAD one accepted; TLS 1.1 is refused."""
    port = brokers.ports()[broker]

    def handshake(*args: str) -> tuple[bool, str]:
        return tls_handshake(
            port, ca=brokers.root, cert=brokers.client_cert, key=brokers.client_key, args=args
        )

    ok, out = handshake("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert ok, out
    assert "ECDHE-ECDSA-AES128-GCM-SHA256" in out
    ok, out = handshake("-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305")
    assert ok, out
    for cbc in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA256"):
        ok, out = handshake("-tls1_2", "-cipher", cbc)
        assert not ok, f"{broker} accepted the CBC suite {cbc}:\n{out}"
    # The client offers TLS 1.1 for real (OpenSSL 3's default level would refuse it itself).
    ok, out = handshake("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert not ok, f"{broker} accepted TLS 1.1:\n{out}"
    ok, out = handshake("-tls1_3")
    assert ok, out
