"""Chain verification per trust domain, with the kernel's leaf rule for operational certificates."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.kernel.chain import TrustDomain, verify_client_chain
from fleet.kernel.errors import FleetError

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
SKEW = dt.timedelta(minutes=5)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=10)).not_valid_after(NOW + dt.timedelta(days=900))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert, key


ISSUING = _ca("fleet issuing CA")
ROGUE = _ca("fleet issuing CA")  # same name, other key


def _leaf(
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] = ISSUING,
    *,
    eku: list[x509.ObjectIdentifier] | None = None,
    curve: ec.EllipticCurve | None = None,
    not_before: dt.datetime = NOW - dt.timedelta(hours=1),
    not_after: dt.datetime = NOW + dt.timedelta(days=30),
) -> x509.Certificate:
    key = ec.generate_private_key(curve or ec.SECP256R1())
    builder = (
        x509.CertificateBuilder().subject_name(_name("dev-1")).issuer_name(issuer[0].subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False,
        )
    )  # fmt: skip
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if eku is None else eku
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer[1], hashes.SHA256())


FLEET = TrustDomain("fleet", (ISSUING[0],), max_chain_depth=1, skew=SKEW)
MANUFACTURER = TrustDomain("manufacturer", (ISSUING[0],), skew=SKEW, require_client_auth_eku=False)


def _reason(cert: x509.Certificate, domain: TrustDomain = FLEET, now: dt.datetime = NOW) -> str:
    try:
        verify_client_chain(cert, (), domain, now=now)
    except FleetError as exc:
        return str(exc.reason)
    return "ok"


@pytest.mark.parametrize(
    ("cert", "domain", "now", "expected"),
    [
        (_leaf(), FLEET, NOW, "ok"),
        (_leaf(ROGUE), FLEET, NOW, "unknown_issuer"),
        (_leaf(not_after=NOW - dt.timedelta(minutes=4)), FLEET, NOW, "ok"),  # inside the skew
        (_leaf(not_after=NOW - dt.timedelta(minutes=6)), FLEET, NOW, "certificate_expired"),
        (_leaf(not_before=NOW + dt.timedelta(minutes=4)), FLEET, NOW, "ok"),
        (_leaf(not_before=NOW + dt.timedelta(minutes=6)), FLEET, NOW, "certificate_not_yet_valid"),
        (_leaf(eku=[]), FLEET, NOW, "not_client_cert"),
        (_leaf(eku=[ExtendedKeyUsageOID.SERVER_AUTH]), FLEET, NOW, "not_client_cert"),
        (_leaf(curve=ec.SECP521R1()), FLEET, NOW, "key_not_allowed"),
        # Bootstrap certificates (IDevIDs) often carry no EKU: their purpose is their domain.
        (_leaf(eku=[]), MANUFACTURER, NOW, "ok"),
        (_leaf(), TrustDomain("manufacturer", ()), NOW, "unknown_issuer"),
    ],
    ids=[
        "valid", "rogue-same-name", "expired-inside-skew", "expired", "future-inside-skew",
        "not-yet-valid", "no-eku", "server-auth-only", "p521-key", "idevid-no-eku", "no-anchor",
    ],
)  # fmt: skip
def test_verify_client_chain(
    cert: x509.Certificate, domain: TrustDomain, now: dt.datetime, expected: str
) -> None:
    assert _reason(cert, domain, now) == expected
