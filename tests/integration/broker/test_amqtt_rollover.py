"""The embedded broker during a root rollover: it learns the new root without a restart."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from fleet.kernel.files import write_atomic
from fleet.kernel.rollover import is_self_signed
from fleet.pki.ca import certificate_to_pem, create_issuing_ca
from tests.integration.est.conftest import running_fleet
from tests.support.amqtt_broker import (
    Device,
    broker_settings,
    client_context,
    expect_refused,
    mint_client_cert,
    running_broker,
)
from tests.support.fleet_server import FleetServer, make_data_dir
from tests.support.mosquitto_broker import load_ca


def _fleet_ca(server: FleetServer, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fleet", "ca", *args, "--config", str(server.config_path)],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **server.env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_reload_trust_admits_the_new_root_and_retire_drops_the_old(tmp_path: Path) -> None:
    server = FleetServer(make_data_dir(tmp_path / "data"))  # its files; no process needed
    data = server.data_dir
    settings = broker_settings(server, tmp_path)  # bundle: issuing CA + the (one) root
    old_issuing = load_ca(data, "issuing")
    old_cert, old_key = mint_client_cert(
        tmp_path, "old", common_name="dev-old", issuer_cert=data / "ca/issuing.pem",
        issuer_key=data / "ca/issuing.key",
    )  # fmt: skip
    with running_broker(settings) as broker:
        _fleet_ca(server, "rotate-root")
        new_issuing = create_issuing_ca(
            load_ca(data, "root"), "issuing under R2", now=dt.datetime.now(dt.UTC)
        )
        issuing_pem, issuing_key = tmp_path / "r2.pem", tmp_path / "r2.key"
        issuing_pem.write_bytes(certificate_to_pem(new_issuing.certificate))
        issuing_key.write_bytes(
            new_issuing.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )  # fmt: skip
        new_cert, new_key = mint_client_cert(
            tmp_path, "new", common_name="dev-new", issuer_cert=issuing_pem,
            issuer_key=issuing_key,
        )  # fmt: skip
        roots = data / "ca/root.pem"

        def device(client_id: str, cert: Path, key: Path) -> Device:
            return Device(broker.port, client_id, client_context(roots, cert, key))

        expect_refused(device("dev-new", new_cert, new_key))  # not known yet
        write_atomic(
            settings.fleet_ca,
            certificate_to_pem(old_issuing.certificate)
            + certificate_to_pem(new_issuing.certificate)
            + roots.read_bytes(),
            mode=0o644,
        )  # fmt: skip
        broker.call(broker.broker.reload_trust)
        for client_id, cert, key in (
            ("dev-old", old_cert, old_key),
            ("dev-new", new_cert, new_key),
        ):
            session = device(client_id, cert, key)
            assert session.connect() == 0, client_id
            session.close()
        # After retire-root: the new root and its issuing CA only.
        new_root = x509.load_pem_x509_certificates(roots.read_bytes())[0]
        write_atomic(
            settings.fleet_ca,
            certificate_to_pem(new_issuing.certificate) + certificate_to_pem(new_root),
            mode=0o644,
        )
        broker.call(broker.broker.reload_trust)
        expect_refused(device("dev-old", old_cert, old_key))
        session = device("dev-new", new_cert, new_key)
        assert session.connect() == 0
        session.close()


def test_following_cacerts_adopts_the_new_root_through_its_link(tmp_path: Path) -> None:
    """No copy, no SIGHUP: rotate-root + rotate-issuing reach the broker through /cacerts."""
    with running_fleet(tmp_path, env={"FLEET_CA_RELOAD_SECONDS": "1"}) as fleet:
        data = fleet.server.data_dir
        settings = broker_settings(
            fleet.server, tmp_path, cacerts_url=fleet.server.est("cacerts"), ca_refresh_seconds=0.2
        )
        old_root = x509.load_pem_x509_certificate((data / "ca/root.pem").read_bytes())
        with running_broker(settings) as broker:
            _fleet_ca(fleet.server, "rotate-root")
            _fleet_ca(fleet.server, "rotate-issuing")  # the next issuing CA is the new root's
            new_cert, new_key = mint_client_cert(
                tmp_path, "new", common_name="dev-new",
                issuer_cert=data / "ca/issuing-next.pem", issuer_key=data / "ca/issuing-next.key",
            )  # fmt: skip
            new_issuing = x509.load_pem_x509_certificate(
                (data / "ca/issuing-next.pem").read_bytes()
            )
            with pytest.raises(InvalidSignature):  # same root name, the new root's key
                new_issuing.verify_directly_issued_by(old_root)
            roots = data / "ca/root.pem"  # [new root, old root]: the broker's TLS certificate

            def admitted() -> bool:
                device = Device(broker.port, "dev-new", client_context(roots, new_cert, new_key))
                try:
                    return device.connect() == 0
                finally:
                    device.close()

            deadline = time.monotonic() + 20
            while not admitted():
                assert time.monotonic() < deadline, "the broker never adopted the new root"
                time.sleep(0.2)
            bundle = x509.load_pem_x509_certificates(settings.fleet_ca.read_bytes())
            new_root = x509.load_pem_x509_certificates(roots.read_bytes())[0]
            assert new_root in bundle
            assert old_root in bundle
            assert all(cert.subject != cert.issuer or is_self_signed(cert) for cert in bundle)
