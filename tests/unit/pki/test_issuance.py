from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.kernel.errors import (
    CsrInvalid,
    DeviceIdInvalid,
    IdentityMismatch,
    KeyNotAllowed,
    PolicyError,
)
from fleet.kernel.keys import KeyType
from fleet.pki.ca import CertifiedKey, create_issuing_ca, create_root_ca
from fleet.pki.csr import load_csr
from fleet.pki.issuance import (
    build_device_certificate,
    issue_device_certificate,
    sign_certificate,
    validate_request,
)
from fleet.pki.keys import PrivateKey
from fleet.pki.profile import DeviceProfile
from tests.support.openssl import openssl
from tests.unit.pki.helpers import csr_der, make_csr, openssl_text, openssl_verify

DEFAULT = DeviceProfile()
KeyOf = Callable[[KeyType], PrivateKey]


def _issue(
    csr: x509.CertificateSigningRequest,
    issuing: CertifiedKey,
    now: dt.datetime,
    *,
    device_id: str = "dev-1",
    profile: DeviceProfile = DEFAULT,
) -> x509.Certificate:
    return issue_device_certificate(
        csr, device_id=device_id, issuer=issuing, profile=profile, now=now
    )


def test_subject_is_written_by_the_server_even_for_an_empty_csr_subject(
    issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime
) -> None:
    cert = _issue(make_csr(key_of(KeyType.EC_P256)), issuing, now, device_id="sensor-42")
    assert cert.subject.rfc4514_string() == "CN=sensor-42"
    assert cert.issuer == issuing.certificate.subject


def test_matching_cn_is_accepted_and_organization_comes_from_the_profile(
    issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime
) -> None:
    profile = DeviceProfile(organization="Acme Fleet")
    csr = make_csr(key_of(KeyType.ED25519), common_name="dev-1")
    cert = _issue(csr, issuing, now, profile=profile)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Acme Fleet"


