from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from fleet.kernel.errors import ConfigError, PolicyError
from fleet.kernel.keys import KeyType, key_type_of
from fleet.pki.ca import (
    CertifiedKey,
    certificate_to_pem,
    create_issuing_ca,
    create_root_ca,
    create_server_certificate,
    load_certificates_pem,
)
from fleet.pki.issuance import issue_device_certificate
from fleet.pki.keys import PrivateKey, signing_hash
from fleet.pki.profile import DeviceProfile
from fleet.pki.serial import random_serial
from tests.unit.pki.helpers import make_csr, openssl_text, openssl_verify

ALL_KEYS = frozenset(KeyType)


def _device(
    issuing: CertifiedKey, key: PrivateKey, now: dt.datetime, device_id: str = "dev-1"
) -> x509.Certificate:
    profile = DeviceProfile(allowed_key_types=ALL_KEYS)
    return issue_device_certificate(
        make_csr(key), device_id=device_id, issuer=issuing, profile=profile, now=now
    )


def test_root_and_issuing_ca_shape(root: CertifiedKey, issuing: CertifiedKey) -> None:
    root_cert, issuing_cert = root.certificate, issuing.certificate
    assert root_cert.subject == root_cert.issuer
    bc = root_cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 1
    ku = root_cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign
    assert ku.value.crl_sign
    bc = issuing_cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.value.ca
    assert bc.value.path_length == 0
    aki = issuing_cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = root_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert issuing_cert.issuer == root_cert.subject


def test_openssl_verifies_the_hierarchy_and_device_purpose(
    root: CertifiedKey,
    issuing: CertifiedKey,
    key_of: Callable[[KeyType], PrivateKey],
    pki_now: dt.datetime,
    tmp_path: Path,
) -> None:
    openssl_verify(tmp_path, roots=[root.certificate], leaf=issuing.certificate, now=pki_now)
    device = _device(issuing, key_of(KeyType.EC_P256), pki_now)
    roots, untrusted = [root.certificate], [issuing.certificate]

    def verify(*extra: str) -> str:
        return openssl_verify(
            tmp_path, roots=roots, untrusted=untrusted, leaf=device, now=pki_now,
            extra=extra, check=False,
        )  # fmt: skip

    assert ": OK" in verify()
    assert ": OK" in verify("-purpose", "sslclient")
    out = verify("-purpose", "sslserver")
    assert "unsuitable certificate purpose" in out
    assert ": OK" not in out

    text = openssl_text(tmp_path, issuing.certificate)
    assert "CA:TRUE, pathlen:0" in text
    assert "Certificate Sign, CRL Sign" in text


def test_pathlen_zero_stops_a_ca_below_the_issuing_ca(
    root: CertifiedKey,
    issuing: CertifiedKey,
    key_of: Callable[[KeyType], PrivateKey],
    pki_now: dt.datetime,
    tmp_path: Path,
) -> None:
    # A rogue CA that the issuing CA was tricked into signing: openssl must
    # refuse anything below it because of pathlen:0.
    rogue_key = key_of(KeyType.EC_P384)
    rogue = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=rogue"))
        .issuer_name(issuing.certificate.subject)
        .public_key(rogue_key.public_key())
        .serial_number(random_serial())
        .not_valid_before(pki_now - dt.timedelta(hours=1))
        .not_valid_after(pki_now + dt.timedelta(days=60))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(issuing.private_key, signing_hash(issuing.private_key))
    )
    victim = _device(CertifiedKey(rogue, rogue_key), key_of(KeyType.EC_P256), pki_now)
    out = openssl_verify(
        tmp_path,
        roots=[root.certificate],
        untrusted=[issuing.certificate, rogue],
        leaf=victim,
        now=pki_now,
        check=False,
    )
    assert "path length constraint exceeded" in out


def test_a_device_certificate_cannot_act_as_a_ca(
    root: CertifiedKey,
    issuing: CertifiedKey,
    key_of: Callable[[KeyType], PrivateKey],
    pki_now: dt.datetime,
    tmp_path: Path,
) -> None:
    device_key = key_of(KeyType.EC_P256)
    device = _device(issuing, device_key, pki_now)
    forged = _device(CertifiedKey(device, device_key), key_of(KeyType.ED25519), pki_now, "forged")
    out = openssl_verify(
        tmp_path,
        roots=[root.certificate],
        untrusted=[issuing.certificate, device],
        leaf=forged,
        now=pki_now,
        check=False,
    )
    assert "invalid CA certificate" in out


