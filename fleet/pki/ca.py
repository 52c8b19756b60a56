"""The fleet's own CAs and its server TLS certificate.

Trust domains are kept apart (DESIGN.md section 2): the root signs the issuing CA,
which signs only device certificates (pathlen 0), and the root signs the server
TLS certificate directly, so a device CA compromise cannot mint server certs and
brokers can trust the device CA without trusting server names.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.kernel.decoding import decode_certificate_fields, decoding
from fleet.kernel.errors import ConfigError, PolicyError
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.kernel.keys import KeyType, key_type_of
from fleet.kernel.reasons import Reason
from fleet.pki._time import require_utc
from fleet.pki.keys import PrivateKey, PublicKey, generate_private_key, signing_hash
from fleet.pki.serial import random_serial

# CA certificates are backdated a little so that a relying party whose clock is
# slightly behind does not reject a CA minted a moment ago.
CA_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class CertifiedKey:
    """A certificate together with the private key for its public key."""

    certificate: x509.Certificate
    private_key: PrivateKey


def _name(common_name: str, organization: str | None) -> x509.Name:
    if not common_name:
        raise ConfigError("a certificate common name must not be empty")
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def capped_not_after(
    issuer: x509.Certificate, now: dt.datetime, validity: dt.timedelta
) -> dt.datetime:
    """``now + validity``, but never past the issuer's own notAfter.

    A child outliving its issuer would fail path validation on the last days
    anyway; capping makes that visible at issuance. PolicyError when nothing
    is left of the window.
    """
    issuer_not_after = issuer.not_valid_after_utc
    if now >= issuer_not_after:
        raise PolicyError(
            f"issuer {issuer.subject.rfc4514_string()!r} expired at "
            f"{issuer_not_after.isoformat()}; rotate the CA before issuing",
            reason="issuer_expired",
        )
    return min(now + validity, issuer_not_after)


def refuse_outliving_issuer(
    issuer: x509.Certificate, now: dt.datetime, validity: dt.timedelta
) -> dt.datetime:
    """``now + validity``; PolicyError when that is past the issuer's notAfter.

    Device certificates are refused rather than capped (issue 13): a capped
    certificate quietly shortens every renewal in the issuer's last month and
    hides that the CA was not rotated in time. The operator rotates early
    (``fleet ca rotate-issuing`` / ``promote``), warned 180/90/30 days ahead.
    """
    issuer_not_after = issuer.not_valid_after_utc
    if now >= issuer_not_after:
        capped_not_after(issuer, now, validity)  # raises issuer_expired
    not_after = now + validity
    if not_after > issuer_not_after:
        raise PolicyError(
            f"a certificate valid until {not_after.isoformat()} would outlive its issuer "
            f"{issuer.subject.rfc4514_string()!r} (expires {issuer_not_after.isoformat()})",
            reason=Reason.CERTIFICATE_OUTLIVES_ISSUER,
            hint="Rotate the issuing CA: fleet ca rotate-issuing, then fleet ca promote.",
        )
    return not_after


def issuer_id(cert: x509.Certificate) -> str:
    """A CA's short name in URLs (``/crl/<id>``) and file names: 16 hex digits of its SHA-256."""
    return sha256_fingerprint(cert)[:16]


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def end_entity_usage(key_type: KeyType) -> x509.KeyUsage:
    """digitalSignature, plus keyEncipherment for RSA (TLS 1.2 RSA key exchange)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_type.is_rsa,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _check_validity(validity: dt.timedelta) -> None:
    if validity <= dt.timedelta(0):
        raise ConfigError(f"certificate validity must be positive, got {validity}")


def create_root_ca(
    common_name: str,
    *,
    now: dt.datetime,
    key_type: KeyType = KeyType.EC_P256,
    validity: dt.timedelta = dt.timedelta(days=3650),
    organization: str | None = None,
    key: PrivateKey | None = None,
    subject: x509.Name | None = None,
) -> CertifiedKey:
    """A self-signed root that may sign exactly one level of CA below it (pathlen 1).

    ``key``: the root's key when it is made elsewhere (in a PKCS#11 token);
    a fresh ``key_type`` key otherwise. ``subject`` (instead of
    ``common_name``/``organization``) keeps an old root's name on a rollover:
    the link certificates are then self-issued and do not count against path
    lengths (RFC 5280 section 4.2.1.9).
    """
    require_utc(now)
    _check_validity(validity)
    key = key if key is not None else generate_private_key(key_type)
    name = subject if subject is not None else _name(common_name, organization)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - CA_BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return CertifiedKey(builder.sign(key, signing_hash(key)), key)


def _subject_key_identifier(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        # Issuers we created always have one; an imported CA might not.
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


@functools.lru_cache(maxsize=16)  # the issuing CA's, on every issuance
def authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AKI a child of ``issuer`` carries, taken from the issuer's SKI."""
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
        _subject_key_identifier(issuer)
    )


