"""Mosquitto with the fleet plugin during a root rollover: devices under either root connect."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from fleet.pki.ca import certificate_to_pem, create_issuing_ca
from tests.integration.broker.test_mosquitto import plugin  # noqa: F401 - the session fixture
from tests.integration.est.conftest import running_fleet
from tests.support.mosquitto_broker import (
    BrokerNodes,
    Session,
    fleet_broker,
    load_ca,
    mint_client_cert,
)

pytestmark = [
    pytest.mark.needs_binary("mosquitto"),
    pytest.mark.needs_binary("gcc"),
    pytest.mark.needs_binary("openssl"),
]


def test_devices_under_the_old_and_the_new_root_connect_during_the_overlap(
    tmp_path: Path,
    plugin: Path,  # noqa: F811
) -> None:
    with running_fleet(tmp_path) as fleet:
        data = fleet.server.data_dir
        rotated = subprocess.run(
            [sys.executable, "-m", "fleet", "ca", "rotate-root",
             "--config", str(fleet.server.config_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert rotated.returncode == 0, rotated.stderr
        # An issuing CA under the new root beside the old one (rotate-issuing's "next").
        new_issuing = create_issuing_ca(
            load_ca(data, "root"), "issuing under R2", now=dt.datetime.now(dt.UTC)
        )
        issuing = tmp_path / "issuing-both.pem"
        issuing.write_bytes(
            (data / "ca/issuing.pem").read_bytes() + certificate_to_pem(new_issuing.certificate)
        )
        nodes = BrokerNodes.issue(data, tmp_path, plugin)
        node = nodes.node(tmp_path / "node", issuing_ca=issuing)
        try:
            fleet_broker("mosquitto", "sync", "--config", node.settings, "--once")
            cafile = x509.load_pem_x509_certificates(
                (node.directory / "state/cafile.pem").read_bytes()
            )
            assert len(cafile) == 4  # two issuing CAs, two roots
            node.start_broker()
            node.start_sidecar()
            device = fleet.new_device()
            key, csr = fleet.csr(device.device_id)
            old_cert = fleet.issued(fleet.enroll(device, csr), device.device_id)
            new_cert, new_key = mint_client_cert(
                tmp_path, "rolled", common_name="rolled-1", issuer=new_issuing
            )
            for cert, key_path, client_id in (
                (old_cert, key, device.device_id),
                (new_cert, new_key, "rolled-1"),
            ):
                session = Session(
                    node.port, ca=fleet.server.root_pem, cert=cert, key=key_path,
                    client_id=client_id,
                )  # fmt: skip
                try:
                    assert session.open(), f"{client_id}: {session.connack}"
                finally:
                    session.close()
        finally:
            node.stop()
