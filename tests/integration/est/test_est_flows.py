"""EST against a real `fleet serve`, with curl + openssl as the third-party client.

Every issued chain is checked by `openssl verify`, not by our own parser.
"""

from __future__ import annotations

import base64
import datetime as dt
import re

from cryptography import x509

from fleet.records import CertificateStatus, DeviceState
from tests.integration.est.conftest import Fleet
from tests.support.est_client import curl
from tests.support.openssl import openssl


def verify_client_chain(fleet: Fleet, cert_pem: object) -> None:
    openssl(
        "verify",
        "-purpose", "sslclient",
        "-CAfile", fleet.server.root_pem,
        "-untrusted", fleet.server.issuing_pem,
        cert_pem,
    )  # fmt: skip


def subject_of(cert_pem: object) -> str:
    return (
        openssl("x509", "-in", cert_pem, "-noout", "-subject", "-nameopt", "RFC2253")
        .stdout.decode()
        .strip()
    )


def test_cacerts_is_the_issuing_ca_and_root_as_base64_pkcs7(fleet: Fleet) -> None:
    result = curl(fleet.server.est("cacerts"), cacert=fleet.server.root_pem)
    assert result.status == 200
    assert result.raw_headers.startswith("HTTP/1.1 200")
    assert result.headers["content-type"] == "application/pkcs7-mime"
    assert int(result.headers["content-length"]) == len(result.body)
    assert "chunked" not in result.headers.get("transfer-encoding", "")
    lines = result.body.split(b"\r\n")
    assert all(len(line) <= 64 for line in lines)
    der = base64.b64decode(b"".join(result.body.split()))
    printed = openssl("pkcs7", "-inform", "DER", "-print_certs", input=der).stdout.decode()
    assert "CN = fleet root CA" in printed
    assert "CN = fleet device issuing CA" in printed


def test_csrattrs_decodes_with_openssl(fleet: Fleet) -> None:
    result = curl(fleet.server.est("csrattrs"), cacert=fleet.server.root_pem)
    assert result.status == 200
    assert result.headers["content-type"] == "application/csrattrs"
    der = base64.b64decode(b"".join(result.body.split()))
    parsed = openssl("asn1parse", "-inform", "DER", input=der).stdout.decode()
    assert "id-ecPublicKey" in parsed
    assert "prime256v1" in parsed
    assert "challengePassword" not in parsed  # require_pop is off by default


def test_bootstrap_enrollment_of_a_pinned_device(fleet: Fleet) -> None:
    device = fleet.new_device()
    _, csr = fleet.csr("op")
    result = fleet.enroll(device, csr)
    assert result.status == 200, result.text
    assert result.headers["content-type"] == "application/pkcs7-mime; smime-type=certs-only"
    pem = fleet.issued(result, "op")
    verify_client_chain(fleet, pem)
    assert subject_of(pem) == f"subject=CN={device.device_id}"
    text = openssl("x509", "-in", pem, "-noout", "-text").stdout.decode()
    assert "TLS Web Client Authentication" in text

    stored = fleet.server.store(lambda s: s.get_device(device.device_id))
    assert stored.state is DeviceState.ACTIVE
    serial = x509.load_pem_x509_certificate(pem.read_bytes()).serial_number
    record = fleet.server.store(lambda s: s.get_certificate(serial))
    assert record.device_id == device.device_id
    assert record.status is CertificateStatus.GOOD
    audit = fleet.server.store(lambda s: s.audit_records(device_id=device.device_id))
    assert [(r.event.action, r.event.outcome, r.event.reason) for r in audit] == [
        ("enroll", "allowed", "bootstrap_pinned")
    ]


def test_csr_subject_may_name_the_device_but_nothing_else(fleet: Fleet) -> None:
    device = fleet.new_device()
    _, csr = fleet.csr("named", subject=f"/CN={device.device_id}")
    assert fleet.enroll(device, csr).status == 200

    other = fleet.new_device()
    _, bad = fleet.csr("other", subject="/CN=someone-else")
    result = fleet.enroll(other, bad)
    assert result.status == 403
    assert result.headers["x-fleet-reason"] == "subject_mismatch"
    assert (
        fleet.server.store(lambda s: s.get_device(other.device_id)).state is DeviceState.REGISTERED
    )


