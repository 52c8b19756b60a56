"""The agent against a hostile EST server (tests/support/hostile_est.py): it holds the
fleet's TLS key and issuing CA, so only the agent's own checks stand between its
answers and the device's identity.

Found from outside: a certificate for another key than the one that asked made
`fleet-agent renew` exit 2 (a configuration error: the sample systemd unit
never restarts it, so the device stopped renewing until a person came) and left
no backoff; the server's text and reason header reached the terminal with their
escape sequences. Every answer must leave the good identity in place, exit with
a code that says whether to retry, and say why in `status`.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from device_agent.errors import Transient
from device_agent.est_client import client_context, request
from fleet.kernel.wire import decode_certs_only
from fleet.pki.ca import load_certificates_pem
from tests.integration.agent.conftest import AgentWorld
from tests.support import hostile as hostile_certs
from tests.support.agent import fleet_agent, verify_identity
from tests.support.hostile_est import Answer, HostileEst

pytestmark = pytest.mark.needs_binary("openssl")
EXIT_TRANSIENT = 4


@pytest.fixture
def hostile(world: AgentWorld) -> Iterator[HostileEst]:
    with HostileEst(world.fleet.server.data_dir, lambda csr: (500, {}, b"")) as server:
        yield server


def _point(state: Path, url: str) -> None:
    for name in ("agent.json", "agent.json.bak"):
        path = state / name
        if path.exists():
            config = json.loads(path.read_text())
            config["server"] = url
            path.write_text(json.dumps(config))


def _csr_key(csr: bytes) -> x509.Certificate:
    return x509.load_der_x509_csr(csr).public_key()  # type: ignore[return-value]


def _renew_against(
    world: AgentWorld, hostile: HostileEst, tmp_path: Path, answer: Callable[[bytes], Answer]
) -> tuple[dict[str, object], dict[str, object], object]:
    device = world.fleet.new_device()
    state = tmp_path / "state"
    assert world.enroll(device, state).returncode == 0
    before = verify_identity(state)
    hostile.answer = answer
    _point(state, hostile.url)
    run = fleet_agent("renew", "--state-dir", state, "--force")
    status = json.loads(fleet_agent("status", "--state-dir", state).stdout)
    _point(state, world.server)
    return before, status, run


def test_a_certificate_for_another_key_is_a_transient_failure_that_keeps_the_identity(
    world: AgentWorld, hostile: HostileEst, tmp_path: Path
) -> None:
    def other_key(csr: bytes) -> Answer:
        cn = x509.load_der_x509_csr(csr).subject  # empty: the server writes the subject
        assert not list(cn)
        return 200, {}, hostile.pkcs7(hostile.certificate(device_id))

    device_id = ""

    def answer(csr: bytes) -> Answer:
        return other_key(csr)

    device = world.fleet.new_device()
    device_id = device.device_id
    state = tmp_path / "state"
    assert world.enroll(device, state).returncode == 0
    before = verify_identity(state)
    hostile.answer = answer
    _point(state, hostile.url)
    run = fleet_agent("renew", "--state-dir", state, "--force")
    assert run.returncode == EXIT_TRANSIENT, run
    status = json.loads(fleet_agent("status", "--state-dir", state).stdout)
    assert status["serial"] == before["serial"]
    assert "another key" in status["last_error"]
    assert status["next_attempt"] is not None  # backs off; not a person's problem
    _point(state, world.server)
    renewed = fleet_agent("renew", "--state-dir", state, "--force")
    assert renewed.returncode == 0, renewed  # the real server's next answer is used
    assert verify_identity(state)["serial"] != before["serial"]


def test_the_certificate_for_the_key_is_found_among_ca_certificates(
    world: AgentWorld, hostile: HostileEst, tmp_path: Path
) -> None:
    """A PKCS#7 is a SET: with CA certificates in the answer, the first one may be a CA."""
    first: list[bool] = []

    def with_chain(csr: bytes) -> Answer:
        key = _csr_key(csr)
        leaf = hostile.certificate(device_id[0], public_key=key, padding=3000)  # type: ignore[arg-type]
        body = hostile.pkcs7(hostile.issuing.certificate, *hostile.roots, leaf)
        first.append(decode_certs_only(body)[0] == leaf)
        return 200, {}, body

    device = world.fleet.new_device()
    device_id = [device.device_id]
    state = tmp_path / "state"
    assert world.enroll(device, state).returncode == 0
    before = verify_identity(state)
    hostile.answer = with_chain
    _point(state, hostile.url)
    run = fleet_agent("renew", "--state-dir", state, "--force")
    assert first == [False]  # the case this test is about
    assert run.returncode == 0, run
    assert verify_identity(state)["serial"] != before["serial"]


@pytest.mark.parametrize("status", [418, 403, 500])
def test_the_servers_text_and_reason_reach_the_terminal_without_escape_sequences(
    world: AgentWorld, hostile: HostileEst, tmp_path: Path, status: int
) -> None:
    answer = (status, {"X-Fleet-Reason": "Owned <b>!"}, b"\x1b[2J\x1b[31mred\r\nline\x07")
    before, report, run = _renew_against(world, hostile, tmp_path, lambda csr: answer)
    assert run.returncode != 0  # type: ignore[attr-defined]
    assert "\x1b" not in run.stderr  # type: ignore[attr-defined]
    assert report["serial"] == before["serial"]
    assert "\x1b" not in json.dumps(report, ensure_ascii=False)
    assert "red" in str(report["last_error"])
    assert "Owned" not in json.dumps(report)  # not a reason code: not recorded as one


