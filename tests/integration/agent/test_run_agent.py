"""`fleet-agent run` as a real process against a real `fleet serve` and a real Mosquitto.

The agent is enrolled with `fleet-agent enroll`; an observer device (an extra
ACL line lets it read ``devices/#``) watches its heartbeats, which carry the
serial of the certificate it presents. The broker checks a CRL written by
`fleet crl`, so revoking the pre-renewal certificate proves which one the
agent presents after a renewal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.agent.conftest import AgentWorld
from tests.support.agent import CountingGate, fleet_agent
from tests.support.mosquitto import Mosquitto, Observer, observer_acl

pytestmark = [pytest.mark.needs_binary("mosquitto"), pytest.mark.needs_binary("openssl")]

OBSERVER = "observer-agent-run"


@dataclasses.dataclass
class Broker:
    world: AgentWorld
    mosquitto: Mosquitto
    observer: Observer
    crl: Path

    def fleet_cli(self, *args: str) -> None:
        config = str(self.world.fleet.server.config_path)
        subprocess.run(
            [sys.executable, "-m", "fleet", *args, "--config", config],
            check=True,
            capture_output=True,
            timeout=60,
        )


@pytest.fixture(scope="module")
def broker(world: AgentWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    base = tmp_path_factory.mktemp("run-agent")
    crl = base / "fleet.crl.pem"
    fleet = world.fleet
    config = fleet.server.config_path
    subprocess.run(
        [sys.executable, "-m", "fleet", "crl", "--out", str(crl), "--config", str(config)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    mosquitto = Mosquitto(
        base / "mosquitto",
        fleet.server.data_dir,
        extra_acl=observer_acl(OBSERVER),
        crlfile=crl,
        persistence=True,
    ).start()
    try:
        device = fleet.new_device(device_id=OBSERVER)
        key, csr = fleet.csr(OBSERVER)
        cert = fleet.issued(fleet.enroll(device, csr), OBSERVER)
        observer = Observer(mosquitto, OBSERVER, cert, key, fleet.server.root_pem)
        try:
            yield Broker(world, mosquitto, observer, crl)
        finally:
            observer.close()
    finally:
        mosquitto.stop()


class AgentProcess:
    def __init__(self, state_dir: Path, mqtt_port: int, *extra: str) -> None:
        self.log_path = state_dir.parent / f"{state_dir.name}-run.log"
        env = {**os.environ, "FLEET_AGENT_BACKOFF_FLOOR": "0.5", "FLEET_AGENT_BACKOFF_BASE": "1"}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "device_agent", "run",
                    "--state-dir", str(state_dir),
                    "--mqtt", f"127.0.0.1:{mqtt_port}",
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # our own child, by its PID
            self.proc.wait(timeout=10)


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


def _enrolled(world: AgentWorld, tmp_path: Path) -> tuple[str, Path, str]:
    """(device id, state dir, serial) of a freshly enrolled agent."""
    device = world.fleet.new_device()
    state = tmp_path / "state"
    run = world.enroll(device, state)
    assert run.returncode == 0, run
    status = fleet_agent("status", "--state-dir", state).json()
    return device.device_id, state, status["serial"]


def _heartbeat(device_id: str, serial: str | None = None) -> Callable[[str, bytes], bool]:
    def match(topic: str, payload: bytes) -> bool:
        if topic != f"devices/{device_id}/status":
            return False
        return serial is None or json.loads(payload).get("cert_serial") == serial

    return match


def test_run_heartbeats_renews_reconnects_with_the_new_certificate_and_stops_on_sigterm(
    broker: Broker, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    device_id, state, old_serial = _enrolled(broker.world, tmp_path)
    agent = AgentProcess(state, broker.mosquitto.port, "--heartbeat", "1")
    agents.append(agent)

    _, payload = broker.observer.wait_for(_heartbeat(device_id, old_serial), timeout=20)
    body = json.loads(payload)
    assert body["device_id"] == device_id
    assert body["next_renewal"] > body["time"]  # a renewal is scheduled, not looping
    (line,) = broker.mosquitto.connections_of(device_id)
    assert f"u'{device_id}'" in line  # client id = device id = certificate CN
    assert " c0," in line  # persistent session (clean session off)

    # SIGUSR1: renew now. The agent renews over EST, then reconnects with the new pair.
    agent.proc.send_signal(signal.SIGUSR1)
    _, payload = broker.observer.wait_for(
        lambda t, p: _heartbeat(device_id)(t, p) and json.loads(p)["cert_serial"] != old_serial,
        timeout=30,
    )
    new_serial = json.loads(payload)["cert_serial"]
    status = fleet_agent("status", "--state-dir", state).json()
    assert status["serial"] == new_serial
    assert len(broker.mosquitto.connections_of(device_id)) == 2

    # Proof of what the broker sees: revoke the OLD certificate, make the broker
    # drop every session, and the agent still gets back in.
    broker.fleet_cli("cert", "revoke", old_serial, "--reason", "superseded")
    broker.fleet_cli("crl", "--out", str(broker.crl))
    broker.mosquitto.restart()  # persistence: the observer's subscription survives
    deadline = time.monotonic() + 30
    while len(broker.mosquitto.connections_of(device_id)) < 3:  # the log is appended to
        assert time.monotonic() < deadline, (broker.mosquitto.log()[-3000:], agent.log())
        time.sleep(0.1)
    broker.observer.drain()
    broker.observer.wait_for(_heartbeat(device_id, new_serial), timeout=30)

    code, took = agent.stop()
    assert code == 0, agent.log()
    assert took < 5, took
    log = agent.log()
    assert "renewed: serial" in log
    assert "reconnecting with the renewed certificate" in log
    assert "stopped" in log


def test_run_with_broker_down_at_start_backs_off_then_connects(
    broker: Broker, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    device_id, state, serial = _enrolled(broker.world, tmp_path)
    with CountingGate(broker.mosquitto.port) as gate:
        agent = AgentProcess(state, gate.port, "--reconnect-max", "2")
        agents.append(agent)
        time.sleep(6)
        refused = gate.refused
        # Exponential backoff from 1 s, capped at 2 s, jittered: a handful of
        # attempts in 6 s (interpreter start-up included), never a tight loop.
        assert 2 <= refused <= 8, (refused, agent.log())
        assert "reconnecting in" in agent.log()
        gate.open = True
        broker.observer.wait_for(_heartbeat(device_id, serial), timeout=15)
        code, _ = agent.stop()
        assert code == 0, agent.log()


def test_run_without_an_identity_is_a_config_error(tmp_path: Path) -> None:
    run = fleet_agent("run", "--state-dir", tmp_path / "empty", "--mqtt", "127.0.0.1:1", timeout=30)
    assert run.returncode == 2, run
    assert "enroll" in run.stderr.lower()


def test_one_command_at_a_time_per_state_dir_and_a_crash_frees_it(
    broker: Broker, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    device_id, state, serial = _enrolled(broker.world, tmp_path)
    agent = AgentProcess(state, broker.mosquitto.port, "--heartbeat", "1")
    agents.append(agent)
    broker.observer.wait_for(_heartbeat(device_id, serial), timeout=20)

    busy = fleet_agent("renew", "--force", "--state-dir", state)
    assert busy.returncode == 2, busy
    assert f"another fleet-agent (pid {agent.proc.pid})" in busy.stderr
    assert f"kill -USR1 {agent.proc.pid}" in busy.stderr
    assert fleet_agent("status", "--state-dir", state).json()["serial"] == serial  # untouched

    agent.kill()  # SIGKILL: the kernel drops the lock with the process
    renewed = fleet_agent("renew", "--force", "--state-dir", state)
    assert renewed.returncode == 0, renewed
    assert fleet_agent("status", "--state-dir", state).json()["serial"] != serial


def test_run_exits_6_when_the_broker_refuses_a_revoked_certificate_in_tls(
    broker: Broker, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    device_id, state, serial = _enrolled(broker.world, tmp_path)
    agent = AgentProcess(state, broker.mosquitto.port, "--heartbeat", "1")
    agents.append(agent)
    broker.observer.wait_for(_heartbeat(device_id, serial), timeout=20)

    # Mosquitto checks the CRL at the handshake: after the restart it ends the
    # agent's handshake with a TLS alert "certificate revoked". The agent asks
    # the EST server before believing it (403 certificate_revoked), then exits 6.
    broker.fleet_cli("device", "revoke", device_id, "--reason", "keyCompromise")
    broker.fleet_cli("crl", "--out", str(broker.crl))
    broker.mosquitto.restart()
    code = agent.proc.wait(timeout=30)
    log = agent.log()
    assert code == 6, log
    assert "certificate_revoked" in log
    assert "still in good standing" in log  # it asked before concluding
    status = fleet_agent("status", "--state-dir", state)
    assert status.returncode == 6, status
    report = status.json()
    assert (report["state"], report["reason"]) == ("revoked", "certificate_revoked"), report
    assert report["broker"]["state"] == "stopped"