@pytest.mark.parametrize("key_type", list(KeyType))
def test_every_key_type_makes_a_chain_openssl_accepts(
    key_type: KeyType,
    key_of: Callable[[KeyType], PrivateKey],
    pki_now: dt.datetime,
    tmp_path: Path,
) -> None:
    root = create_root_ca(f"Root {key_type}", now=pki_now, key_type=key_type)
    issuing = create_issuing_ca(root, f"Issuing {key_type}", now=pki_now, key_type=key_type)
    assert key_type_of(root.certificate.public_key()) is key_type
    assert key_type_of(issuing.certificate.public_key()) is key_type
    device = _device(issuing, key_of(key_type), pki_now)
    ku = device.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature
    assert ku.key_encipherment is key_type.is_rsa
    out = openssl_verify(
        tmp_path,
        roots=[root.certificate],
        untrusted=[issuing.certificate],
        leaf=device,
        now=pki_now,
        extra=["-purpose", "sslclient"],
    )
    assert ": OK" in out


def test_server_certificate_is_signed_by_the_root_for_server_auth_only(
    root: CertifiedKey, issuing: CertifiedKey, pki_now: dt.datetime, tmp_path: Path
) -> None:
    server = create_server_certificate(
        root,
        common_name="est.fleet.test",
        dns_names=["est.fleet.test", "localhost"],
        ip_addresses=[ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")],
        now=pki_now,
    )
    cert = server.certificate
    assert cert.issuer == root.certificate.subject
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["est.fleet.test", "localhost"]
    assert len(san.get_values_for_type(x509.IPAddress)) == 2
    expected_end = pki_now + dt.timedelta(days=397)
    assert cert.not_valid_after_utc == expected_end

    out = openssl_verify(
        tmp_path,
        roots=[root.certificate],
        leaf=cert,
        now=pki_now,
        extra=["-purpose", "sslserver", "-verify_hostname", "est.fleet.test"],
    )
    assert ": OK" in out
    out = openssl_verify(
        tmp_path,
        roots=[root.certificate],
        leaf=cert,
        now=pki_now,
        extra=["-purpose", "sslclient"],
        check=False,
    )
    assert ": OK" not in out
    # The server cert is not in the device trust domain.
    out = openssl_verify(tmp_path, roots=[issuing.certificate], leaf=cert, now=pki_now, check=False)
    assert ": OK" not in out

    text = openssl_text(tmp_path, cert)
    assert "CRL Distribution Points" not in text
    assert "DNS:est.fleet.test" in text
    assert "IP Address:127.0.0.1" in text
    assert "TLS Web Server Authentication" in text


def test_server_certificate_needs_a_name(root: CertifiedKey, pki_now: dt.datetime) -> None:
    with pytest.raises(ConfigError, match="DNS name or IP"):
        create_server_certificate(root, common_name="x", dns_names=[], ip_addresses=[], now=pki_now)


def test_children_never_outlive_their_issuer(pki_now: dt.datetime) -> None:
    root = create_root_ca("Short Root", now=pki_now, validity=dt.timedelta(days=10))
    issuing = create_issuing_ca(root, "Capped", now=pki_now)
    assert issuing.certificate.not_valid_after_utc == root.certificate.not_valid_after_utc
    server = create_server_certificate(
        root, common_name="s", dns_names=["s"], ip_addresses=[], now=pki_now
    )
    assert server.certificate.not_valid_after_utc == root.certificate.not_valid_after_utc
    later = pki_now + dt.timedelta(days=10)
    with pytest.raises(PolicyError, match="expired") as info:
        create_issuing_ca(root, "Too late", now=later)
    assert info.value.reason == "issuer_expired"


def test_naive_or_non_utc_time_is_refused() -> None:
    with pytest.raises(ConfigError, match="UTC"):
        create_root_ca("x", now=dt.datetime(2026, 6, 1))
    plus_two = dt.timezone(dt.timedelta(hours=2))
    with pytest.raises(ConfigError, match="UTC"):
        create_root_ca("x", now=dt.datetime(2026, 6, 1, tzinfo=plus_two))


def test_bad_validity_and_name_are_refused(pki_now: dt.datetime) -> None:
    with pytest.raises(ConfigError, match="validity"):
        create_root_ca("x", now=pki_now, validity=dt.timedelta(0))
    with pytest.raises(ConfigError, match="common name"):
        create_root_ca("", now=pki_now)


def test_pem_bundle_round_trip_and_garbage(root: CertifiedKey, issuing: CertifiedKey) -> None:
    bundle = certificate_to_pem(issuing.certificate) + certificate_to_pem(root.certificate)
    assert load_certificates_pem(bundle) == [issuing.certificate, root.certificate]
    for garbage in (
        b"",
        b"hello",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ):
        with pytest.raises(ConfigError, match="PEM"):
            load_certificates_pem(garbage)