@pytest.mark.parametrize(
    "when",
    [dt.datetime(2001, 1, 1, tzinfo=dt.UTC), dt.datetime(2099, 1, 1, tzinfo=dt.UTC)],
)
def test_a_certificate_valid_in_the_past_or_far_future_is_not_installed(
    world: AgentWorld, hostile: HostileEst, tmp_path: Path, when: dt.datetime
) -> None:
    holder: list[str] = []

    def dated(csr: bytes) -> Answer:
        cert = hostile.certificate(holder[0], public_key=_csr_key(csr), not_before=when)  # type: ignore[arg-type]
        return 200, {}, hostile.pkcs7(cert)

    device = world.fleet.new_device()
    holder.append(device.device_id)
    state = tmp_path / "state"
    assert world.enroll(device, state).returncode == 0
    before = verify_identity(state)
    hostile.answer = dated
    _point(state, hostile.url)
    run = fleet_agent("renew", "--state-dir", state, "--force")
    assert run.returncode == EXIT_TRANSIENT, run
    assert verify_identity(state)["serial"] == before["serial"]


@pytest.mark.parametrize("stage", ["headers", "body"])
def test_a_server_that_trickles_its_answer_is_cut_off_at_the_exchange_deadline(
    world: AgentWorld, stage: str
) -> None:
    """Found from outside: each read waited up to the socket timeout, so one byte every
    few seconds held the agent (and every later renewal) for as long as the server liked."""
    data = world.fleet.server.data_dir
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(data / "tls/server.pem"), str(data / "tls/server.key"))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(65536)
            if stage == "body":
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            else:
                tls.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.1):
                try:
                    tls.sendall(b"A" if stage == "body" else b"X-A: a\r\n")
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    roots = load_certificates_pem((data / "ca/root.pem").read_bytes())
    started = time.monotonic()
    try:
        with pytest.raises(Transient, match="no complete answer within 2 s"):
            request(
                "127.0.0.1", port, "/.well-known/est/cacerts", method="GET",
                context=client_context(roots), timeout=0.5,
            )  # fmt: skip
    finally:
        stop.set()
        listener.close()
        thread.join(5)
    assert time.monotonic() - started < 2 + 1.5


def test_a_certificate_that_fails_to_decode_late_is_a_transient_failure(
    world: AgentWorld, hostile: HostileEst, tmp_path: Path
) -> None:
    """Found from outside: cryptography decodes a certificate's subject (and extensions)
    lazily; a certificate with an extension twice loads, then raises DuplicateExtension
    when the agent first reads its extensions. That escaped the agent's error handling:
    a traceback from `renew`, and under `run` a crash, restarted into the same crash."""
    holder: list[str] = []

    def late_failing(csr: bytes) -> Answer:
        leaf = hostile.certificate(holder[0], public_key=_csr_key(csr))  # type: ignore[arg-type]
        der = hostile_certs.duplicate_extension(
            leaf.public_bytes(serialization.Encoding.DER), hostile.issuing
        )
        return 200, {}, hostile.pkcs7(x509.load_der_x509_certificate(der))

    device = world.fleet.new_device()
    holder.append(device.device_id)
    state = tmp_path / "state"
    assert world.enroll(device, state).returncode == 0
    before = verify_identity(state)
    hostile.answer = late_failing
    _point(state, hostile.url)
    run = fleet_agent("renew", "--state-dir", state, "--force")
    assert run.returncode == EXIT_TRANSIENT, run
    assert "Traceback" not in run.stderr
    status = json.loads(fleet_agent("status", "--state-dir", state).stdout)
    assert status["serial"] == before["serial"]
    assert "cannot decode" in status["last_error"]
    assert status["next_attempt"] is not None


def test_a_certificate_too_short_lived_to_use_is_not_installed(
    world: AgentWorld, hostile: HostileEst, tmp_path: Path
) -> None:
    """Found from outside: a server issuing 60-second certificates had `fleet-agent run`
    renew (and reconnect to its broker) about four times a second: each new certificate
    was due for renewal the moment it was installed. Now it is refused and backed off."""
    holder: list[str] = []

    def short_lived(csr: bytes) -> Answer:
        start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
        cert = hostile.certificate(
            holder[0],
            public_key=_csr_key(csr),
            not_before=start,
            days=60 / 86400,  # type: ignore[arg-type]
        )
        return 200, {}, hostile.pkcs7(cert)

    device = world.fleet.new_device()
    holder.append(device.device_id)
    state = tmp_path / "state"
    assert world.enroll(device, state).returncode == 0
    before = verify_identity(state)
    hostile.answer = short_lived
    _point(state, hostile.url)
    run = fleet_agent("renew", "--state-dir", state, "--force")
    assert run.returncode == EXIT_TRANSIENT, run
    status = json.loads(fleet_agent("status", "--state-dir", state).stdout)
    assert status["serial"] == before["serial"]
    assert "due for renewal at once" in status["last_error"]
    assert status["next_attempt"] is not None
    # Not forced: backing off (exit 4) or, once that passed, the kept certificate is not
    # due (exit 0); either way the server is not asked again.
    again = fleet_agent("renew", "--state-dir", state)
    assert again.returncode in (0, EXIT_TRANSIENT), again
    assert hostile.requests.count("simplereenroll") == 1
