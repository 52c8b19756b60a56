"""strongSwan `pki --est` (5.9.8, Debian 12) against a real `fleet serve`.

pki sends simplereenroll whenever it is given a certificate, so its first
enrollment with a bootstrap certificate arrives as a re-enrollment
([est] bootstrap_on_reenroll). It cannot decode wrapped base64 before 5.9.11,
so its devices use a label with base64_line_length = 0.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from cryptography import x509

from fleet.records import DeviceState, EnrollmentToken
from fleet.tokens import new_token, token_sha256
from tests.integration.est.conftest import Fleet, running_fleet
from tests.support.openssl import openssl
from tests.support.strongswan import PkiResult, pki_est

pytestmark = pytest.mark.needs_binary("pki")

# Old strongSwan devices get their own label: one base64 line per response.
LABELS = """
[labels.oldswan]
base64_line_length = 0
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    # pki polls a 202 after Retry-After (it ignores --interval then): keep it short.
    env = {"FLEET_POLICY_RETRY_AFTER_SECONDS": "1"}
    base = tmp_path_factory.mktemp("strongswan")
    with running_fleet(base, config_text=LABELS, env=env) as running:
        yield running


def enroll(fleet: Fleet, name: str, label: str | None = "oldswan", **auth: object) -> PkiResult:
    _, csr = fleet.csr(name)
    der = csr.with_suffix(".der")
    openssl("base64", "-d", "-in", csr, "-out", der)
    return pki_est(
        # pki appends /.well-known/est/OPERATION to the URL's path.
        fleet.server.base + (f"/{label}" if label else ""),
        cacert=fleet.server.root_pem,
        csr=der,
        out=fleet.work / f"{name}-issued.pem",
        **auth,  # type: ignore[arg-type]
    )


def issued_to(result: PkiResult, device_id: str, fleet: Fleet) -> x509.Certificate:
    assert result.returncode == 0, result.output
    assert result.cert is not None, result.output
    openssl(
        "verify", "-purpose", "sslclient", "-CAfile", fleet.server.root_pem,
        "-untrusted", fleet.server.issuing_pem, result.cert,
    )  # fmt: skip
    cert = x509.load_pem_x509_certificate(result.cert.read_bytes())
    assert cert.subject.rfc4514_string() == f"CN={device_id}"
    return cert


def test_bootstrap_certificate_enrolls_although_pki_sends_simplereenroll(fleet: Fleet) -> None:
    device = fleet.new_device()
    result = enroll(fleet, "swan-boot", cert=device.cert, key=device.key)
    issued_to(result, device.device_id, fleet)
    events = fleet.server.store(lambda s: s.audit_records(device_id=device.device_id))
    assert [(e.event.action, e.event.outcome) for e in events][-1] == ("enroll", "allowed")


def test_bootstrap_reenroll_is_under_the_manifest_policy(fleet: Fleet) -> None:
    # Not in the manifest: held (202) as on simpleenroll, never issued.
    stranger = fleet.new_device(in_manifest=False)
    result = enroll(fleet, "swan-stranger", cert=stranger.cert, key=stranger.key)
    assert result.returncode != 0
    assert result.cert is None
    assert "EST request pending" in result.output, result.output
    device = fleet.server.store(lambda s: s.get_device(stranger.device_id))
    assert device.state is DeviceState.PENDING


def test_operational_certificate_renews_with_pki(fleet: Fleet) -> None:
    device = fleet.new_device()
    key, csr = fleet.csr("swan-first")
    first = fleet.issued(fleet.enroll(device, csr, label="oldswan"), "swan-first")
    result = enroll(fleet, "swan-renew", cert=first, key=key)
    renewed = issued_to(result, device.device_id, fleet)
    assert renewed.serial_number != x509.load_pem_x509_certificate(first.read_bytes()).serial_number
    events = fleet.server.store(lambda s: s.audit_records(device_id=device.device_id))
    assert [(e.event.action, e.event.outcome) for e in events][-1] == ("renew", "allowed")


def test_one_time_token_enrolls_with_pki(fleet: Fleet) -> None:
    device = fleet.new_device()
    token = new_token()
    now = dt.datetime.now(dt.UTC)
    entry = EnrollmentToken(device.device_id, token_sha256(token), now, now + dt.timedelta(hours=1))
    fleet.server.store(lambda s: s.put_enrollment_token(entry))
    result = enroll(fleet, "swan-token", userpass=f"{device.device_id}:{token}")
    issued_to(result, device.device_id, fleet)


def test_pki_5_9_8_needs_the_one_line_label(fleet: Fleet) -> None:
    # The default label wraps at 64 characters, which pki 5.9.8 cannot decode:
    # the reason the line length is settable per label.
    device = fleet.new_device()
    result = enroll(fleet, "swan-wrapped", label=None, cert=device.cert, key=device.key)
    assert result.cert is None, result.output
