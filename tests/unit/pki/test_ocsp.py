from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from fleet.kernel.errors import ConfigError, PolicyError
from fleet.kernel.keys import KeyType
from fleet.pki.ca import CertifiedKey, create_issuing_ca, create_root_ca
from fleet.pki.issuance import issue_device_certificate
from fleet.pki.keys import PrivateKey
from fleet.pki.ocsp import (
    CertStatus,
    Good,
    Revoked,
    Unknown,
    build_ocsp_response,
    malformed_response,
    parse_ocsp_request,
    request_matches_issuer,
    unauthorized_response,
)
from fleet.pki.profile import DeviceProfile
from tests.support.openssl import openssl
from tests.unit.pki.helpers import attime, make_csr, write_pem

KeyOf = Callable[[KeyType], PrivateKey]
HOUR = dt.timedelta(hours=1)


def _device(issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime) -> x509.Certificate:
    return issue_device_certificate(
        make_csr(key_of(KeyType.EC_P256)),
        device_id="dev-ocsp",
        issuer=issuing,
        profile=DeviceProfile(ocsp_url="http://pki.fleet.test/ocsp"),
        now=now,
    )


def _openssl_request(
    tmp_path: Path, issuing: CertifiedKey, device: x509.Certificate, *nonce: str
) -> bytes:
    openssl(
        "ocsp", "-issuer", write_pem(tmp_path, "issuing.pem", issuing.certificate),
        "-cert", write_pem(tmp_path, "device.pem", device),
        "-reqout", tmp_path / "req.der", *nonce,
    )  # fmt: skip
    return (tmp_path / "req.der").read_bytes()


# `-attime` moves signature/chain checks to the test instant, but openssl checks
# thisUpdate/nextUpdate against the wall clock; a huge tolerance neutralises that.
_ANY_AGE = str(100 * 365 * 24 * 3600)


def _openssl_status(
    tmp_path: Path, response: bytes, now: dt.datetime, digest: str = "-sha1"
) -> str:
    """What `openssl ocsp` says about device.pem given our DER response."""
    (tmp_path / "resp.der").write_bytes(response)
    proc = openssl(
        "ocsp", "-respin", tmp_path / "resp.der", "-no_nonce", digest,
        "-issuer", tmp_path / "issuing.pem", "-VAfile", tmp_path / "issuing.pem",
        "-cert", tmp_path / "device.pem", "-attime", attime(now), "-validity_period", _ANY_AGE,
    )  # fmt: skip
    out = (proc.stdout + proc.stderr).decode()
    assert "Response verify OK" in out
    assert "WARNING" not in out
    return out


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (Good(), ["device.pem: good"]),
        (
            Revoked(dt.datetime(2026, 5, 30, 8, 0, tzinfo=dt.UTC), x509.ReasonFlags.key_compromise),
            [
                "device.pem: revoked",
                "Reason: keyCompromise",
                "Revocation Time: May 30 08:00:00 2026",
            ],
        ),
        (Unknown(), ["device.pem: unknown"]),
    ],
)
def test_openssl_reads_each_status_from_an_openssl_request(
    status: CertStatus,
    expected: list[str],
    issuing: CertifiedKey,
    key_of: KeyOf,
    now: dt.datetime,
    tmp_path: Path,
) -> None:
    device = _device(issuing, key_of, now)
    request = parse_ocsp_request(_openssl_request(tmp_path, issuing, device, "-no_nonce"))
    assert request.serial_number == device.serial_number
    assert request_matches_issuer(request, issuing.certificate)
    der = build_ocsp_response(request, status=status, issuer=issuing, now=now, next_update_in=HOUR)
    out = _openssl_status(tmp_path, der, now)
    for line in expected:
        assert line in out
    assert "Next Update: Jun  1 13:00:00 2026 GMT" in out


def test_a_cryptography_request_gets_a_response_signed_by_the_issuer(
    issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime, tmp_path: Path
) -> None:
    device = _device(issuing, key_of, now)
    request_der = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(device, issuing.certificate, hashes.SHA256())
        .build()
        .public_bytes(Encoding.DER)
    )
    request = parse_ocsp_request(request_der)
    assert request.hash_algorithm.name == "sha256"
    revoked = Revoked(now - HOUR, x509.ReasonFlags.unspecified)
    der = build_ocsp_response(request, status=revoked, issuer=issuing, now=now, next_update_in=HOUR)

    response = ocsp.load_der_ocsp_response(der)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason is None  # "unspecified" is left out
    # producedAt comes from `now`, not from the wall clock.
    assert response.produced_at_utc == now
    assert response.this_update_utc == now
    ski = issuing.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert response.responder_key_hash == ski.value.digest
    assert response.responder_name is None

    write_pem(tmp_path, "issuing.pem", issuing.certificate)
    write_pem(tmp_path, "device.pem", device)
    assert "device.pem: revoked" in _openssl_status(tmp_path, der, now, "-sha256")