@pytest.mark.parametrize(
    ("common_name", "extra"),
    [
        ("other-device", []),
        ("DEV-1", []),
        ("dev-1", [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme")]),
        (None, [x509.NameAttribute(NameOID.SERIAL_NUMBER, "dev-1")]),
        ("dev-1", [x509.NameAttribute(NameOID.COMMON_NAME, "dev-2")]),
        ("dev-1", [x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")]),
    ],
)
def test_a_csr_subject_asking_for_anything_else_is_refused(
    common_name: str | None,
    extra: list[x509.NameAttribute[str]],
    issuing: CertifiedKey,
    key_of: KeyOf,
    now: dt.datetime,
) -> None:
    csr = make_csr(key_of(KeyType.EC_P256), common_name=common_name, extra=extra)
    with pytest.raises(IdentityMismatch) as info:
        _issue(csr, issuing, now)
    assert info.value.reason == "subject_mismatch"
    assert "dev-1" in info.value.message


def test_san_naming_only_the_device_is_accepted_but_not_copied(
    issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime
) -> None:
    csr = make_csr(key_of(KeyType.EC_P256), san=[x509.DNSName("dev-1")])
    cert = _issue(csr, issuing, now)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


@pytest.mark.parametrize(
    "san",
    [
        [x509.DNSName("other")],
        [x509.DNSName("dev-1"), x509.DNSName("admin")],
        [x509.IPAddress(ipaddress.ip_address("10.0.0.1"))],
        [x509.RFC822Name("dev-1@example.com")],
        [x509.UniformResourceIdentifier("spiffe://fleet/dev-1")],
    ],
)
def test_san_for_another_identity_is_refused(
    san: list[x509.GeneralName], issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime
) -> None:
    csr = make_csr(key_of(KeyType.EC_P256), common_name="dev-1", san=san)
    with pytest.raises(IdentityMismatch) as info:
        _issue(csr, issuing, now)
    assert info.value.reason == "san_not_allowed"


def test_requested_extensions_are_never_copied(
    issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime
) -> None:
    csr = make_csr(
        key_of(KeyType.EC_P256),
        extensions=[
            x509.BasicConstraints(ca=True, path_length=None),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        ],
    )
    cert = _issue(csr, issuing, now)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_a_tampered_csr_is_refused(issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime) -> None:
    der = csr_der(make_csr(key_of(KeyType.EC_P256), common_name="dev-1"))
    tampered = load_csr(der.replace(b"dev-1", b"dev-2"))
    with pytest.raises(CsrInvalid, match="signature"):
        _issue(tampered, issuing, now, device_id="dev-2")


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: rsa.generate_private_key(65537, 1024), "RSA 1024"),  # noqa: S505 - must refuse
        (lambda: ec.generate_private_key(ec.SECP521R1()), "secp521r1"),
    ],
)
def test_unsupported_key_types_are_refused(
    make: Callable[[], PrivateKey],
    named: str,
    issuing: CertifiedKey,
    now: dt.datetime,
) -> None:
    everything = DeviceProfile(allowed_key_types=frozenset(KeyType))
    with pytest.raises(KeyNotAllowed, match=named):
        _issue(make_csr(make()), issuing, now, profile=everything)


def test_key_types_outside_the_profile_are_refused(
    issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime
) -> None:
    with pytest.raises(KeyNotAllowed, match="rsa-2048 is not allowed by device profile 'default'"):
        _issue(make_csr(key_of(KeyType.RSA_2048)), issuing, now)
    ed_only = DeviceProfile(
        name="ed",
        allowed_key_types=frozenset({KeyType.ED25519}),
        preferred_key_type=KeyType.ED25519,
    )
    with pytest.raises(KeyNotAllowed, match="allowed: ed25519"):
        _issue(make_csr(key_of(KeyType.EC_P256)), issuing, now, profile=ed_only)


@pytest.mark.parametrize(
    "device_id", ["a/b", "a+b", "#", "", "x" * 65, "admin", "ADMIN", "dév", "x\n", "a\x00b"]
)
def test_bad_device_ids_are_refused(
    device_id: str, issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime
) -> None:
    with pytest.raises(DeviceIdInvalid):
        _issue(make_csr(key_of(KeyType.EC_P256)), issuing, now, device_id=device_id)


def test_validity_is_backdated_and_lasts_the_profile_validity(
    issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime
) -> None:
    profile = DeviceProfile(validity=dt.timedelta(days=7), backdate=dt.timedelta(minutes=10))
    cert = _issue(make_csr(key_of(KeyType.EC_P256)), issuing, now, profile=profile)
    assert cert.not_valid_before_utc == now - dt.timedelta(minutes=10)
    assert cert.not_valid_after_utc == now + dt.timedelta(days=7)


def test_a_certificate_that_would_outlive_its_issuer_is_refused_not_capped(
    key_of: KeyOf, now: dt.datetime
) -> None:
    root = create_root_ca("R", now=now, validity=dt.timedelta(days=400))
    issuing = create_issuing_ca(root, "I", now=now, validity=dt.timedelta(days=31))
    csr = make_csr(key_of(KeyType.EC_P256))
    assert _issue(csr, issuing, now).not_valid_after_utc == now + dt.timedelta(days=30)
    with pytest.raises(PolicyError) as outlives:
        _issue(csr, issuing, now + dt.timedelta(days=2))
    assert outlives.value.reason == "certificate_outlives_issuer"
    for too_late in (issuing.certificate.not_valid_after_utc, now + dt.timedelta(days=35)):
        with pytest.raises(PolicyError) as info:
            _issue(csr, issuing, too_late)
        assert info.value.reason == "issuer_expired"


def test_serials_are_random_in_range_and_distinct(
    issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime
) -> None:
    csr = make_csr(key_of(KeyType.EC_P256))
    serials = {_issue(csr, issuing, now).serial_number for _ in range(100)}
    assert len(serials) == 100
    assert all(0 < s < 2**159 for s in serials)
    explicit = issue_device_certificate(
        csr, device_id="dev-1", issuer=issuing, profile=DEFAULT, now=now, serial=12345
    )
    assert explicit.serial_number == 12345


def test_key_identifiers_link_the_device_to_its_issuer(
    issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime
) -> None:
    key = key_of(KeyType.EC_P384)
    cert = _issue(make_csr(key), issuing, now)
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    issuer_ski = issuing.certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value
    assert aki.key_identifier == issuer_ski.digest
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not ku.value.key_encipherment


def test_cdp_and_ocsp_appear_exactly_when_configured(
    root: CertifiedKey, issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime, tmp_path: Path
) -> None:
    csr = make_csr(key_of(KeyType.EC_P256))
    bare = openssl_text(tmp_path, _issue(csr, issuing, now))
    assert "CRL Distribution Points" not in bare
    assert "Authority Information Access" not in bare
    assert "TLS Web Client Authentication" in bare
    assert "TLS Web Server Authentication" not in bare

    profile = DeviceProfile(
        crl_url="http://pki.fleet.test/crl", ocsp_url="http://pki.fleet.test/ocsp"
    )
    cert = _issue(csr, issuing, now, profile=profile)
    text = openssl_text(tmp_path, cert)
    assert "CRL Distribution Points" in text
    assert "URI:http://pki.fleet.test/crl" in text
    assert "OCSP - URI:http://pki.fleet.test/ocsp" in text
    # Only one of the two.
    crl_only = openssl_text(
        tmp_path, _issue(csr, issuing, now, profile=DeviceProfile(crl_url="http://c.test/x.crl"))
    )
    assert "CRL Distribution Points" in crl_only
    assert "OCSP" not in crl_only

    out = openssl_verify(
        tmp_path,
        roots=[root.certificate],
        untrusted=[issuing.certificate],
        leaf=cert,
        now=now,
        extra=["-purpose", "sslclient"],
    )
    assert ": OK" in out


def test_the_pipeline_steps_compose_like_the_facade(
    issuing: CertifiedKey, key_of: KeyOf, now: dt.datetime
) -> None:
    key = key_of(KeyType.RSA_3072)
    profile = DeviceProfile(allowed_key_types=frozenset(KeyType))
    request = validate_request(make_csr(key), device_id="rsa-dev", profile=profile)
    assert request.key_type is KeyType.RSA_3072
    assert request.public_key == key.public_key()
    builder = build_device_certificate(request, issuer=issuing, profile=profile, now=now, serial=7)
    cert = sign_certificate(builder, issuing)
    assert cert.serial_number == 7
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature
    assert ku.key_encipherment
    cert.verify_directly_issued_by(issuing.certificate)


def test_an_openssl_made_csr_is_issued_and_the_result_verifies(
    root: CertifiedKey, issuing: CertifiedKey, now: dt.datetime, tmp_path: Path
) -> None:
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes",
        "-keyout", tmp_path / "key.pem", "-subj", "/CN=dev-7", "-outform", "DER",
        "-out", tmp_path / "req.der",
    )  # fmt: skip
    csr = load_csr((tmp_path / "req.der").read_bytes())
    cert = _issue(csr, issuing, now, device_id="dev-7")
    assert cert.subject.rfc4514_string() == "CN=dev-7"
    out = openssl_verify(
        tmp_path,
        roots=[root.certificate],
        untrusted=[issuing.certificate],
        leaf=cert,
        now=now,
        extra=["-purpose", "sslclient"],
    )
    assert ": OK" in out
    # The certificate carries the key openssl generated, nothing else.
    pub = openssl("pkey", "-in", tmp_path / "key.pem", "-pubout").stdout
    assert pub == openssl("x509", "-in", tmp_path / "leaf.pem", "-noout", "-pubkey").stdout
