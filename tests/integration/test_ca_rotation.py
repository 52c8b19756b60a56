"""Issuing-CA rotation against a real `fleet serve` (two workers), driven by the `fleet ca` CLI.

rotate-issuing → the next CA is in /cacerts of every worker without a
restart; promote → new enrollments and renewals come from it while a device
of the old CA still renews; its CRL at /crl/<issuer_id> and OCSP answers stay
signed by the old key; retire is refused with the count until the device has
moved; `fleet device renew --all --before` shortens the next renewal answer.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

from fleet.kernel.fingerprint import sha256_fingerprint
from tests.integration.est.conftest import Fleet, running_fleet
from tests.support.amqtt_broker import (
    BrokerThread,
    Device,
    broker_settings,
    client_context,
    running_broker,
)
from tests.support.openssl import openssl

CRL_TEMPLATE = "http://pki.fleet.test/crl/{issuer}"
OCSP_URL = "http://pki.fleet.test/ocsp"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    urls = {
        "FLEET_PROFILE_CRL_URL": CRL_TEMPLATE,
        "FLEET_PROFILE_OCSP_URL": OCSP_URL,
        "FLEET_CA_RELOAD_SECONDS": "1",
    }
    with running_fleet(tmp_path_factory.mktemp("rotation"), env=urls, workers=2) as running:
        yield running


def _fleet_cli(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet", *args, "--config", str(fleet.server.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **fleet.server.env},
    )


def _get(fleet: Fleet, path: str) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(fleet.server.root_pem))
    try:
        with urllib.request.urlopen(  # noqa: S310 - our own https URL
            f"{fleet.server.base}{path}", timeout=10, context=context
        ) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _cacerts(fleet: Fleet) -> list[str]:
    status, body = _get(fleet, "/.well-known/est/cacerts")
    assert status == 200
    certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(body.split())))
    return [sha256_fingerprint(c) for c in certs]


def _signs_crl(fleet: Fleet, ca: x509.Certificate) -> bool:
    """/crl is the current issuer's CRL: whether ``ca`` signs, as this worker sees it."""
    status, der = _get(fleet, "/crl")
    assert status == 200
    crl = x509.load_der_x509_crl(der)
    return crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]


def _until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.1)


def _every_worker(condition: Callable[[], bool]) -> Callable[[], bool]:
    # Two workers share the port (SO_REUSEPORT): ten answers in a row, each
    # on a new connection, reach both with near certainty.
    return lambda: all(condition() for _ in range(10))


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def _issuing(fleet: Fleet) -> x509.Certificate:
    return x509.load_pem_x509_certificate(fleet.server.issuing_pem.read_bytes())


def _renew(fleet: Fleet, cert: Path, key: Path, name: str) -> tuple[Path, Path]:
    new_key, csr = fleet.csr(name)
    return fleet.issued(fleet.reenroll(cert, key, csr), name), new_key


def _ocsp(fleet: Fleet, cert: Path, issuer: Path, chain: Path) -> str:
    proc = openssl(
        "ocsp", "-issuer", issuer, "-cert", cert, "-url", f"{fleet.server.base}/ocsp",
        "-CAfile", chain, check=False,
    )  # fmt: skip
    return proc.stdout.decode() + proc.stderr.decode()


def _connects(broker: BrokerThread, fleet: Fleet, device_id: str, cert: Path, key: Path) -> bool:
    client = Device(broker.port, device_id, client_context(fleet.server.root_pem, cert, key))
    try:
        return client.connect() == 0
    finally:
        client.client.disconnect()
        client.client.loop_stop()


def test_rotate_promote_renew_retire(fleet: Fleet, tmp_path: Path) -> None:
    # The embedded broker follows /cacerts (only CAs under the root it already has).
    settings = broker_settings(
        fleet.server,
        tmp_path,
        cacerts_url=fleet.server.est("cacerts"),
        ca_refresh_seconds=0.2,
    )
    with running_broker(settings) as broker:
        _rotate_promote_renew_retire(fleet, broker)


