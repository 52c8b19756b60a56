"""Clone handling that protects the real device, end to end.

A real `fleet-agent` enrolls a device against a real `fleet serve`; a second
agent (a fresh state directory: a factory-reset device, or a clone holding the
factory certificate and key) presents the same bootstrap certificate with a new
key. The admin uses the real `fleet` CLI on the server's data directory; CRL and
OCSP answers are read over HTTPS and checked with openssl.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.integration.agent.conftest import FAST_SERVER_ENV, AgentWorld
from tests.integration.est.conftest import Device, running_fleet
from tests.support.agent import fleet_agent, root_fingerprint, verify_identity
from tests.support.amqtt_broker import AmqttEnv
from tests.support.openssl import openssl

pytestmark = pytest.mark.needs_binary("openssl")


def fleet_cli(world: AgentWorld, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `fleet` command, locally on the running server's data directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env["FLEET_CONFIG"] = str(world.fleet.server.config_path)
    return subprocess.run(
        [sys.executable, "-m", "fleet", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def show(world: AgentWorld, device_id: str) -> dict[str, Any]:
    result = fleet_cli(world, "device", "show", device_id, "--json")
    assert result.returncode == 0, result
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def good_serials(world: AgentWorld, device_id: str) -> list[str]:
    return [c["serial"] for c in show(world, device_id)["certificates"] if c["status"] == "good"]


def enrolled_pair(world: AgentWorld, tmp_path: Path) -> tuple[Device, Path, dict[str, Any]]:
    """A device enrolled by the agent in ``tmp_path/real``, and its status report."""
    device = world.fleet.new_device()
    state = tmp_path / "real"
    run = world.enroll(device, state)
    assert run.returncode == 0, run
    return device, state, verify_identity(state)


def replay(world: AgentWorld, device: Device, state: Path) -> None:
    """The same bootstrap certificate from a fresh device (new key): held, not refused."""
    held = world.enroll(device, state, "--max-wait", "0")
    assert held.returncode == 5, held  # pending (202)
    assert "approv" in held.stderr


def crl_entry(world: AgentWorld, serial_hex: str) -> x509.RevokedCertificate | None:
    import ssl

    context = ssl.create_default_context(cafile=str(world.fleet.server.root_pem))
    with urllib.request.urlopen(f"{world.server}/crl", timeout=10, context=context) as reply:  # noqa: S310
        crl = x509.load_der_x509_crl(reply.read())
    return crl.get_revoked_certificate_by_serial_number(int(serial_hex, 16))


def crl_reason(world: AgentWorld, serial_hex: str) -> x509.ReasonFlags | None:
    entry = crl_entry(world, serial_hex)
    assert entry is not None, f"serial {serial_hex} is not on the CRL"
    return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason


def ocsp(world: AgentWorld, cert: Path) -> str:
    server = world.fleet.server
    chain = cert.parent / "chain.pem"
    chain.write_bytes(server.root_pem.read_bytes() + server.issuing_pem.read_bytes())
    proc = openssl(
        "ocsp", "-issuer", server.issuing_pem, "-cert", cert, "-url", f"{world.server}/ocsp",
        "-CAfile", chain, check=False,
    )  # fmt: skip
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


@pytest.fixture
def broker(world: AgentWorld, tmp_path: Path) -> Iterator[AmqttEnv]:
    """The embedded broker, following the server's store (revocations reach it live)."""
    (tmp_path / "broker").mkdir()
    env = AmqttEnv(world.fleet, tmp_path / "broker")
    env.start_broker()
    try:
        yield env
    finally:
        env.stop_broker()


def identity_files(report: dict[str, Any], tmp_path: Path, name: str) -> tuple[Path, Path]:
    """Copies of the agent's current certificate and key (opN.pem / opN.key)."""
    cert = Path(report["cert_file"])
    key = cert.with_suffix(".key")
    copies = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    copies[0].write_bytes(cert.read_bytes())
    copies[1].write_bytes(key.read_bytes())
    copies[1].chmod(0o600)
    return copies


def broker_admits(broker: AmqttEnv, device_id: str, files: tuple[Path, Path]) -> bool:
    """Whether the embedded broker (following the server's store) lets this pair in now."""
    session = broker.device(device_id, *files)
    try:
        return session.connect() == 0
    finally:
        session.close()


