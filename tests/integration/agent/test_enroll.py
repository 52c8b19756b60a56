"""`fleet-agent enroll` and `status` against a real `fleet serve`."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet.records import DeviceState, EnrollmentToken
from fleet.tokens import new_token, token_sha256
from tests.integration.agent.conftest import AgentWorld
from tests.support.agent import CountingGate, fleet_agent, verify_identity

pytestmark = pytest.mark.needs_binary("openssl")


def test_enroll_with_bootstrap_certificate(world: AgentWorld, tmp_path: Path) -> None:
    device = world.fleet.new_device()
    state = tmp_path / "state"
    run = world.enroll(device, state)
    assert run.returncode == 0, run
    assert f"enrolled as {device.device_id}" in run.stdout
    assert state.stat().st_mode & 0o777 == 0o700
    report = verify_identity(state)
    assert report["device_id"] == device.device_id
    assert report["last_error"] is None
    not_before = dt.datetime.fromisoformat(report["not_before"])
    not_after = dt.datetime.fromisoformat(report["not_after"])
    next_renewal = dt.datetime.fromisoformat(report["next_renewal"])
    lifetime = not_after - not_before
    # 2/3 of the lifetime, minus up to 10 % jitter (earlier only).
    assert not_before + lifetime * 0.56 <= next_renewal <= not_before + lifetime * 0.67
    # Enrolling again is a no-op that says so (no second request, no clone alarm).
    again = world.enroll(device, state)
    assert again.returncode == 0
    assert "already enrolled" in again.stdout


def test_enroll_with_a_one_time_token(world: AgentWorld, tmp_path: Path) -> None:
    device = world.fleet.new_device()
    token = new_token()
    now = dt.datetime.now(dt.UTC)
    record = EnrollmentToken(
        device.device_id, token_sha256(token), now, now + dt.timedelta(hours=1)
    )
    world.fleet.server.store(lambda s: s.put_enrollment_token(record))
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    args = ["--server", world.server, "--ca-fingerprint", world.fingerprint]
    state = tmp_path / "state"
    token_file.chmod(0o644)
    loose = fleet_agent("enroll", *args, "--token-file", token_file, "--device-id",
                        device.device_id, "--state-dir", state)  # fmt: skip
    assert loose.returncode == 2
    assert "readable by others" in loose.stderr
    token_file.chmod(0o600)
    run = fleet_agent("enroll", *args, "--token-file", token_file, "--device-id",
                      device.device_id, "--state-dir", state)  # fmt: skip
    assert run.returncode == 0, run
    assert token not in run.stdout + run.stderr
    assert verify_identity(state)["device_id"] == device.device_id
    # Used once: another device state enrolling with it is refused by policy.
    reused = fleet_agent("enroll", *args, "--token-file", token_file, "--device-id",
                         device.device_id, "--state-dir", tmp_path / "other")  # fmt: skip
    assert reused.returncode == 3, reused
    assert "token_invalid" in reused.stderr


def test_wrong_fingerprint_pin_is_refused(world: AgentWorld, tmp_path: Path) -> None:
    device = world.fleet.new_device()
    run = fleet_agent(
        "enroll", "--server", world.server, "--ca-fingerprint", "ab" * 32,
        "--bootstrap-cert", device.cert, "--bootstrap-key", device.key,
        "--state-dir", tmp_path / "state",
    )  # fmt: skip
    assert run.returncode == 2, run
    assert "pinned fleet root" in run.stderr
    assert "--ca-fingerprint" in run.stderr
    bad = world.enroll(device, tmp_path / "s2", "--max-wait", "0")
    assert bad.returncode == 0  # the same device with the right pin is fine
    malformed = fleet_agent("status", "--state-dir", tmp_path / "missing")
    assert malformed.returncode == 2


def test_held_device_waits_for_approval(world: AgentWorld, tmp_path: Path) -> None:
    device = world.fleet.new_device(in_manifest=False)
    # Without patience: exit 5 (pending) and a status that says why.
    quick = world.enroll(device, tmp_path / "state", "--max-wait", "0")
    assert quick.returncode == 5, quick
    assert "approv" in quick.stderr
    status = fleet_agent("status", "--state-dir", tmp_path / "state")
    assert status.returncode == 5, status  # held, not "no identity"
    report = status.json()
    assert (report["state"], report["reason"]) == ("pending_approval", "enrollment_pending")
    assert "approval" in report["last_error"]

    waiting = subprocess.Popen(
        [sys.executable, "-m", "device_agent", "enroll", "--server", world.server,
         "--ca-fingerprint", world.fingerprint, "--bootstrap-cert", str(device.cert),
         "--bootstrap-key", str(device.key), "--state-dir", str(tmp_path / "state"),
         "--max-wait", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_fast_backoff(),
    )  # fmt: skip
    time.sleep(1.0)
    assert waiting.poll() is None  # still waiting out 202s

    async def approve(store: object) -> None:
        await store.set_device_state(  # type: ignore[attr-defined]
            device.device_id, DeviceState.REGISTERED, expected={DeviceState.PENDING},
            now=dt.datetime.now(dt.UTC),
        )  # fmt: skip

    world.fleet.server.store(approve)
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, (out, err)
    assert "retrying in" in err  # it said what it was doing
    assert verify_identity(tmp_path / "state")["device_id"] == device.device_id


def test_server_down_at_boot_then_up(world: AgentWorld, tmp_path: Path) -> None:
    device = world.fleet.new_device()
    with CountingGate(world.fleet.server.port) as gate:
        enrolling = subprocess.Popen(
            [sys.executable, "-m", "device_agent", "enroll",
             "--server", f"https://127.0.0.1:{gate.port}", "--ca-fingerprint", world.fingerprint,
             "--bootstrap-cert", str(device.cert), "--bootstrap-key", str(device.key),
             "--state-dir", str(tmp_path / "state"), "--max-wait", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_fast_backoff(),
        )  # fmt: skip
        time.sleep(1.5)
        down_attempts = gate.refused
        gate.open = True
        out, err = enrolling.communicate(timeout=30)
    assert enrolling.returncode == 0, (out, err)
    # Backoff 0.5 s doubling with jitter: a handful of attempts in 1.5 s, not hundreds.
    assert 2 <= down_attempts <= 5, down_attempts
    assert "retrying in" in err
    verify_identity(tmp_path / "state")


@pytest.mark.parametrize("offset", ["-600", "600"])
def test_device_clock_skewed_ten_minutes(world: AgentWorld, tmp_path: Path, offset: str) -> None:
    device = world.fleet.new_device()
    env = {"FLEET_AGENT_CLOCK_OFFSET": offset}
    state = tmp_path / "state"
    run = world.enroll(device, state, env=env)
    assert run.returncode == 0, run
    renewed = fleet_agent("renew", "--state-dir", state, "--force", env=env)
    assert renewed.returncode == 0, renewed
    not_due = fleet_agent("renew", "--state-dir", state, env=env)
    assert not_due.returncode == 0
    assert "not due" in not_due.stdout
    verify_identity(state)


def _fast_backoff() -> dict[str, str]:
    import os

    return {
        **os.environ,
        "FLEET_AGENT_BACKOFF_FLOOR": "0.2",
        "FLEET_AGENT_BACKOFF_BASE": "0.5",
        "FLEET_AGENT_BACKOFF_CAP": "2",
    }