@pytest.mark.parametrize("key_type", [KeyType.ED25519, KeyType.EC_P384, KeyType.RSA_2048])
def test_responses_signed_by_other_key_types_verify_in_openssl(
    key_type: KeyType, key_of: KeyOf, now: dt.datetime, tmp_path: Path
) -> None:
    root = create_root_ca("R", now=now, key_type=KeyType.EC_P256)
    issuing = create_issuing_ca(root, f"I {key_type}", now=now, key_type=key_type)
    device = _device(issuing, key_of, now)
    request = parse_ocsp_request(_openssl_request(tmp_path, issuing, device, "-no_nonce"))
    der = build_ocsp_response(request, status=Good(), issuer=issuing, now=now, next_update_in=HOUR)
    assert "device.pem: good" in _openssl_status(tmp_path, der, now)


def test_the_nonce_is_echoed(
    issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime, tmp_path: Path
) -> None:
    device = _device(issuing, key_of, now)
    request_der = _openssl_request(tmp_path, issuing, device)  # openssl adds a nonce by default
    request = parse_ocsp_request(request_der)
    nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value
    der = build_ocsp_response(request, status=Good(), issuer=issuing, now=now, next_update_in=HOUR)
    echoed = ocsp.load_der_ocsp_response(der).extensions.get_extension_for_class(x509.OCSPNonce)
    assert echoed.value == nonce

    # openssl compares the request's nonce with the response's: "Nonce Verify error" otherwise.
    (tmp_path / "resp.der").write_bytes(der)
    proc = openssl(
        "ocsp", "-reqin", tmp_path / "req.der", "-respin", tmp_path / "resp.der",
        "-VAfile", tmp_path / "issuing.pem", "-attime", attime(now), "-resp_text",
    )  # fmt: skip
    out = (proc.stdout + proc.stderr).decode()
    assert "Response verify OK" in out
    assert "Nonce Verify error" not in out
    assert "OCSP Nonce" in out

    no_nonce = parse_ocsp_request(_openssl_request(tmp_path, issuing, device, "-no_nonce"))
    der = build_ocsp_response(no_nonce, status=Good(), issuer=issuing, now=now, next_update_in=HOUR)
    with pytest.raises(x509.ExtensionNotFound):
        ocsp.load_der_ocsp_response(der).extensions.get_extension_for_class(x509.OCSPNonce)


@pytest.mark.parametrize(
    "garbage", [b"", b"\x30\x00", b"hello", b"\x30\x82\xff\xff", b"\x00" * 20_000]
)
def test_garbage_requests_are_refused(garbage: bytes) -> None:
    with pytest.raises(PolicyError) as info:
        parse_ocsp_request(garbage)
    assert info.value.reason == "ocsp_request_invalid"


def test_a_request_for_two_certificates_is_refused(
    issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime, tmp_path: Path
) -> None:
    # One request, one answer: batching would let one bad entry hide in many.
    device = _device(issuing, key_of, now)
    write_pem(tmp_path, "other.pem", _device(issuing, key_of, now))
    request = _openssl_request(
        tmp_path, issuing, device, "-cert", str(tmp_path / "other.pem"), "-no_nonce"
    )
    with pytest.raises(PolicyError, match="one certificate"):
        parse_ocsp_request(request)


def test_requests_about_another_issuer_are_not_answered(
    root: CertifiedKey, issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime, tmp_path: Path
) -> None:
    other_root = create_root_ca("Other Root", now=now)
    other = create_issuing_ca(other_root, "Fleet Test Devices", now=now)  # same name, other key
    foreign = _device(other, key_of, now)
    request = parse_ocsp_request(_openssl_request(tmp_path, other, foreign, "-no_nonce"))
    assert request_matches_issuer(request, other.certificate)
    assert not request_matches_issuer(request, issuing.certificate)
    assert not request_matches_issuer(request, root.certificate)
    with pytest.raises(PolicyError) as info:
        build_ocsp_response(request, status=Good(), issuer=issuing, now=now, next_update_in=HOUR)
    assert info.value.reason == "ocsp_unknown_issuer"


def test_bad_next_update_is_a_config_error(
    issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime, tmp_path: Path
) -> None:
    device = _device(issuing, key_of, now)
    request = parse_ocsp_request(_openssl_request(tmp_path, issuing, device, "-no_nonce"))
    with pytest.raises(ConfigError, match="positive"):
        build_ocsp_response(request, status=Good(), issuer=issuing, now=now, next_update_in=-HOUR)


def test_unsuccessful_responses(tmp_path: Path) -> None:
    for der, status, text in (
        (unauthorized_response(), ocsp.OCSPResponseStatus.UNAUTHORIZED, "unauthorized (6)"),
        (malformed_response(), ocsp.OCSPResponseStatus.MALFORMED_REQUEST, "malformedrequest (1)"),
    ):
        assert ocsp.load_der_ocsp_response(der).response_status is status
        (tmp_path / "r.der").write_bytes(der)
        proc = openssl(
            "ocsp", "-respin", tmp_path / "r.der", "-resp_text", "-noverify", check=False
        )
        assert text in (proc.stdout + proc.stderr).decode()
