"""`fleet-broker mosquitto init` and `fleet broker-cert sign` on real files (no broker).

What init writes and refuses, and the CSR path for a broker host without the
fleet's CA keys: keys stay where they were made, certificates come back signed.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.support.fleet_server import make_data_dir
from tests.support.mosquitto_broker import fleet_broker

pytestmark = [pytest.mark.needs_binary("gcc")]

FLEET = str(Path(sys.executable).with_name("fleet"))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_writes_a_node_and_refuses_to_overwrite(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path / "fleet-data").parent
    out = tmp_path / "broker"
    fleet_broker(
        "mosquitto", "init", "--fleet-data", data, "--out", out,
        "--server-name", "mqtt.example.com", "--server-name", "10.0.0.7",
    )  # fmt: skip
    for name in (
        "broker.toml", "mosquitto.conf", "fleet_plugin.so", "tls/broker.pem", "sidecar.pem",
        "systemd/fleet-broker-sync.service", "systemd/mosquitto.service.d/fleet.conf",
    ):  # fmt: skip
        assert (out / name).is_file(), name
    assert _mode(out / "tls/broker.key") == 0o600
    assert _mode(out / "sidecar.key") == 0o600
    server = _cert(out / "tls/broker.pem")
    assert server.issuer == _cert(data / "ca/root.pem").subject
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.example.com"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    toml = (out / "broker.toml").read_text()
    assert "user = " in toml
    assert f"sqlite:///{data.resolve() / 'fleet.db'}" in toml
    unit = (out / "systemd/fleet-broker-sync.service").read_text()
    assert "ExecStartPre=" in unit
    assert "--once" in unit.split("ExecStartPre=")[1].splitlines()[0]
    assert (
        "After=fleet-broker-sync.service"
        in (out / "systemd/mosquitto.service.d/fleet.conf").read_text()
    )
    conf = (out / "mosquitto.conf").read_text()
    assert "\nuser " in conf
    assert "plugin_opt_sidecar_sha256 " in conf

    before = (out / "tls/broker.pem").read_bytes()
    again = fleet_broker("mosquitto", "init", "--fleet-data", data, "--out", out, check=False)
    assert again.returncode != 0
    assert f"{out / 'broker.toml'} exists" in again.stderr
    assert "--force" in again.stderr
    assert (out / "tls/broker.pem").read_bytes() == before
    fleet_broker("mosquitto", "init", "--fleet-data", data, "--out", out, "--force")
    assert (out / "tls/broker.pem").read_bytes() != before


def test_csr_only_then_sign_on_the_ca_host(tmp_path: Path) -> None:
    config = make_data_dir(tmp_path / "fleet-data")
    data = config.parent
    public = tmp_path / "public"  # what the broker host gets: the CA certificates only
    (public / "ca").mkdir(parents=True)
    for name in ("root.pem", "issuing.pem"):
        (public / "ca" / name).write_bytes((data / "ca" / name).read_bytes())
    out = tmp_path / "broker"
    refused = fleet_broker("mosquitto", "init", "--fleet-data", public, "--out", out, check=False)
    assert refused.returncode != 0
    assert "--csr-only" in refused.stderr
    fleet_broker(
        "mosquitto", "init", "--fleet-data", public, "--out", out, "--csr-only",
        "--store-url", f"sqlite:///{data / 'fleet.db'}", "--server-name", "mqtt.example.com",
    )  # fmt: skip
    assert _mode(out / "tls/broker.key") == 0o600
    assert not (out / "tls/broker.pem").exists()
    assert not (out / "mosquitto.conf").exists()
    key_before = (out / "tls/broker.key").read_bytes()

    env = {**os.environ, "FLEET_CONFIG": str(config)}

    def sign(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FLEET, "broker-cert", "sign", *map(str, args)],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    result = sign("--csr", out / "tls/broker.csr", "--out", out / "tls/broker.pem")
    assert result.returncode == 0, result.stderr
    result = sign("--csr", out / "sidecar.csr", "--kind", "sidecar", "--out", out / "sidecar.pem")
    assert result.returncode == 0, result.stderr
    # The wrong kind for a CSR is refused, saying which.
    wrong = sign("--csr", out / "sidecar.csr", "--kind", "server", "--out", tmp_path / "x.pem")
    assert wrong.returncode != 0
    assert "--kind sidecar" in wrong.stderr
    assert (out / "tls/broker.key").read_bytes() == key_before
    server = _cert(out / "tls/broker.pem")
    assert server.issuer == _cert(data / "ca/root.pem").subject
    sidecar = _cert(out / "sidecar.pem")
    assert sidecar.issuer == _cert(data / "ca/issuing.pem").subject
    eku = sidecar.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    conf = fleet_broker("mosquitto", "config", "--config", out / "broker.toml").stdout
    assert "plugin_opt_sidecar_sha256 " in conf