def _rotate_promote_renew_retire(fleet: Fleet, broker: BrokerThread) -> None:
    old = _issuing(fleet)
    old_id = sha256_fingerprint(old)[:16]
    old_pem = fleet.work / "old-issuing.pem"
    old_pem.write_bytes(fleet.server.issuing_pem.read_bytes())

    device = fleet.new_device()
    key, csr = fleet.csr("a")
    cert = fleet.issued(fleet.enroll(device, csr), "a")
    points = _cert(cert).extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert points[0].full_name[0].value == CRL_TEMPLATE.replace("{issuer}", old_id)

    # rotate-issuing: the next CA is published by every worker, signs nothing yet.
    rotated = _fleet_cli(fleet, "ca", "rotate-issuing")
    assert rotated.returncode == 0, rotated.stderr
    # Servers poll for it: the CLI says when they publish it, not "now".
    assert "published now" not in rotated.stdout
    assert "running servers pick the change up within 1 s" in rotated.stdout  # the setting
    nxt = x509.load_pem_x509_certificate(
        (fleet.server.data_dir / "ca/issuing-next.pem").read_bytes()
    )
    _until(_every_worker(lambda: sha256_fingerprint(nxt) in _cacerts(fleet)), "/cacerts has next")
    assert nxt.subject != old.subject
    assert _signs_crl(fleet, old)  # next signs nothing, not even /crl
    cert, key = _renew(fleet, cert, key, "a-renewed-before-promote")
    assert _cert(cert).issuer == old.subject
    assert _cert(cert).verify_directly_issued_by(old) is None

    # promote: new enrollments come from the new CA on every worker.
    promoted = _fleet_cli(fleet, "ca", "promote")
    assert promoted.returncode == 0, promoted.stderr
    _until(
        _every_worker(lambda: _signs_crl(fleet, nxt)),
        "every worker signs with the promoted CA",
    )
    other = fleet.new_device()
    other_key, other_csr = fleet.csr("b")
    other_cert = fleet.issued(fleet.enroll(other, other_csr), "b")
    _cert(other_cert).verify_directly_issued_by(nxt)
    # Both brokers' worth of trust, without a restart: the new CA's device and the old one's.
    _until(
        lambda: _connects(broker, fleet, other.device_id, other_cert, other_key),
        "the embedded broker admits a device of the new CA",
    )
    assert _connects(broker, fleet, device.device_id, cert, key)

    # The old CA's device is still admitted, its CRL and OCSP still answered by the old key.
    status, der = _get(fleet, f"/crl/{old_id}")
    assert status == 200
    crl = x509.load_der_x509_crl(der)
    assert crl.issuer == old.subject
    assert crl.is_signature_valid(old.public_key())
    chain = fleet.work / "chain.pem"
    chain.write_bytes(fleet.server.root_pem.read_bytes() + old_pem.read_bytes())
    assert f"{cert}: good" in _ocsp(fleet, cert, old_pem, chain)

    # retire is refused while good certificates chain to the old CA, with the count.
    refused = _fleet_cli(fleet, "ca", "retire")
    assert refused.returncode == 1
    assert "still chain to the retiring issuer" in refused.stderr
    assert f"{old_id}: 2" in refused.stderr, refused.stderr  # the renewal overlap keeps two

    # The device moves at its next renewal; showing the successor supersedes the old ones.
    cert, key = _renew(fleet, cert, key, "a-moved")
    _cert(cert).verify_directly_issued_by(nxt)
    cert, key = _renew(fleet, cert, key, "a-settled")
    retired = _fleet_cli(fleet, "ca", "retire")
    assert retired.returncode == 0, retired.stderr
    _until(
        _every_worker(lambda: sha256_fingerprint(old) not in _cacerts(fleet)),
        "the retired CA leaves /cacerts",
    )
    _until(_every_worker(lambda: _get(fleet, f"/crl/{old_id}")[0] == 404), "its CRL is gone")


def test_sighup_reloads_every_worker_at_once(tmp_path: Path) -> None:
    # Polling practically off: only the signal (to the supervisor, forwarded) can do it.
    env = {"FLEET_CA_RELOAD_SECONDS": "3600"}
    with running_fleet(tmp_path, env=env, workers=2) as fleet:
        status, metrics = _get(fleet, "/metrics")
        assert status == 200
        assert b"fleet_ca_days_to_expiry{" in metrics
        rotated = _fleet_cli(fleet, "ca", "rotate-issuing")
        assert rotated.returncode == 0, rotated.stderr
        nxt = sha256_fingerprint(
            x509.load_pem_x509_certificate(
                (fleet.server.data_dir / "ca/issuing-next.pem").read_bytes()
            )
        )
        assert nxt not in _cacerts(fleet)
        assert fleet.server.proc is not None
        fleet.server.proc.send_signal(signal.SIGHUP)
        _until(_every_worker(lambda: nxt in _cacerts(fleet)), "SIGHUP reloaded every worker")
        assert fleet.server.proc.poll() is None


def test_renew_all_before_shortens_the_next_renewal_answer(fleet: Fleet) -> None:
    device = fleet.new_device()
    key, csr = fleet.csr("c")
    cert = fleet.issued(fleet.enroll(device, csr), "c")
    full = _cert(cert).not_valid_after_utc - _cert(cert).not_valid_before_utc
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    marked = _fleet_cli(fleet, "device", "renew", "--all", "--before", deadline.isoformat())
    assert marked.returncode == 0, marked.stderr
    try:

        def shortened() -> bool:
            nonlocal cert, key
            cert, key = _renew(fleet, cert, key, "c-renewed")
            renewed = _cert(cert)
            # The agent renews at 2/3 of the lifetime: that point is before the deadline.
            two_thirds = (
                renewed.not_valid_before_utc
                + (renewed.not_valid_after_utc - renewed.not_valid_before_utc) * 2 / 3
            )
            return two_thirds <= deadline

        _until(shortened, "renewal answers are shortened")  # every worker within reload_seconds
        assert _cert(cert).not_valid_after_utc - _cert(cert).not_valid_before_utc < full
    finally:
        _fleet_cli(fleet, "device", "renew", "--clear")
    past = _fleet_cli(fleet, "device", "renew", "--all", "--before", "2020-01-01")
    assert past.returncode == 1
    assert "not in the future" in past.stderr
