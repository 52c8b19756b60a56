"""The agent tells the truth: `status` and `run` against a real `fleet serve` and a real broker.

The broker is the embedded one (``broker_plugins.amqtt``, the same code as
`fleet-broker amqtt`), following the server's SQLite store; admins act through
the real `fleet` CLI. The agent is the real `fleet-agent` process.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from fleet.records import EnrollmentToken
from fleet.tokens import new_token, token_sha256
from tests.integration.agent.conftest import AgentWorld
from tests.integration.agent.test_expired import expire
from tests.integration.agent.test_run_agent import AgentProcess
from tests.support.agent import AgentRun, fleet_agent, verify_identity
from tests.support.amqtt_broker import BrokerThread, broker_settings, make_ca
from tests.support.redis_server import RedisServer

EXIT_REFUSED = 3
EXIT_REVOKED = 6


def wait_until(condition: Callable[[], Any], timeout: float, what: Callable[[], object]) -> Any:
    """Poll ``condition`` until it is truthy (its value); after ``timeout`` fail with ``what()``."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, what()
        time.sleep(0.05)
    return result


def status(state: Path, env: dict[str, str] | None = None) -> AgentRun:
    return fleet_agent("status", "--state-dir", state, env=env)


def fleet_cli(world: AgentWorld, *args: str) -> None:
    config = str(world.fleet.server.config_path)
    subprocess.run(
        [sys.executable, "-m", "fleet", *args, "--config", config],
        check=True,
        capture_output=True,
        timeout=60,
    )


@dataclasses.dataclass
class Enrolled:
    device_id: str
    state: Path
    serial: str


def enrolled(world: AgentWorld, tmp_path: Path) -> Enrolled:
    device = world.fleet.new_device()
    state = tmp_path / "state"
    run = world.enroll(device, state)
    assert run.returncode == 0, run
    return Enrolled(device.device_id, state, verify_identity(state)["serial"])


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


@pytest.fixture
def broker(world: AgentWorld, tmp_path: Path) -> Iterator[BrokerThread]:
    with_broker = BrokerThread(broker_settings(world.fleet.server, tmp_path)).start()
    try:
        yield with_broker
    finally:
        with_broker.stop()


def _connected(state: Path) -> dict[str, Any] | None:
    report: dict[str, Any] = status(state).json()
    broker = report["broker"] or {}
    return report if broker.get("state") == "connected" and report["agent_running"] else None


# -- revocation ends the run ---------------------------------------------------------------------


