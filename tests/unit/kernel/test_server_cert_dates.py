"""What a device holds against the server's certificate dates (OpenSSL leaves them to it)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.kernel.certs import server_certificate_problem
from fleet.kernel.reasons import Reason

START = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
SKEW = dt.timedelta(minutes=15)


def server_der() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(START)
        .not_valid_after(START + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_expired_server_certificate_is_refused_with_the_reason() -> None:
    late = START + dt.timedelta(days=365) + SKEW + dt.timedelta(seconds=1)
    problem = server_certificate_problem(server_der(), late, SKEW)
    assert problem is not None
    assert problem.reason is Reason.CERTIFICATE_EXPIRED


def test_within_validity_and_skew_is_accepted() -> None:
    der = server_der()
    assert server_certificate_problem(der, START + dt.timedelta(days=100), SKEW) is None
    assert server_certificate_problem(der, START + dt.timedelta(days=365) + SKEW, SKEW) is None


def test_a_slow_device_clock_still_reaches_the_server() -> None:
    # Two days before notBefore by the device's clock: still the root's signature.
    assert server_certificate_problem(server_der(), START - dt.timedelta(days=2), SKEW) is None


def test_no_or_garbage_certificate_is_refused() -> None:
    for der in (None, b"", b"not a certificate"):
        problem = server_certificate_problem(der, START, SKEW)
        assert problem is not None
        assert problem.reason is Reason.NO_CERTIFICATE
