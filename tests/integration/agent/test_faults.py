"""Never brick: kill -9 at every step, corrupted and truncated state files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from device_agent.testhooks import CRASH_STEPS
from fleet.authority.admin import approve_device
from fleet.records import DeviceState
from fleet.store.protocol import Store
from tests.integration.agent.conftest import AgentWorld
from tests.support.agent import fleet_agent, verify_identity

pytestmark = pytest.mark.needs_binary("openssl")


def _enrolled(world: AgentWorld, state: Path) -> dict[str, object]:
    run = world.enroll(world.fleet.new_device(), state)
    assert run.returncode == 0, run
    return verify_identity(state)


def test_kill_at_every_renewal_step(world: AgentWorld, tmp_path: Path) -> None:
    state = tmp_path / "state"
    _enrolled(world, state)
    for step in CRASH_STEPS:
        crashed = fleet_agent(
            "renew", "--state-dir", state, "--force", env={"FLEET_AGENT_CRASH_AT": step}
        )
        assert crashed.returncode == 137, (step, crashed)
        verify_identity(state)  # a working identity after the crash ...
        renewed = fleet_agent("renew", "--state-dir", state, "--force")
        assert renewed.returncode == 0, (step, renewed)
        report = verify_identity(state)  # ... and after the next renewal
        assert report["renewal_pending"] is False
        assert len(list(state.glob("op*.pem"))) == 1, (step, sorted(state.iterdir()))
    # Crash after crash, each at a later step, with no clean run in between.
    for step in (*CRASH_STEPS, *reversed(CRASH_STEPS)):
        crashed = fleet_agent(
            "renew", "--state-dir", state, "--force", env={"FLEET_AGENT_CRASH_AT": step}
        )
        # 0: the run finished the renewal an earlier crash interrupted, before this step.
        assert crashed.returncode in (0, 137), (step, crashed)
        verify_identity(state)
    renewed = fleet_agent("renew", "--state-dir", state, "--force")
    assert renewed.returncode == 0, renewed
    verify_identity(state)


def test_kill_at_every_enrollment_step(world: AgentWorld, tmp_path: Path) -> None:
    for step in CRASH_STEPS:
        device = world.fleet.new_device()
        state = tmp_path / step
        crashed = world.enroll(device, state, env={"FLEET_AGENT_CRASH_AT": step})
        assert crashed.returncode == 137, (step, crashed)
        # Enrolling again reuses the key generated before the crash: a lost reply
        # gets the same certificate back instead of looking like a clone.
        again = world.enroll(device, state)
        assert again.returncode == 0, (step, again)
        assert verify_identity(state)["device_id"] == device.device_id


@pytest.mark.parametrize(
    ("victim", "damage"),
    [
        ("current", b"\x00garbage"),
        ("cacerts.pem", b"-----BEGIN CERTIFICATE-----\nMIIB"),
        ("agent.json", b'{"server": '),
        ("status.json", b"\xff\xfe"),
    ],
)
def test_damaged_metadata_is_recovered(
    world: AgentWorld, tmp_path: Path, victim: str, damage: bytes
) -> None:
    state = tmp_path / "state"
    before = _enrolled(world, state)
    (state / victim).write_bytes(damage)
    status = fleet_agent("status", "--state-dir", state)
    assert status.returncode == 0, status
    assert status.json()["serial"] == before["serial"]
    renewed = fleet_agent("renew", "--state-dir", state, "--force")
    assert renewed.returncode == 0, renewed
    assert verify_identity(state)["serial"] != before["serial"]


def test_truncated_current_certificate_falls_back_to_the_previous_pair(
    world: AgentWorld, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    before = _enrolled(world, state)
    crashed = fleet_agent(
        "renew", "--state-dir", state, "--force", env={"FLEET_AGENT_CRASH_AT": "proven"}
    )
    assert crashed.returncode == 137
    # Generation 2 is current, generation 1 not yet removed; damage generation 2.
    pem = (state / "op2.pem").read_bytes()
    (state / "op2.pem").write_bytes(pem[: len(pem) // 2])
    status = fleet_agent("status", "--state-dir", state)
    assert status.returncode == 0, status
    report = status.json()
    assert report["serial"] == before["serial"]
    assert any("corrupted" in w for w in report["warnings"])
    renewed = fleet_agent("renew", "--state-dir", state, "--force")
    assert renewed.returncode == 0, renewed
    verify_identity(state)


def test_lost_only_certificate_is_recovered_with_the_bootstrap_credential(
    world: AgentWorld, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    _enrolled(world, state)
    (state / "op1.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\ntrunc")
    status = fleet_agent("status", "--state-dir", state)
    assert status.returncode == 2  # no usable identity, and it says why
    assert status.json()["state"] == "no_identity"
    assert any("op1.pem" in w for w in status.json()["warnings"])
    # The key survived: enrolling again with it is a lost reply, not a clone.
    renewed = fleet_agent("renew", "--state-dir", state)
    assert renewed.returncode == 0, renewed
    assert "re-enrolled" in renewed.stdout
    verify_identity(state)


def test_lost_key_needs_approval_and_says_so(world: AgentWorld, tmp_path: Path) -> None:
    state = tmp_path / "state"
    report = _enrolled(world, state)
    (state / "op1.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    renewed = fleet_agent("renew", "--state-dir", state)
    # A new key with a used bootstrap certificate looks like a clone: held (exit 5).
    assert renewed.returncode == 5, renewed
    assert "approv" in renewed.stderr
    device_id = str(report["device_id"])

    # The device stayed active; the replay is a replacement request the admin approves.
    assert world.fleet.server.store(lambda s: s.get_device(device_id)).state is DeviceState.ACTIVE

    async def approve(store: Store) -> None:
        await approve_device(
            store, device_id, actor="admin:test", now=dt.datetime.now(dt.UTC), replace=True
        )

    world.fleet.server.store(approve)
    # The last attempt set a backoff; --force skips it (as the message said).
    again = fleet_agent("renew", "--state-dir", state, "--force")
    assert again.returncode == 0, again
    assert verify_identity(state)["device_id"] == device_id