def refused_within(broker: AmqttEnv, device_id: str, files: tuple[Path, Path]) -> None:
    deadline = time.monotonic() + 5
    while broker_admits(broker, device_id, files):
        assert time.monotonic() < deadline, "the broker still admits a revoked certificate"
        time.sleep(0.05)


def kept(report: dict[str, Any], tmp_path: Path, name: str) -> Path:
    """A copy of the agent's current certificate (the agent deletes old generations)."""
    copy = tmp_path / f"{name}.pem"
    copy.write_bytes(Path(report["cert_file"]).read_bytes())
    return copy


def test_replay_on_an_active_device_is_a_pending_replacement_and_renewal_goes_on(
    world: AgentWorld, tmp_path: Path
) -> None:
    device, real, before = enrolled_pair(world, tmp_path)
    replay(world, device, tmp_path / "twin")
    replay(world, device, tmp_path / "twin")  # the twin retries with the same key

    shown = show(world, device.device_id)
    assert shown["state"] == "active"  # a replay never moves the device
    request = shown["replacement_request"]
    assert (request["status"], request["attempts"], request["keys_seen"]) == ("pending", 2, 1)
    assert request["bootstrap_sha256"] == shown["enrolled_bootstrap_sha256"]
    assert request["source"] == "127.0.0.1"
    why = fleet_cli(world, "device", "why", device.device_id)
    assert why.returncode == 0, why
    assert "Replacement request (pending)" in why.stdout
    assert f"fleet device approve {device.device_id} --replace" in why.stdout
    assert "bootstrap_reused_held" in why.stdout

    # The real device renews as usual: a pending replacement never blocks it.
    renewed = fleet_agent("renew", "--state-dir", real, "--force")
    assert renewed.returncode == 0, renewed
    after = verify_identity(real)
    assert after["serial"] != before["serial"]

    # `approve` without a choice explains both and changes nothing.
    undecided = fleet_cli(world, "device", "approve", device.device_id)
    assert undecided.returncode == 1, undecided
    for words in ("replacement_choice_required", "--replace", "reject", "--revoke"):
        assert words in undecided.stderr, undecided.stderr
    again = show(world, device.device_id)
    assert again["replacement_request"]["status"] == "pending"
    assert again["certificates"] == show(world, device.device_id)["certificates"]
    assert f"{after['serial']}" in good_serials(world, device.device_id)


def test_approve_replace_supersedes_the_old_certificate_and_issues_the_new_key(
    world: AgentWorld, tmp_path: Path, broker: AmqttEnv
) -> None:
    device, real, before = enrolled_pair(world, tmp_path)
    old = kept(before, tmp_path, "old")
    old_pair = identity_files(before, tmp_path, "old-pair")
    twin = tmp_path / "twin"
    replay(world, device, twin)
    # The replay changed nothing for the real device: the broker still admits it.
    assert broker_admits(broker, device.device_id, old_pair)

    approved = fleet_cli(world, "device", "approve", device.device_id, "--replace")
    assert approved.returncode == 0, approved
    assert "Replacement request (approved)" in approved.stdout

    # The old certificate is revoked, superseded: in the store, the CRL and OCSP.
    assert good_serials(world, device.device_id) == []
    assert crl_reason(world, before["serial"]) is x509.ReasonFlags.superseded
    answer = ocsp(world, old)
    assert f"{old}: revoked" in answer
    assert "Reason: superseded" in answer
    refused = fleet_agent("renew", "--state-dir", real, "--force")
    assert refused.returncode != 0, refused

    # The new key gets its certificate at the twin's next retry: one good certificate.
    retried = world.enroll(device, twin)
    assert retried.returncode == 0, retried
    new = verify_identity(twin)
    assert new["device_id"] == device.device_id
    assert good_serials(world, device.device_id) == [new["serial"]]
    # At the broker: the old certificate is out, the new one is in.
    refused_within(broker, device.device_id, old_pair)
    assert broker_admits(broker, device.device_id, identity_files(new, tmp_path, "new-pair"))
    shown = show(world, device.device_id)
    assert (shown["state"], shown["replacement_request"]) == ("active", None)
    trace = json.loads(fleet_cli(world, "device", "why", device.device_id, "--json").stdout)
    steps = [(r["action"], r["outcome"], r["reason"]) for r in trace["trace"]]
    assert steps == [
        ("enroll", "allowed", "bootstrap_pinned"),
        ("enroll", "held", "bootstrap_reused_held"),
        ("approve", "done", "replacement_approved"),
        ("renew", "refused", "certificate_revoked"),  # the old certificate, superseded
        ("enroll", "allowed", "replacement_approved"),
    ]
    assert trace["trace"][2]["detail"]["revoked"] == before["serial"]
    # The new device renews as any other.
    assert fleet_agent("renew", "--state-dir", twin, "--force").returncode == 0