def test_reenroll_with_a_new_key(fleet: Fleet) -> None:
    device = fleet.new_device()
    key1, csr1 = fleet.csr("first")
    cert1 = fleet.issued(fleet.enroll(device, csr1), "first")

    key2, csr2 = fleet.csr("second")
    cert2 = fleet.issued(fleet.reenroll(cert1, key1, csr2), "second")
    verify_client_chain(fleet, cert2)
    assert subject_of(cert2) == f"subject=CN={device.device_id}"
    pub = lambda p: openssl("x509", "-in", p, "-noout", "-pubkey").stdout  # noqa: E731
    assert pub(cert2) != pub(cert1)
    assert pub(cert2) == openssl("pkey", "-in", key2, "-pubout").stdout
    certs = fleet.server.store(lambda s: s.list_certificates(device.device_id))
    assert len(certs) == 2

    # The renewed certificate renews in turn. The bootstrap certificate on
    # simplereenroll is a first enrollment ([est] bootstrap_on_reenroll), so
    # for this enrolled device it is a reuse: held, never a renewal.
    _, csr3 = fleet.csr("third")
    assert fleet.reenroll(cert2, key2, csr3).status == 200
    _, csr4 = fleet.csr("fourth")
    held = fleet.reenroll(device.cert, device.key, csr4)
    assert held.status == 202
    assert held.headers["x-fleet-reason"] == "bootstrap_reused_held"


def test_enrollment_with_a_one_time_token(fleet: Fleet) -> None:
    from fleet.records import EnrollmentToken
    from fleet.tokens import new_token, token_sha256

    device = fleet.new_device()
    token = new_token()
    now = dt.datetime.now(dt.UTC)
    fleet.server.store(
        lambda s: s.put_enrollment_token(
            EnrollmentToken(device.device_id, token_sha256(token), now, now + dt.timedelta(hours=1))
        )
    )
    _, csr = fleet.csr("tok")
    # Without credentials: 401 with the Basic challenge libest waits for.
    challenge = fleet.enroll(None, csr)
    assert challenge.status == 401
    assert challenge.headers["www-authenticate"] == 'Basic realm="fleet"'

    first = fleet.enroll(None, csr, user=f"{device.device_id}:{token}")
    pem = fleet.issued(first, "tok")
    verify_client_chain(fleet, pem)
    assert subject_of(pem) == f"subject=CN={device.device_id}"
    # One-time: the second use is refused.
    again = fleet.enroll(None, csr, user=f"{device.device_id}:{token}")
    assert again.status == 401
    assert again.headers["x-fleet-reason"] == "token_invalid"
    # A token never authenticates another device.
    wrong = fleet.enroll(None, csr, user=f"dev-unknown:{token}")
    assert wrong.status == 401


def test_unknown_device_is_held_until_approved(fleet: Fleet) -> None:
    device = fleet.new_device(in_manifest=False)
    _, csr = fleet.csr("held")
    held = fleet.enroll(device, csr)
    assert held.status == 202
    assert int(held.headers["retry-after"]) > 0
    assert fleet.server.store(lambda s: s.get_device(device.device_id)).state is DeviceState.PENDING
    assert fleet.enroll(device, csr).status == 202  # still waiting

    async def approve(store: object) -> None:
        await store.set_device_state(  # type: ignore[attr-defined]
            device.device_id,
            DeviceState.REGISTERED,
            expected={DeviceState.PENDING},
            now=dt.datetime.now(dt.UTC),
        )

    fleet.server.store(approve)
    pem = fleet.issued(fleet.enroll(device, csr), "approved")
    verify_client_chain(fleet, pem)

    # Approval pinned the bootstrap certificate that asked: another one is refused.
    impostor = fleet.new_device(in_manifest=False, device_id=device.device_id)
    refused = fleet.enroll(impostor, csr)
    assert refused.status == 403
    assert refused.headers["x-fleet-reason"] == "bootstrap_pin_mismatch"


