"""Issuing operational device certificates: validate, then build, then sign.

The pipeline is split (as in step-ca) so that callers can record or audit the
builder's decisions between steps, and so each step is tested on its own. The
identity always comes from the authenticated caller (``device_id``); the CSR
only proves possession of the key, and nothing from it is copied except the key.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from fleet.kernel.device_id import validate_device_id
from fleet.kernel.errors import CsrInvalid, IdentityMismatch, KeyNotAllowed
from fleet.kernel.keys import KeyType, key_type_of
from fleet.pki._time import require_utc
from fleet.pki.ca import (
    CertifiedKey,
    authority_key_identifier,
    end_entity_usage,
    issuer_id,
    refuse_outliving_issuer,
)
from fleet.pki.csr import csr_public_key, verify_csr_signature
from fleet.pki.keys import PublicKey, signing_hash
from fleet.pki.profile import DeviceProfile
from fleet.pki.serial import random_serial


@dataclass(frozen=True)
class ValidatedRequest:
    """A CSR that passed every check, reduced to what issuance may use."""

    device_id: str
    public_key: PublicKey
    key_type: KeyType


def _check_subject(csr: x509.CertificateSigningRequest, device_id: str) -> None:
    try:
        attributes = list(csr.subject)
    except ValueError as exc:  # cryptography decodes name values lazily
        raise CsrInvalid("the CSR subject cannot be decoded") from exc
    if not attributes:
        return
    if (
        len(attributes) == 1
        and attributes[0].oid == NameOID.COMMON_NAME
        and attributes[0].value == device_id
    ):
        return
    raise IdentityMismatch(
        f"the CSR subject {csr.subject.rfc4514_string()!r} asks for another identity than "
        f"device {device_id!r}; leave it empty or set only CN={device_id}",
        reason="subject_mismatch",
    )


def _check_san(csr: x509.CertificateSigningRequest, device_id: str) -> None:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    except ValueError as exc:  # duplicate or malformed extensions in the request
        raise CsrInvalid("the CSR's requested extensions cannot be parsed") from exc
    for name in san:
        if not (isinstance(name, x509.DNSName) and name.value == device_id):
            raise IdentityMismatch(
                f"the CSR requests subjectAltName {name!r}; only DNS:{device_id} "
                "(or no subjectAltName) is allowed",
                reason="san_not_allowed",
            )


def validate_request(
    csr: x509.CertificateSigningRequest, *, device_id: str, profile: DeviceProfile
) -> ValidatedRequest:
    """Check ``csr`` may be certified for ``device_id`` under ``profile``; raises on refusal."""
    verify_csr_signature(csr)
    public_key = csr_public_key(csr)
    key_type = key_type_of(public_key)
    if key_type not in profile.allowed_key_types:
        allowed = ", ".join(sorted(profile.allowed_key_types))
        raise KeyNotAllowed(
            f"key type {key_type} is not allowed by device profile {profile.name!r}; "
            f"allowed: {allowed}"
        )
    validate_device_id(device_id)
    _check_subject(csr, device_id)
    _check_san(csr, device_id)
    if not isinstance(public_key, PublicKey):  # pragma: no cover - key_type_of refused it
        raise KeyNotAllowed(f"unsupported public key {type(public_key).__name__}")
    return ValidatedRequest(device_id=device_id, public_key=public_key, key_type=key_type)


def crl_url_for(template: str, issuer: CertifiedKey) -> str:
    """``[profile] crl_url`` with ``{issuer}`` replaced by the issuer's id.

    After a rotation, ``/crl`` is the current issuer's CRL; a certificate of
    the retiring issuer must point at its own (``/crl/<issuer_id>``), or a
    relying party fetches a CRL by another CA and cannot check it.
    """
    return template.replace("{issuer}", issuer_id(issuer.certificate))


def build_device_certificate(
    request: ValidatedRequest,
    *,
    issuer: CertifiedKey,
    profile: DeviceProfile,
    now: dt.datetime,
    serial: int | None = None,
) -> x509.CertificateBuilder:
    """The unsigned device certificate for ``request`` under ``profile``."""
    require_utc(now)
    not_after = refuse_outliving_issuer(issuer.certificate, now, profile.validity)
    not_before = now - profile.backdate
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, request.device_id)]
    if profile.organization:
        subject.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, profile.organization))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(issuer.certificate.subject)
        .public_key(request.public_key)
        .serial_number(random_serial() if serial is None else serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(end_entity_usage(request.key_type), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(request.public_key), critical=False
        )
        .add_extension(authority_key_identifier(issuer.certificate), critical=False)
    )
    if profile.crl_url:
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url_for(profile.crl_url, issuer))],
            relative_name=None,
            reasons=None,
            crl_issuer=None,
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    if profile.ocsp_url:
        ocsp = x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(profile.ocsp_url)
        )
        builder = builder.add_extension(x509.AuthorityInformationAccess([ocsp]), critical=False)
    return builder


def sign_certificate(builder: x509.CertificateBuilder, issuer: CertifiedKey) -> x509.Certificate:
    """Sign ``builder`` with the issuer's key and the hash that matches it."""
    return builder.sign(issuer.private_key, signing_hash(issuer.private_key))


def issue_device_certificate(
    csr: x509.CertificateSigningRequest,
    *,
    device_id: str,
    issuer: CertifiedKey,
    profile: DeviceProfile,
    now: dt.datetime,
    serial: int | None = None,
) -> x509.Certificate:
    """Validate ``csr`` for ``device_id``, build the certificate and sign it."""
    request = validate_request(csr, device_id=device_id, profile=profile)
    builder = build_device_certificate(
        request, issuer=issuer, profile=profile, now=now, serial=serial
    )
    return sign_certificate(builder, issuer)