def create_issuing_ca(
    root: CertifiedKey,
    common_name: str,
    *,
    now: dt.datetime,
    key_type: KeyType = KeyType.EC_P256,
    validity: dt.timedelta = dt.timedelta(days=5 * 365),
    organization: str | None = None,
    key: PrivateKey | None = None,
) -> CertifiedKey:
    """The device issuing CA: signs end-entity device certificates only (pathlen 0).

    ``key`` as for :func:`create_root_ca`.
    """
    key = key if key is not None else generate_private_key(key_type)
    certificate = sign_issuing_ca(
        root,
        subject=_name(common_name, organization),
        public_key=key.public_key(),
        now=now,
        validity=validity,
    )
    return CertifiedKey(certificate, key)


def sign_issuing_ca(
    root: CertifiedKey,
    *,
    subject: x509.Name,
    public_key: PublicKey,
    now: dt.datetime,
    validity: dt.timedelta,
) -> x509.Certificate:
    """A pathlen-0 CA certificate for ``public_key`` under ``root``, never outliving it.

    The one builder for issuing CAs, whether the key was made here (``fleet
    init``, online rotation) or arrived in a ceremony CSR (``fleet ca sign-issuing``).
    """
    require_utc(now)
    _check_validity(validity)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root.certificate.subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(now - CA_BACKDATE)
        .not_valid_after(capped_not_after(root.certificate, now, validity))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(authority_key_identifier(root.certificate), critical=False)
    )
    return builder.sign(root.private_key, signing_hash(root.private_key))


def create_server_certificate(
    issuer: CertifiedKey,
    *,
    common_name: str,
    dns_names: Sequence[str],
    ip_addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
    now: dt.datetime,
    key_type: KeyType = KeyType.EC_P256,
    validity: dt.timedelta = dt.timedelta(days=397),
) -> CertifiedKey:
    """A TLS server certificate for the EST/admin endpoint, signed by the fleet root.

    No CRL distribution point: clients would have to fetch the CRL from the very
    server they are trying to reach, and a failed fetch must not block enrollment.
    """
    require_utc(now)
    _check_validity(validity)
    if not dns_names and not ip_addresses:
        # Modern TLS clients ignore the CN; without SAN entries the cert matches nothing.
        raise ConfigError("a server certificate needs at least one DNS name or IP address")
    key = generate_private_key(key_type)
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ip) for ip in ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, None))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - CA_BACKDATE)
        .not_valid_after(capped_not_after(issuer.certificate, now, validity))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(end_entity_usage(key_type_of(key)), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(authority_key_identifier(issuer.certificate), critical=False)
    )
    return CertifiedKey(builder.sign(issuer.private_key, signing_hash(issuer.private_key)), key)


def certificate_to_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of ``cert``."""
    return cert.public_bytes(Encoding.PEM)


def load_certificates_pem(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; ConfigError when there is none or it is garbage.

    Callers that take the bundle from a request turn the ConfigError into a 4xx.
    """
    with decoding(
        "the PEM certificate bundle (no certificate found, or one is corrupt)", ConfigError
    ):
        certs = x509.load_pem_x509_certificates(data)
        for cert in certs:
            decode_certificate_fields(cert)
    if not certs:  # pragma: no cover - cryptography raises on empty input already
        raise ConfigError("the PEM bundle contains no certificate")
    return certs