def test_cloned_bootstrap_is_a_replacement_request_beside_the_active_device(fleet: Fleet) -> None:
    device = fleet.new_device()
    key1, csr1 = fleet.csr("orig")
    cert1 = fleet.issued(fleet.enroll(device, csr1), "orig")
    # Same bootstrap certificate, a different key: a clone (or a factory reset).
    _, csr2 = fleet.csr("clone")
    result = fleet.enroll(device, csr2)
    assert result.status == 202
    assert "retry-after" in result.headers
    assert result.headers["x-fleet-reason"] == "bootstrap_reused_held"
    # The device is not touched: it stays active and keeps renewing.
    assert fleet.server.store(lambda s: s.get_device(device.device_id)).state is DeviceState.ACTIVE
    request = fleet.server.store(lambda s: s.get_replacement_request(device.device_id))
    assert request is not None
    assert (request.status.value, request.attempts, request.source) == ("pending", 1, "127.0.0.1")
    audit = fleet.server.store(lambda s: s.audit_records(device_id=device.device_id))
    last = audit[-1].event
    assert (last.outcome, last.reason, last.detail.get("flag")) == (
        "held",
        "bootstrap_reused_held",
        "possible_clone",
    )
    assert last.detail["replacement"] == "pending"
    assert last.detail["key_sha256"] == request.key_sha256
    _, csr3 = fleet.csr("renew")
    assert fleet.reenroll(cert1, key1, csr3).status == 200


def test_lost_reply_retry_returns_the_same_certificate(fleet: Fleet) -> None:
    device = fleet.new_device()
    _, csr = fleet.csr("retry")
    first = fleet.issued(fleet.enroll(device, csr), "retry1")
    second = fleet.issued(fleet.enroll(device, csr), "retry2")  # same key: not a clone
    assert first.read_bytes() == second.read_bytes()
    assert fleet.server.store(lambda s: s.get_device(device.device_id)).state is DeviceState.ACTIVE


def test_label_selects_its_profile_and_unknown_labels_are_404(fleet: Fleet) -> None:
    device = fleet.new_device()
    _, csr = fleet.csr("label")
    pem = fleet.issued(fleet.enroll(device, csr, label="sensors"), "label")
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=7) <= lifetime <= dt.timedelta(days=7, minutes=10)

    unknown = curl(fleet.server.est("cacerts", "nope"), cacert=fleet.server.root_pem)
    assert unknown.status == 404
    assert unknown.headers["x-fleet-reason"] == "unknown_label"
    assert curl(fleet.server.est("cacerts", "sensors"), cacert=fleet.server.root_pem).status == 200


def test_response_line_length_follows_the_config(fleet: Fleet) -> None:
    device = fleet.new_device()
    _, csr = fleet.csr("lines")
    result = fleet.enroll(device, csr)
    assert result.status == 200
    assert max(len(line) for line in result.body.split(b"\r\n")) == 64
    assert re.fullmatch(rb"([A-Za-z0-9+/=]{1,64}\r\n)+", result.body)


def test_simplereenroll_with_a_bootstrap_certificate_is_a_first_enrollment(fleet: Fleet) -> None:
    # strongSwan's pki sends simplereenroll whenever it has a certificate
    # ([est] bootstrap_on_reenroll, on by default); the manifest policy applies.
    device = fleet.new_device()
    _, csr = fleet.csr("boot-re")
    result = fleet.reenroll(device.cert, device.key, csr)
    cert = fleet.issued(result, "boot-re")
    verify_client_chain(fleet, cert)
    assert subject_of(cert) == f"subject=CN={device.device_id}"
    # Its bootstrap certificate is now used: a second time is a possible clone (held).
    _, csr2 = fleet.csr("boot-re2")
    again = fleet.reenroll(device.cert, device.key, csr2)
    assert again.status == 202
    assert again.headers["x-fleet-reason"] == "bootstrap_reused_held"
