"""Expired while offline: the operational certificate ran out before the device came back.

The expired certificate is made for real: the current one re-issued by the fleet
issuing CA (its key from the server's data directory) with the same key, subject
and extensions, but a validity period that ended yesterday.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519

from fleet.authority.admin import approve_device
from fleet.records import DeviceState, EnrollmentToken
from fleet.store.protocol import Store
from fleet.tokens import new_token, token_sha256
from tests.integration.agent.conftest import AgentWorld
from tests.support.agent import AgentRun, StormProxy, fleet_agent, verify_identity

pytestmark = pytest.mark.needs_binary("openssl")


def expire(world: AgentWorld, report: dict[str, Any]) -> str:
    """Replace the device's current certificate with an expired twin; its serial (hex)."""
    data = world.fleet.server.data_dir
    issuer = x509.load_pem_x509_certificate((data / "ca/issuing.pem").read_bytes())
    issuer_key = serialization.load_pem_private_key(
        (data / "ca/issuing.key").read_bytes(), password=None
    )
    path = Path(report["cert_file"])
    current = x509.load_pem_x509_certificate(path.read_bytes())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(current.subject)
        .issuer_name(issuer.subject)
        .public_key(current.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=31))
        .not_valid_after(now - dt.timedelta(days=1))
    )
    for extension in current.extensions:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    algorithm = (
        None
        if isinstance(issuer_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else hashes.SHA256()
    )
    expired = builder.sign(issuer_key, algorithm)  # type: ignore[arg-type]
    path.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    status = fleet_agent("status", "--state-dir", path.parent)
    assert status.json()["state"] == "expired", status
    return f"{expired.serial_number:x}"


def _renew(state: Path) -> AgentRun:
    return fleet_agent("renew", "--state-dir", state)


def test_expired_device_rebootstraps_once_the_server_allows_it(
    world: AgentWorld, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    enrolled = world.enroll(world.fleet.new_device(), state)
    assert enrolled.returncode == 0, enrolled
    before = verify_identity(state)
    device_id = str(before["device_id"])
    expire(world, before)
    # The server refuses the expired certificate; the agent falls back to its bootstrap
    # certificate, which the server has seen before (the device is active): a possible
    # clone, held for approval (202, Retry-After: 1 on this server).
    held = _renew(state)
    assert held.returncode == 5, held
    assert "expired: enrolling again with the bootstrap certificate" in held.stderr
    assert "approv" in held.stderr

    # The device stayed active; the replay is a replacement request the admin approves.
    assert world.fleet.server.store(lambda s: s.get_device(device_id)).state is DeviceState.ACTIVE

    async def approve(store: Store) -> None:
        await approve_device(
            store, device_id, actor="admin:test", now=dt.datetime.now(dt.UTC), replace=True
        )

    world.fleet.server.store(approve)
    deadline = time.monotonic() + 10
    while (run := _renew(state)).returncode != 0:
        assert run.returncode == 4, run
        assert "backing off" in run.stderr, run  # stopped before sending anything
        assert time.monotonic() < deadline, run
        time.sleep(0.1)
    assert "re-enrolled with the bootstrap certificate" in run.stdout
    after = verify_identity(state)
    assert after["state"] == "ok"
    assert after["device_id"] == device_id
    assert after["serial"] != before["serial"]
    assert dt.datetime.fromisoformat(after["not_after"]) > dt.datetime.now(dt.UTC)


def test_expired_without_a_bootstrap_credential_says_so_and_retries_slowly(
    world: AgentWorld, tmp_path: Path
) -> None:
    # Enrolled with a one-time token: the device has no bootstrap credential to fall back on.
    device = world.fleet.new_device()
    token = new_token()
    now = dt.datetime.now(dt.UTC)
    record = EnrollmentToken(
        device.device_id, token_sha256(token), now, now + dt.timedelta(hours=1)
    )
    world.fleet.server.store(lambda s: s.put_enrollment_token(record))
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    state = tmp_path / "state"
    server = world.fleet.server
    tls = server.data_dir / "tls"
    with StormProxy(server.port, tls / "server.pem", tls / "server.key") as counter:
        enrolled = fleet_agent(
            "enroll", "--server", counter.url, "--ca-fingerprint", world.fingerprint,
            "--token-file", token_file, "--device-id", device.device_id, "--state-dir", state,
        )  # fmt: skip
        assert enrolled.returncode == 0, enrolled
        report = verify_identity(state)
        expired_serial = expire(world, report)
        sent = counter.forwarded
        refused = _renew(state)
        assert refused.returncode == 3, refused  # refused by policy: a person has to act
        assert counter.forwarded == sent + 1  # one simplereenroll, refused
        for text in ("certificate_expired", "no bootstrap credential is configured",
                     "retrying every ~", "fleet device token"):  # fmt: skip
            assert text in refused.stderr, refused.stderr
        status = fleet_agent("status", "--state-dir", state).json()
        assert (status["state"], status["serial"]) == ("expired", expired_serial)
        assert "no bootstrap credential" in status["last_error"]
        wait = dt.datetime.fromisoformat(status["next_attempt"]) - dt.datetime.now(dt.UTC)
        assert wait > dt.timedelta(hours=4), status  # slowly: ~4.5-6 h
        # A timer calling `renew` again and again sends nothing until then.
        for _ in range(3):
            again = _renew(state)
            assert again.returncode == 4, again
            assert "backing off" in again.stderr
            assert "no bootstrap credential" in again.stderr
        assert counter.forwarded == sent + 1
    # The expired pair is kept (nothing better exists) and reported as such.
    status = fleet_agent("status", "--state-dir", state).json()
    assert (status["state"], status["serial"]) == ("expired", expired_serial)
