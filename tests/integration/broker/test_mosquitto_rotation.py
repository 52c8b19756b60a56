"""Mosquitto (plugin + sidecar) through an issuing-CA rotation, with a real `fleet serve`.

With ``cacerts_url`` the sidecar follows /cacerts: it rewrites the plugin's
issuing set and a capath directory (Mosquitto reads cafile only at start, but
looks capath up at each handshake) and SIGHUPs the broker, whose plugin then
re-reads its issuers: a device of the new CA is admitted without a restart.
Without it, the node's issuing_ca can be the data directory's
ca/issuing-set.pem (kept by `fleet ca`) and the node is restarted between
rotate-issuing and promote.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.integration.est.conftest import Fleet, running_fleet
from tests.support.binaries import need_binary
from tests.support.mosquitto_broker import BrokerNode, BrokerNodes, Session, fleet_broker


def _enroll(fleet: Fleet, name: str) -> tuple[str, Path, Path]:
    device = fleet.new_device()
    key, csr = fleet.csr(name)
    return device.device_id, fleet.issued(fleet.enroll(device, csr), name), key


def _issuer(device: tuple[str, Path, Path]) -> x509.Name:
    return x509.load_pem_x509_certificate(device[1].read_bytes()).issuer


def _admitted(fleet: Fleet, node: BrokerNode, device: tuple[str, Path, Path]) -> bool:
    device_id, cert, key = device
    session = Session(node.port, ca=fleet.server.root_pem, cert=cert, key=key, client_id=device_id)
    try:
        return session.open()
    finally:
        session.close()


def _fleet_ca(fleet: Fleet, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fleet", "ca", *args, "--config", str(fleet.server.config_path)],
        capture_output=True, text=True, timeout=60, check=False, env=dict(os.environ),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def _restart(node: BrokerNode) -> None:
    node.stop()
    fleet_broker("mosquitto", "sync", "--config", node.settings, "--once")
    node.start_broker()
    node.start_sidecar()


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_binary("gcc")
    out = tmp_path_factory.mktemp("plugin")
    return Path(fleet_broker("mosquitto", "build", "--out", out).stdout.strip())


def _enroll_from_new_ca(fleet: Fleet, old_issuer: x509.Name) -> tuple[str, Path, Path]:
    """The server follows promote within [ca] reload_seconds: enroll until it did."""
    deadline = time.monotonic() + 20
    device = _enroll(fleet, "new")
    while _issuer(device) == old_issuer:
        assert time.monotonic() < deadline, "the server never signed with the new CA"
        time.sleep(0.2)
        device = _enroll(fleet, "new")
    return device


def test_mosquitto_follows_cacerts_without_a_restart(tmp_path: Path, plugin: Path) -> None:
    need_binary("mosquitto")
    with running_fleet(tmp_path) as fleet:
        node = BrokerNodes.issue(fleet.server.data_dir, tmp_path, plugin).node(
            tmp_path / "node",
            extra=f'cacerts_url = "{fleet.server.est("cacerts")}"\nca_refresh_seconds = 0.2',
        )
        assert f"capath {node.directory / 'state/cadir'}" in node.conf.read_text()
        try:
            fleet_broker("mosquitto", "sync", "--config", node.settings, "--once")
            node.start_broker()
            node.start_sidecar()
            old_device = _enroll(fleet, "old")
            assert _admitted(fleet, node, old_device)
            broker_pid = node.broker.pid if node.broker else None

            mark = node.log_mark()
            _fleet_ca(fleet, "rotate-issuing")
            node.wait_broker_log(r"fleet: trust reloaded \(2 issuing CA", after=mark, timeout=20)
            _fleet_ca(fleet, "promote")
            new_device = _enroll_from_new_ca(fleet, _issuer(old_device))
            assert _admitted(fleet, node, new_device)
            assert _admitted(fleet, node, old_device)
            assert node.broker is not None
            assert node.broker.pid == broker_pid
            assert node.broker.poll() is None  # the same broker process throughout
        finally:
            node.stop()


def test_mosquitto_admits_both_cas_across_a_rotation(tmp_path: Path, plugin: Path) -> None:
    need_binary("mosquitto")
    with running_fleet(tmp_path) as fleet:
        data = fleet.server.data_dir
        node = BrokerNodes.issue(data, tmp_path, plugin).node(
            tmp_path / "node",
            issuing_ca=data / "ca/issuing-set.pem",
        )
        try:
            fleet_broker("mosquitto", "sync", "--config", node.settings, "--once")
            node.start_broker()
            node.start_sidecar()
            old_device = _enroll(fleet, "old")
            assert _admitted(fleet, node, old_device)

            _fleet_ca(fleet, "rotate-issuing")
            _restart(node)
            cafile = x509.load_pem_x509_certificates(
                (node.directory / "state/cafile.pem").read_bytes()
            )
            assert len(cafile) == 3  # current, next, root
            _fleet_ca(fleet, "promote")
            new_device = _enroll_from_new_ca(fleet, _issuer(old_device))
            assert _admitted(fleet, node, new_device)
            assert _admitted(fleet, node, old_device)
        finally:
            node.stop()
