"""Mosquitto with the fleet plugin during a root rollover: devices under either root connect."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from fleet.pki.ca import CertifiedKey, certificate_to_pem, create_issuing_ca
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


def test_a_node_following_cacerts_adopts_the_new_root_through_its_link(
    tmp_path: Path,
    plugin: Path,  # noqa: F811
) -> None:
    """No copy: rotate-root + rotate-issuing reach the node through /cacerts.

    The sidecar adopts the new root (kernel rule: through the link) and the plugin
    trusts it at the SIGHUP; Mosquitto's TLS layer (OpenSSL caches the old root's
    name and never looks capath up for it again) learns it from cafile at a restart
    of mosquitto alone, which the sidecar asks for in its log.
    """
    with running_fleet(tmp_path, env={"FLEET_CA_RELOAD_SECONDS": "1"}) as fleet:
        data = fleet.server.data_dir
        # The node's own copy of the root, as on another host: only /cacerts can teach it more.
        root_copy = tmp_path / "root-copy.pem"
        root_copy.write_bytes((data / "ca/root.pem").read_bytes())
        node = BrokerNodes.issue(data, tmp_path, plugin).node(
            tmp_path / "node",
            extra=f'cacerts_url = "{fleet.server.est("cacerts")}"\nca_refresh_seconds = 0.2',
        )
        node.settings.write_text(
            node.settings.read_text().replace(str(data / "ca/root.pem"), str(root_copy))
        )
        node.configure()
        try:
            fleet_broker("mosquitto", "sync", "--config", node.settings, "--once")
            node.start_broker()
            node.start_sidecar()
            mark, sidecar_mark = node.log_mark(), node.sidecar_log.stat().st_size
            for step in ("rotate-root", "rotate-issuing"):  # the next issuing CA: the new root's
                done = subprocess.run(
                    [sys.executable, "-m", "fleet", "ca", step,
                     "--config", str(fleet.server.config_path)],
                    capture_output=True, text=True, timeout=60, check=False,
                )  # fmt: skip
                assert done.returncode == 0, done.stderr
            node.wait_sidecar_log("fleet_root_adopted", after=sidecar_mark, timeout=20)
            node.wait_broker_log(r"fleet: trust reloaded \(2 issuing CA", after=mark, timeout=20)
            new_issuing = CertifiedKey(
                x509.load_pem_x509_certificate((data / "ca/issuing-next.pem").read_bytes()),
                load_pem_private_key((data / "ca/issuing-next.key").read_bytes(), None),  # type: ignore[arg-type]
            )
            new_cert, new_key = mint_client_cert(
                tmp_path, "rolled", common_name="rolled-1", issuer=new_issuing
            )
            cafile = x509.load_pem_x509_certificates(
                (node.directory / "state/cafile.pem").read_bytes()
            )
            assert x509.load_pem_x509_certificates((data / "ca/root.pem").read_bytes())[0] in cafile
            node.stop_broker()  # mosquitto only: the sidecar and its state stay
            node.start_broker()
            session = Session(
                node.port, ca=fleet.server.root_pem, cert=new_cert, key=new_key,
                client_id="rolled-1",
            )  # fmt: skip
            try:
                assert session.open(), session.connack
            finally:
                session.close()
        finally:
            node.stop()