def test_reject_revoke_refuses_the_replay_and_revokes_the_current_certificate(
    world: AgentWorld, tmp_path: Path, broker: AmqttEnv
) -> None:
    device, real, before = enrolled_pair(world, tmp_path)
    pair = identity_files(before, tmp_path, "pair")
    clone = tmp_path / "clone"
    replay(world, device, clone)
    assert broker_admits(broker, device.device_id, pair)

    rejected = fleet_cli(world, "device", "reject", device.device_id, "--revoke")
    assert rejected.returncode == 0, rejected
    refused_within(broker, device.device_id, pair)  # the clone's key material is useless now
    assert "Replacement request (rejected)" in rejected.stdout

    refused = world.enroll(device, clone, "--max-wait", "0")
    assert refused.returncode == 3, refused  # refused, from then on
    shown = show(world, device.device_id)
    assert shown["state"] == "active"
    (cert,) = shown["certificates"]
    assert (cert["status"], cert["revocation_reason"]) == ("revoked", "keyCompromise")
    assert crl_reason(world, before["serial"]) is x509.ReasonFlags.key_compromise
    assert fleet_agent("renew", "--state-dir", real, "--force").returncode != 0
    trace = json.loads(fleet_cli(world, "device", "why", device.device_id, "--json").stdout)
    steps = [(r["action"], r["outcome"], r["reason"]) for r in trace["trace"]]
    assert steps[1:] == [
        ("enroll", "held", "bootstrap_reused_held"),
        ("reject", "done", "replacement_rejected"),
        ("enroll", "refused", "replacement_rejected"),
        ("renew", "refused", "certificate_revoked"),
    ]
    assert trace["trace"][2]["detail"]["revocation_reason"] == "keyCompromise"


def test_reject_without_revoke_keeps_the_real_device_working(
    world: AgentWorld, tmp_path: Path
) -> None:
    device, real, first = enrolled_pair(world, tmp_path)
    clone = tmp_path / "clone"
    replay(world, device, clone)
    assert fleet_cli(world, "device", "reject", device.device_id).returncode == 0
    assert world.enroll(device, clone, "--max-wait", "0").returncode == 3
    assert fleet_agent("renew", "--state-dir", real, "--force").returncode == 0
    second = verify_identity(real)["serial"]
    # Renewal overlap: the renewing certificate stays good beside its successor...
    assert set(good_serials(world, device.device_id)) == {first["serial"], second}
    # ...until the successor is used: then it is superseded.
    assert fleet_agent("renew", "--state-dir", real, "--force").returncode == 0
    third = verify_identity(real)["serial"]
    assert set(good_serials(world, device.device_id)) == {second, third}
    revoked = {
        c["serial"]: c["revocation_reason"]
        for c in show(world, device.device_id)["certificates"]
        if c["status"] == "revoked"
    }
    assert revoked == {first["serial"]: "superseded"}


@pytest.mark.parametrize("reuse", ["hold", "reject"])
def test_lost_reply_retry_gets_the_same_certificate_under_both_policies(
    tmp_path: Path, reuse: str
) -> None:
    env = {**FAST_SERVER_ENV, "FLEET_POLICY_BOOTSTRAP_REUSE": reuse}
    with running_fleet(tmp_path / "server", env=env) as fleet:
        world = AgentWorld(fleet, root_fingerprint(fleet.server.root_pem))
        device = fleet.new_device()
        state = tmp_path / "state"
        # The agent dies after sending its CSR: the server issued, the reply is lost.
        crashed = world.enroll(device, state, env={"FLEET_AGENT_CRASH_AT": "csr_sent"})
        assert crashed.returncode == 137, crashed
        (issued,) = good_serials(world, device.device_id)
        again = world.enroll(device, state)  # the same key again
        assert again.returncode == 0, again
        assert verify_identity(state)["serial"] == issued
        shown = show(world, device.device_id)
        assert (shown["state"], shown["replacement_request"]) == ("active", None)
        assert good_serials(world, device.device_id) == [issued]
        trace = json.loads(fleet_cli(world, "device", "why", device.device_id, "--json").stdout)
        assert [r["reason"] for r in trace["trace"]] == ["bootstrap_pinned", "reply_replayed"]
