"""Root rollover end to end: `fleet ca rotate-root` on a running `fleet serve`, real agents."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from fleet.kernel.clock import SystemClock
from fleet.kernel.files import write_atomic
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.pki.ca import CertifiedKey, certificate_to_pem, create_issuing_ca, create_root_ca
from fleet.pki.keys import load_private_key_pem, private_key_to_pem
from tests.integration.agent.conftest import FAST_SERVER_ENV, AgentWorld
from tests.integration.est.conftest import running_fleet
from tests.support.agent import fleet_agent, root_fingerprint, verify_identity

pytestmark = pytest.mark.needs_binary("openssl")


@pytest.fixture
def rolling(tmp_path: Path) -> Iterator[AgentWorld]:
    with running_fleet(tmp_path, env=FAST_SERVER_ENV) as fleet:
        yield AgentWorld(fleet, root_fingerprint(fleet.server.root_pem))


def _fleet(world: AgentWorld, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet", *args, "--config", str(world.fleet.server.config_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _pin(state: Path) -> str:
    import json

    return str(json.loads((state / "agent.json").read_text())["ca_fingerprint"])


def _roots(state: Path) -> list[x509.Certificate]:
    certs = x509.load_pem_x509_certificates((state / "cacerts.pem").read_bytes())
    return [c for c in certs if c.subject == c.issuer and c.extensions]


def _enrolled(world: AgentWorld, state: Path) -> None:
    run = world.enroll(world.fleet.new_device(), state)
    assert run.returncode == 0, run


def test_devices_follow_a_root_rollover_and_a_sleeper_comes_back(
    rolling: AgentWorld, tmp_path: Path
) -> None:
    world = rolling
    awake, sleeper = tmp_path / "awake", tmp_path / "sleeper"
    _enrolled(world, awake)
    _enrolled(world, sleeper)  # then powered off for the whole overlap
    old_fp = world.fingerprint

    rotated = _fleet(world, "ca", "rotate-root", "--overlap-days", "60")
    assert rotated.returncode == 0, rotated.stderr
    data = world.fleet.server.data_dir
    roots = x509.load_pem_x509_certificates((data / "ca/root.pem").read_bytes())
    assert [sha256_fingerprint(r) for r in roots][1] == old_fp  # new root first, old kept
    new_fp = sha256_fingerprint(roots[0])
    assert len(x509.load_pem_x509_certificates((data / "ca/links.pem").read_bytes())) == 2
    assert stat.S_IMODE(os.stat(data / "ca/root.key").st_mode) == 0o600

    # The running server publishes the rollover; the awake device moves its pin on renewal.
    run = fleet_agent("renew", "--state-dir", awake, "--force")
    assert run.returncode == 0, run
    assert _pin(awake) == new_fp
    assert {sha256_fingerprint(r) for r in _roots(awake)} == {old_fp, new_fp}
    assert stat.S_IMODE(os.stat(awake / "cacerts.pem").st_mode) == 0o644
    assert not [p for p in awake.iterdir() if ".tmp" in p.name]  # atomic: no leftovers
    assert "pin moved" in run.stderr
    verify_identity(awake)
    # And renews again under the moved pin (the server's TLS certificate is still the old
    # root's: the old root is kept while valid).
    again = fleet_agent("renew", "--state-dir", awake, "--force")
    assert again.returncode == 0, again

    # The sleeper wakes with only the old pin and still renews, and moves too.
    assert _pin(sleeper) == old_fp
    late = fleet_agent("renew", "--state-dir", sleeper, "--force")
    assert late.returncode == 0, late
    assert _pin(sleeper) == new_fp
    verify_identity(sleeper)


def test_a_new_root_without_a_link_is_refused_and_the_pin_stays(
    rolling: AgentWorld, tmp_path: Path
) -> None:
    world = rolling
    state = tmp_path / "device"
    _enrolled(world, state)
    # A server (or whoever controls it) offers a new self-signed root and no link.
    rogue = create_root_ca("fleet root CA", now=SystemClock().now()).certificate
    root_pem = world.fleet.server.root_pem
    root_pem.write_bytes(certificate_to_pem(rogue) + root_pem.read_bytes())
    run = fleet_agent("renew", "--state-dir", state, "--force")
    assert run.returncode == 0, run  # the renewal itself is fine
    assert _pin(state) == world.fingerprint
    assert sha256_fingerprint(rogue) not in {sha256_fingerprint(r) for r in _roots(state)}
    assert "root_not_certified" in run.stderr
    assert "without a link certificate" in run.stderr


def test_retire_root_is_refused_while_the_issuing_ca_is_under_the_old_root(
    rolling: AgentWorld,
) -> None:
    world = rolling
    assert _fleet(world, "ca", "rotate-root").returncode == 0
    refused = _fleet(world, "ca", "retire-root")
    assert refused.returncode == 1
    assert "root_still_in_use" in refused.stderr
    assert "1 issuing CA" in refused.stderr
    assert len(x509.load_pem_x509_certificates(world.fleet.server.root_pem.read_bytes())) == 2


def test_retire_root_moves_the_admin_ca_and_server_certificate_to_the_new_root(
    tmp_path: Path,
) -> None:
    with running_fleet(tmp_path, env=FAST_SERVER_ENV) as fleet:  # no device enrolled
        world = AgentWorld(fleet, root_fingerprint(fleet.server.root_pem))
        assert _fleet(world, "ca", "rotate-root").returncode == 0
        ca = fleet.server.data_dir / "ca"
        new_root = CertifiedKey(
            x509.load_pem_x509_certificates((ca / "root.pem").read_bytes())[0],
            load_private_key_pem((ca / "root.key").read_bytes()),
        )
        # What `fleet ca rotate-issuing` + `promote` leave: an issuing CA under the new root.
        issuing = create_issuing_ca(new_root, "issuing under R2", now=SystemClock().now())
        write_atomic(ca / "issuing.key", private_key_to_pem(issuing.private_key), mode=0o600)
        write_atomic(ca / "issuing.pem", certificate_to_pem(issuing.certificate), mode=0o644)
        retired = _fleet(world, "ca", "retire-root")
        assert retired.returncode == 0, retired.stderr
        assert x509.load_pem_x509_certificates((ca / "root.pem").read_bytes()) == [
            new_root.certificate
        ]
        assert not (ca / "links.pem").exists()
        # Broker certificates are not moved: the operator is told to sign them again.
        assert "fleet broker-cert sign --kind server" in retired.stdout
        for name in ("ca/admin.pem", "tls/server.pem"):
            cert = x509.load_pem_x509_certificate((fleet.server.data_dir / name).read_bytes())
            cert.verify_directly_issued_by(new_root.certificate)


def test_a_device_made_with_the_old_fingerprint_enrolls_under_the_new_root(
    rolling: AgentWorld, tmp_path: Path
) -> None:
    """Factory-provisioned before the rollover, first boot after the new issuing CA took over."""
    world = rolling
    old_fp = world.fingerprint
    assert _fleet(world, "ca", "rotate-root").returncode == 0
    ca = world.fleet.server.data_dir / "ca"
    new_root = CertifiedKey(
        x509.load_pem_x509_certificates((ca / "root.pem").read_bytes())[0],
        load_private_key_pem((ca / "root.key").read_bytes()),
    )
    # What `fleet ca rotate-issuing` + `promote` leave: the server issues under the new root.
    issuing = create_issuing_ca(new_root, "issuing under R2", now=SystemClock().now())
    write_atomic(ca / "issuing.key", private_key_to_pem(issuing.private_key), mode=0o600)
    write_atomic(ca / "issuing.pem", certificate_to_pem(issuing.certificate), mode=0o644)
    world.fleet.server.stop()
    world.fleet.server.start()
    state = tmp_path / "late"
    _enrolled(world, state)  # --ca-fingerprint is still the OLD root's
    assert _pin(state) == sha256_fingerprint(new_root.certificate)
    assert {sha256_fingerprint(r) for r in _roots(state)} == {
        old_fp,
        sha256_fingerprint(new_root.certificate),
    }
    identity = verify_identity(state)
    cert = x509.load_pem_x509_certificate(Path(str(identity["cert_file"])).read_bytes())
    cert.verify_directly_issued_by(issuing.certificate)