def test_revoking_a_running_agents_device_stops_it_with_exit_6_and_status_says_revoked(
    world: AgentWorld, broker: BrokerThread, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    device = enrolled(world, tmp_path)
    agent = AgentProcess(device.state, broker.port, "--heartbeat", "1", "--reconnect-max", "2")
    agents.append(agent)
    report = wait_until(lambda: _connected(device.state), 20, agent.log)
    assert report["state"] == "ok", report
    assert report["broker"]["summary"] == f"connected to 127.0.0.1:{broker.port}"

    fleet_cli(world, "device", "revoke", device.device_id, "--reason", "keyCompromise")
    revoked_at = time.monotonic()
    # The broker kicks the session and refuses the reconnect ("not authorized", no
    # reason); the agent asks the EST server, which says device_revoked: exit 6.
    code = agent.proc.wait(timeout=30)
    took = time.monotonic() - revoked_at
    log = agent.log()
    assert code == EXIT_REVOKED, log
    assert took < 20, (took, log)
    assert "asking the EST server" in log
    assert "403 certificate_revoked" in log  # the device's certificates went with it
    # The broker did refuse the reconnect (deciding on the device or on its certificate).
    assert broker.refused("device_revoked") + broker.refused("certificate_revoked") >= 1

    after = status(device.state)
    assert after.returncode == EXIT_REVOKED, after
    report = after.json()
    assert (report["state"], report["reason"]) == ("revoked", "certificate_revoked"), report
    assert report["serial"] == device.serial  # the certificate is still on disk, and revoked
    assert report["agent_running"] is False
    assert report["broker"]["state"] == "stopped"
    assert report["broker"]["reason"] == "certificate_revoked"
    assert "fleet-agent run stopped (certificate_revoked" in report["broker"]["summary"]

    # Started again (by hand: the unit's RestartPreventExitStatus keeps systemd from it),
    # it does not loop: it asks once and exits 6 again.
    again = fleet_agent(
        "run", "--state-dir", device.state, "--mqtt", f"127.0.0.1:{broker.port}", timeout=30
    )
    assert again.returncode == EXIT_REVOKED, again


# -- a broker refusal that is not a revocation ----------------------------------------------------


def test_broker_refusing_the_certificate_in_tls_shows_refused_with_reason_and_backoff(
    world: AgentWorld, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    # A broker that trusts another CA for client certificates: it hangs up on every
    # connection once it has seen the certificate (TLS 1.3: after our side of the
    # handshake, before CONNACK). Not a revocation: the agent backs off.
    other, _ = make_ca("some other fleet")
    bundle = tmp_path / "other-ca.pem"
    bundle.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    settings = broker_settings(world.fleet.server, tmp_path, fleet_ca=bundle)
    with_broker = BrokerThread(settings).start()
    try:
        device = enrolled(world, tmp_path)
        agent = AgentProcess(device.state, with_broker.port, "--reconnect-max", "2")
        agents.append(agent)

        def refused() -> dict[str, Any] | None:
            report: dict[str, Any] = status(device.state).json()
            broker = report["broker"] or {}
            return report if broker.get("state") == "refused" else None

        report = wait_until(refused, 20, agent.log)
        assert report["state"] == "broker_refused", report
        assert report["certificate_state"] == "ok"
        assert report["broker"]["reason"] == "tls_failed", report
        assert report["broker"]["retry_at"] is not None
        assert "before answering CONNECT" in report["broker"]["detail"]
        assert "backing off until" in report["broker"]["summary"]
        assert status(device.state).returncode == 0  # the certificate itself is fine
        # Backing off, not spinning, and not exiting; the EST server was not bothered.
        wait_until(lambda: status(device.state).json()["broker"]["attempts"] >= 3, 20, agent.log)
        assert agent.proc.poll() is None, agent.log()
        assert "asking the EST server" not in agent.log()
        assert status(device.state).json()["serial"] == device.serial
        code, _ = agent.stop()
        assert code == 0, agent.log()
    finally:
        with_broker.stop()
    stopped = status(device.state).json()
    assert stopped["broker"]["state"] == "stopped"
    assert stopped["state"] == "ok"  # what a stopped run saw is history, not the state


@pytest.mark.needs_binary("redis-server")
def test_not_authorized_from_a_stale_broker_is_checked_with_est_once_then_backed_off(
    world: AgentWorld, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    # A broker that cannot reach its revocation feed fails closed: "not authorized"
    # for everyone, with no reason on the wire. The agent cannot tell that from a
    # revocation, so it asks the EST server once (a renewal: it is in good standing)
    # and then backs off, running, reporting the refusal.
    feed = RedisServer(tmp_path / "redis")
    feed.start()
    settings = broker_settings(world.fleet.server, tmp_path, store_url=feed.url, max_staleness=1.0)
    with_broker = BrokerThread(settings).start()
    try:
        feed.stop()  # the feed goes away; a second later the broker refuses everyone

        def usable() -> float | None:
            registry = with_broker.broker.metrics.registry
            return registry.get_sample_value("fleet_broker_revocation_usable")

        wait_until(lambda: usable() == 0.0, 20, usable)
        device = enrolled(world, tmp_path)
        agent = AgentProcess(device.state, with_broker.port, "--reconnect-max", "2")
        agents.append(agent)

        def renewed_and_refused() -> dict[str, Any] | None:
            report: dict[str, Any] = status(device.state).json()
            broker = report["broker"] or {}
            if report["serial"] != device.serial and broker.get("state") == "refused":
                return report
            return None

        report = wait_until(renewed_and_refused, 30, agent.log)
        assert report["state"] == "broker_refused", report
        assert report["reason"] is None  # the server has nothing against this device
        assert report["broker"]["reason"] == "auth_failed", report
        assert "Not authorized" in report["broker"]["detail"]
        assert report["broker"]["retry_at"] is not None
        attempts = report["broker"]["attempts"]
        wait_until(
            lambda: status(device.state).json()["broker"]["attempts"] > attempts + 1, 20, agent.log
        )
        assert agent.proc.poll() is None, agent.log()
        assert agent.log().count("still in good standing") == 1, agent.log()  # asked once
        assert with_broker.refused("revocation_state_stale") >= 2
        code, _ = agent.stop()
        assert code == 0, agent.log()
    finally:
        with_broker.stop()
        feed.stop()


# -- EST refusals and holds, as status reports them ----------------------------------------------


def test_suspended_device_status_says_suspended(world: AgentWorld, tmp_path: Path) -> None:
    device = enrolled(world, tmp_path)
    fleet_cli(world, "device", "suspend", device.device_id, "--note", "stolen van")
    renew = fleet_agent("renew", "--force", "--state-dir", device.state)
    assert renew.returncode == EXIT_REFUSED, renew
    assert "device_suspended" in renew.stderr
    assert "fleet device resume" in renew.stderr
    report = status(device.state)
    assert report.returncode == EXIT_REFUSED, report
    assert (report.json()["state"], report.json()["reason"]) == ("suspended", "device_suspended")

    fleet_cli(world, "device", "resume", device.device_id)
    renewed = fleet_agent("renew", "--force", "--state-dir", device.state)
    assert renewed.returncode == 0, renewed
    back = status(device.state)
    assert back.returncode == 0, back
    assert (back.json()["state"], back.json()["reason"]) == ("ok", None)


def test_revoked_device_renew_exits_6_and_status_says_revoked(
    world: AgentWorld, tmp_path: Path
) -> None:
    device = enrolled(world, tmp_path)
    fleet_cli(world, "device", "revoke", device.device_id, "--reason", "keyCompromise")
    renew = fleet_agent("renew", "--force", "--state-dir", device.state)
    assert renew.returncode == EXIT_REVOKED, renew
    assert "certificate_revoked" in renew.stderr
    report = status(device.state)
    assert report.returncode == EXIT_REVOKED, report
    assert (report.json()["state"], report.json()["reason"]) == ("revoked", "certificate_revoked")


def _token_enrolled(world: AgentWorld, tmp_path: Path) -> Enrolled:
    """Enrolled with a one-time token: no bootstrap certificate to fall back on."""
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
    run = fleet_agent(
        "enroll", "--server", world.server, "--ca-fingerprint", world.fingerprint,
        "--token-file", token_file, "--device-id", device.device_id, "--state-dir", state,
    )  # fmt: skip
    assert run.returncode == 0, run
    return Enrolled(device.device_id, state, verify_identity(state)["serial"])


def test_certificate_the_server_calls_expired_is_expired_whatever_the_device_clock_says(
    world: AgentWorld, tmp_path: Path
) -> None:
    device = _token_enrolled(world, tmp_path)
    expire(world, verify_identity(device.state))
    by_its_clock = status(device.state)
    assert by_its_clock.returncode == EXIT_REFUSED, by_its_clock
    assert by_its_clock.json()["state"] == "expired"
    # A device clock two days slow thinks the certificate is still good...
    slow = {"FLEET_AGENT_CLOCK_OFFSET": str(-2 * 86400)}
    assert status(device.state, env=slow).json()["certificate_state"] in ("ok", "renewal_due")
    # ... until the server says otherwise; then status believes the server.
    renew = fleet_agent("renew", "--force", "--state-dir", device.state, env=slow)
    assert renew.returncode == EXIT_REFUSED, renew
    assert "certificate_expired" in renew.stderr
    report = status(device.state, env=slow)
    assert report.returncode == EXIT_REFUSED, report
    assert (report.json()["state"], report.json()["reason"]) == ("expired", "certificate_expired")


# -- a failed first enrollment leaves nothing behind ---------------------------------------------


def test_failed_first_enrollment_leaves_no_state_directory(
    world: AgentWorld, tmp_path: Path
) -> None:
    device = world.fleet.new_device()
    state = tmp_path / "state"
    wrong_pin = fleet_agent(
        "enroll", "--server", world.server, "--ca-fingerprint", "ab" * 32,
        "--bootstrap-cert", device.cert, "--bootstrap-key", device.key, "--state-dir", state,
    )  # fmt: skip
    assert wrong_pin.returncode == 2, wrong_pin
    assert not state.exists(), sorted(p.name for p in state.iterdir())

    # Refused by policy (403): a revoked device cannot enroll.
    fleet_cli(world, "device", "revoke", device.device_id, "--reason", "keyCompromise")
    refused = world.enroll(device, state, "--max-wait", "0")
    assert refused.returncode == EXIT_REVOKED, refused
    assert not state.exists(), sorted(p.name for p in state.iterdir())

    # An empty directory made beforehand (systemd StateDirectory=) stays, empty.
    state.mkdir(mode=0o700)
    refused = world.enroll(device, state, "--max-wait", "0")
    assert refused.returncode == EXIT_REVOKED, refused
    assert list(state.iterdir()) == []

    # Held for approval is not a failure: what is needed to resume stays.
    held_state = tmp_path / "held"
    held = world.enroll(world.fleet.new_device(in_manifest=False), held_state, "--max-wait", "0")
    assert held.returncode == 5, held
    kept = {p.name for p in held_state.iterdir()}
    assert {"agent.json", "cacerts.pem", "op1.key", "status.json"} <= kept, kept


def test_bootstrap_key_readable_by_others_is_refused(world: AgentWorld, tmp_path: Path) -> None:
    device = world.fleet.new_device()
    device.key.chmod(0o644)
    state = tmp_path / "state"
    loose = world.enroll(device, state)
    assert loose.returncode == 2, loose
    assert "readable by others" in loose.stderr
    assert f"chmod 600 {device.key}" in loose.stderr
    assert not state.exists()
    device.key.chmod(0o600)
    assert world.enroll(device, state).returncode == 0


# -- every command helps and says its version ----------------------------------------------------


@pytest.mark.parametrize("command", ["fleet", "fleet-agent", "fleet-broker", "fleet-sim"])
def test_short_help_and_version(command: str) -> None:
    exe = Path(sys.executable).with_name(command)
    short = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=60, check=False)
    assert short.returncode == 0, short
    assert short.stdout.startswith(f"Usage: {command} ")
    version = subprocess.run(
        [exe, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert version.returncode == 0, version
    assert version.stdout.startswith(f"{command}, version "), version.stdout


def test_agent_help_documents_every_option() -> None:
    from device_agent.cli import main

    commands = [main, *main.commands.values()]  # type: ignore[attr-defined]
    undocumented = [
        f"{command.name} {param.opts[0]}"
        for command in commands
        for param in command.params
        if param.param_type_name == "option" and not getattr(param, "help", None)
    ]
    assert undocumented == []
    exe = Path(sys.executable).with_name("fleet-agent")
    for name in main.commands:  # type: ignore[attr-defined]
        shown = subprocess.run([exe, name, "-h"], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown
        assert "--state-dir" in shown.stdout
