"""Operating both brokers: TLS as strict as the EST server, prompt stops, JSON logs.

One fleet data directory (no EST server needed) and its SQLite store; a real
Mosquitto with the plugin and sidecar, and `fleet-broker amqtt` as its own
process. Third-party clients (`openssl s_client`) check what the listeners offer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.amqtt_broker import BrokerProcess
from tests.support.binaries import need_binary
from tests.support.fleet_server import FleetServer, make_data_dir
from tests.support.mosquitto_broker import (
    BrokerNode,
    BrokerNodes,
    Session,
    fleet_broker,
    load_ca,
    mint_client_cert,
)
from tests.support.openssl import tls_handshake
from tests.support.ports import free_port

# Seconds from SIGTERM to exit. Unloaded it takes ~0.1 s; the bound is what a
# regression would blow through (a CRL fetch hanging until its 10 s timeout, a
# reconnect back-off), with room for a loaded 2-core CI machine (0.5 s was not).
STOP_DEADLINE = 3.0

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
    metrics: str  # the sidecar's /metrics URL
    server: FleetServer  # serves the CRL only

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
    nodes = BrokerNodes.issue(data, base, plugin)
    store_url = nodes.store_url
    server = FleetServer(config).start()
    metrics_port = free_port()
    node = nodes.node(
        base / "mosquitto",
        crl_url=f"{server.base}/crl",
        extra=f'metrics_address = "127.0.0.1:{metrics_port}"',
    )
    (base / "amqtt").mkdir()
    amqtt = BrokerProcess(FleetServer(config), base / "amqtt", store_url)
    try:
        fleet_broker("mosquitto", "sync", "--config", node.settings, "--once")
        node.start_broker()
        node.start_sidecar()
        amqtt.start()
        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        yield Brokers(data, node, amqtt, nodes.sidecar_cert, nodes.sidecar_key, metrics, server)
    finally:
        amqtt.stop()
        node.stop()
        server.stop()


def _json_lines(text: str) -> list[dict[str, object]]:
    """Every non-empty line as a JSON object (fails on a line that is not one)."""
    lines = []
    for line in text.splitlines():
        if line.strip():
            try:
                entry = json.loads(line)
            except ValueError as exc:
                raise AssertionError(f"not a JSON log line: {line!r}") from exc
            assert isinstance(entry, dict), line
            lines.append(entry)
    return lines


def _stop_timed(proc: subprocess.Popen[bytes]) -> float:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    return time.monotonic() - started


def _metric(url: str, name: str) -> float | None:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return float(value)
    return None


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


def test_sidecar_logs_json_and_reports_the_crl_age(brokers: Brokers) -> None:
    """The CRL's age is known as soon as one is installed, even if the CRL server is away."""
    node = brokers.mosquitto
    # `sync --once` installed the CRL before the broker started. Without the CRL
    # server, a restarted sidecar cannot fetch it again, but it is installed.
    assert (node.directory / "state/fleet.crl").is_file()
    brokers.server.stop()
    node.stop_sidecar()
    node.start_sidecar()
    deadline = time.monotonic() + 5
    while True:
        age = _metric(brokers.metrics, "fleet_mosquitto_crl_age_seconds")
        if age is not None and not math.isnan(age):
            break
        assert time.monotonic() < deadline, f"fleet_mosquitto_crl_age_seconds is {age}"
        time.sleep(0.05)
    assert 0 <= age < 60, age
    entries = _json_lines(node.sidecar_log.read_text())
    assert any(e.get("event") == "sidecar_started" for e in entries), entries
    assert {e["logger"] for e in entries} >= {"fleet.broker.mosquitto"}


def test_sidecar_and_embedded_broker_stop_promptly_on_sigterm(brokers: Brokers) -> None:
    """Each exits within a second of SIGTERM, connected or not, and logs a stop line."""
    node = brokers.mosquitto
    issuing = load_ca(brokers.data, "issuing")
    cert, key = mint_client_cert(node.directory, "dev-stop", common_name="dev-stop", issuer=issuing)
    session = Session(node.port, ca=brokers.root, cert=cert, key=key, client_id="dev-stop")
    assert session.open(), session.connack
    try:
        # Connected to the broker, a device online.
        assert node.sidecar is not None
        took = _stop_timed(node.sidecar)
        node.sidecar = None
        print(f"sidecar stopped in {took:.3f} s (broker up)")
        entries = _json_lines(node.sidecar_log.read_text())
        assert entries[-1].get("event") == "stopped", entries[-1]
        assert took < STOP_DEADLINE, f"the sidecar took {took:.2f} s to stop"

        # The broker is gone and the sidecar is reconnecting (systemd stops mosquitto first).
        node.start_sidecar()
        assert node.sidecar is not None
        mark = node.sidecar_log.stat().st_size
        node.stop_broker()
        node.wait_sidecar_log("disconnected from the broker", after=mark)
        time.sleep(0.3)  # into the reconnect back-off: that is what is measured
        took = _stop_timed(node.sidecar)
        node.sidecar = None
        print(f"sidecar stopped in {took:.3f} s (broker down)")
        assert took < STOP_DEADLINE, f"the sidecar took {took:.2f} s to stop, broker down"
    finally:
        session.close()

    # A CRL server that accepts and never answers: the fetch hangs until its timeout.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        settings = node.settings.read_text()
        hung = re.sub(
            r'crl_url = ".*"',
            f'crl_url = "https://127.0.0.1:{silent.getsockname()[1]}/crl"',
            settings,
        )
        node.settings.write_text(hung)
        try:
            # The log is appended to: wait for this run's line, not an earlier one
            # (SIGTERM before Python installs its handler is a -15 death).
            mark = node.sidecar_log.stat().st_size
            node.start_sidecar(wait=False)
            node.wait_sidecar_log("sidecar_started", after=mark)
            time.sleep(0.3)  # the CRL fetch is under way
            assert node.sidecar is not None
            took = _stop_timed(node.sidecar)
            node.sidecar = None
        finally:
            node.settings.write_text(settings)
        print(f"sidecar stopped in {took:.3f} s (CRL fetch hanging)")
        assert took < STOP_DEADLINE, f"the sidecar took {took:.2f} s to stop, CRL fetch hanging"

    amqtt = brokers.amqtt
    device = Session(amqtt.port, ca=brokers.root, cert=cert, key=key, client_id="dev-stop")
    assert device.open(), device.connack
    try:
        assert amqtt.proc is not None
        took = _stop_timed(amqtt.proc)
        amqtt.proc = None
        print(f"embedded broker stopped in {took:.3f} s (a device online)")
        entries = _json_lines(amqtt.log.read_text())
        assert entries[-1].get("event") == "stopped", entries[-1]
        assert took < STOP_DEADLINE, f"the embedded broker took {took:.2f} s to stop"
    finally:
        device.close()
