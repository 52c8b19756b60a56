"""The embedded broker during a root rollover: it learns the new root without a restart."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleet.kernel.files import write_atomic
from fleet.pki.ca import certificate_to_pem, create_issuing_ca
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
        rotated = subprocess.run(
            [sys.executable, "-m", "fleet", "ca", "rotate-root", "--config",
             str(server.config_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert rotated.returncode == 0, rotated.stderr
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
