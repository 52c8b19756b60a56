"""The simulated factory makes material that openssl, the server's own chain check and
`fleet manifest import` accept."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from firmware_sim.cli import cli
from firmware_sim.factory import (
    FactoryOutput,
    device_ids,
    make_bootstrap,
    make_manufacturer,
    run_factory,
)
from fleet.datadir import init_data_dir
from fleet.kernel.chain import TrustDomain, verify_client_chain
from fleet.kernel.device_id import device_id_from_certificate
from fleet.kernel.errors import DeviceIdInvalid
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.manifest import parse_manifest
from tests.support.openssl import openssl

NOW = dt.datetime(2026, 5, 27, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> FactoryOutput:
    return run_factory(tmp_path_factory.mktemp("factory"), 3, now=NOW, model="TH-9", batch="B-7")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_layout_and_private_key_modes(made: FactoryOutput) -> None:
    assert [d.device_id for d in made.devices] == ["sensor-0001", "sensor-0002", "sensor-0003"]
    assert made.ca_cert.is_file()
    for key in [made.ca_key, *(d.key for d in made.devices)]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_manufacturer_ca_is_a_v3_ec_ca(made: FactoryOutput) -> None:
    ca = _cert(made.ca_cert)
    assert ca.version is x509.Version.v3
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Acme Device CA"


def test_bootstrap_certificates_are_idevid_like(made: FactoryOutput) -> None:
    ca = _cert(made.ca_cert)
    for device in made.devices:
        cert = _cert(device.cert)
        assert cert.version is x509.Version.v3
        assert device_id_from_certificate(cert, "cn") == device.device_id
        assert device_id_from_certificate(cert, "serialNumber") == device.device_id
        ext = cert.extensions
        assert not ext.get_extension_for_class(x509.BasicConstraints).value.ca
        assert (
            ExtendedKeyUsageOID.CLIENT_AUTH
            in ext.get_extension_for_class(x509.ExtendedKeyUsage).value
        )
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ski.digest
        ext.get_extension_for_class(x509.SubjectKeyIdentifier)
        assert cert.not_valid_after_utc - NOW > dt.timedelta(days=19 * 365)
        assert sha256_fingerprint(cert) == device.bootstrap_sha256


def test_openssl_verifies_every_bootstrap_certificate_as_a_client(made: FactoryOutput) -> None:
    for device in made.devices:
        result = openssl(
            "verify", "-CAfile", made.ca_cert, "-purpose", "sslclient", "-x509_strict",
            device.cert,
        )  # fmt: skip
        assert b": OK" in result.stdout
    # And each key belongs to its certificate.
    device = made.devices[0]
    cert_pub = openssl("x509", "-in", device.cert, "-noout", "-pubkey").stdout
    key_pub = openssl("pkey", "-in", device.key, "-pubout").stdout
    assert cert_pub == key_pub


def test_the_servers_chain_check_accepts_them(made: FactoryOutput) -> None:
    domain = TrustDomain("manufacturer", (_cert(made.ca_cert),))
    for device in made.devices:
        chain = verify_client_chain(_cert(device.cert), [], domain, now=NOW)
        assert len(chain) == 2


def test_manifest_parses_with_pins_model_and_batch(made: FactoryOutput) -> None:
    entries = parse_manifest(made.manifest.read_text())
    assert [(e.device_id, e.bootstrap_sha256, e.model, e.batch) for e in entries] == [
        (d.device_id, d.bootstrap_sha256, "TH-9", "B-7") for d in made.devices
    ]


def test_fleet_manifest_import_accepts_the_manifest(made: FactoryOutput, tmp_path: Path) -> None:
    data = init_data_dir(tmp_path / "data", now=dt.datetime.now(dt.UTC))
    env = {**os.environ, "FLEET_CONFIG": str(data.config_path)}
    for args in (
        ["trust", "add-manufacturer", str(made.ca_cert)],
        ["manifest", "import", str(made.manifest)],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "fleet", *args], capture_output=True, text=True, env=env,
            timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    assert "3 device(s) created" in proc.stdout


def test_device_ids_are_validated_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(DeviceIdInvalid):
        run_factory(tmp_path / "out", 2, now=NOW, prefix="bad/prefix")
    assert not (tmp_path / "out").exists()
    assert device_ids(2, "x", start=9999) == ["x-09999", "x-10000"]  # one width: they sort


def test_bootstrap_is_capped_by_the_ca_validity() -> None:
    ca = make_manufacturer("Tiny", now=NOW, validity=dt.timedelta(days=30))
    cert = make_bootstrap(ca, "dev-1", now=NOW).certificate
    assert cert.not_valid_after_utc == ca.certificate.not_valid_after_utc


def test_cli_factory(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["factory", "--out", str(tmp_path), "--count", "2", "--manufacturer", "Globex",
         "--batch", "2026-11", "--prefix", "meter"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 device(s) meter-0001 … meter-0002" in result.output
    ca = _cert(tmp_path / "manufacturer" / "ca.pem")
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Globex Device CA"
    lines = (tmp_path / "manifest.csv").read_text().splitlines()
    assert lines[0] == "device_id,bootstrap_sha256,model,batch"
    assert lines[1].startswith("meter-0001,")
    assert lines[1].endswith(",TH-200,2026-11")
