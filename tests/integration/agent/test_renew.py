"""`fleet-agent renew` against a real `fleet serve`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.agent.conftest import AgentWorld
from tests.support.agent import CountingGate, fleet_agent, verify_identity

pytestmark = pytest.mark.needs_binary("openssl")


def _enrolled(world: AgentWorld, state: Path) -> dict[str, object]:
    run = world.enroll(world.fleet.new_device(), state)
    assert run.returncode == 0, run
    return verify_identity(state)


def test_renew_when_not_due_does_nothing(world: AgentWorld, tmp_path: Path) -> None:
    before = _enrolled(world, tmp_path / "state")
    run = fleet_agent("renew", "--state-dir", tmp_path / "state")
    assert run.returncode == 0, run
    assert "not due" in run.stdout
    assert verify_identity(tmp_path / "state")["serial"] == before["serial"]


def test_forced_renewal_rekeys_and_removes_the_old_pair(world: AgentWorld, tmp_path: Path) -> None:
    state = tmp_path / "state"
    before = _enrolled(world, state)
    old_key = (state / "op1.key").read_bytes()
    run = fleet_agent("renew", "--state-dir", state, "--force")
    assert run.returncode == 0, run
    after = verify_identity(state)
    assert after["serial"] != before["serial"]
    assert after["device_id"] == before["device_id"]
    assert (state / "op2.key").read_bytes() != old_key  # a new key by default
    assert not (state / "op1.key").exists()
    assert not (state / "op1.pem").exists()
    assert (state / "current").read_text().strip() == "2"
    # The renewed certificate renews in turn.
    again = fleet_agent("renew", "--state-dir", state, "--force")
    assert again.returncode == 0, again
    verify_identity(state)


def test_old_pair_is_kept_until_the_new_one_is_proven(world: AgentWorld, tmp_path: Path) -> None:
    state = tmp_path / "state"
    before = _enrolled(world, state)
    # Stop right after the new certificate is on disk, before the proof.
    crashed = fleet_agent(
        "renew", "--state-dir", state, "--force", env={"FLEET_AGENT_CRASH_AT": "cert_written"}
    )
    assert crashed.returncode == 137
    assert {p.name for p in state.glob("op*")} == {"op1.key", "op1.pem", "op2.key", "op2.pem"}
    status = verify_identity(state)
    assert status["serial"] == before["serial"]  # still the proven pair
    assert status["renewal_pending"] is True
    # The next run proves the pending pair and switches to it, without a new request.
    run = fleet_agent("renew", "--state-dir", state)
    assert run.returncode == 0, run
    assert "interrupted renewal" in run.stdout
    assert verify_identity(state)["serial"] != before["serial"]
    assert {p.name for p in state.glob("op*")} == {"op2.key", "op2.pem"}


def test_server_down_is_transient_and_backs_off(world: AgentWorld, tmp_path: Path) -> None:
    state = tmp_path / "state"
    before = _enrolled(world, state)
    config = json.loads((state / "agent.json").read_text())
    with CountingGate(world.fleet.server.port) as gate:  # closed: server down
        config["server"] = f"https://127.0.0.1:{gate.port}"
        for name in ("agent.json", "agent.json.bak"):
            (state / name).write_text(json.dumps(config))
        slow = {"FLEET_AGENT_BACKOFF_FLOOR": "60"}
        failed = fleet_agent("renew", "--state-dir", state, "--force", env=slow)
        assert failed.returncode == 4, failed
        assert "next attempt in" in failed.stderr
        attempts = gate.refused
        status = fleet_agent("status", "--state-dir", state).json()
        assert status["failures"] == 1
        assert status["last_error"]
        assert status["next_attempt"]
        # Due (renewal fraction 1 %), but inside the backoff window: nothing is sent.
        due = {"FLEET_AGENT_RENEW_FRACTION": "0.01", "FLEET_AGENT_RENEW_JITTER": "0"}
        waiting = fleet_agent("renew", "--state-dir", state, env=due)
        assert waiting.returncode == 4, waiting
        assert "backing off" in waiting.stderr
        assert gate.refused == attempts == 1
        gate.open = True
        ok = fleet_agent("renew", "--state-dir", state, "--force")
        assert ok.returncode == 0, ok
    after = verify_identity(state)
    assert after["serial"] != before["serial"]
    assert after["failures"] == 0
    assert after["last_error"] is None
