"""Certificate revocation lists (RFC 5280 section 5) signed by the issuing CA."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from fleet.kernel.errors import ConfigError
from fleet.pki._time import require_utc
from fleet.pki.ca import CertifiedKey, authority_key_identifier
from fleet.pki.keys import signing_hash


@dataclass(frozen=True)
class RevokedEntry:
    """One revoked certificate as the CRL lists it."""

    serial: int
    revoked_at: dt.datetime
    reason: x509.ReasonFlags | None = None


def meaningful_reason(reason: x509.ReasonFlags | None) -> x509.ReasonFlags | None:
    """``reason``, or None for "unspecified".

    RFC 5280 section 5.3.1: the reason code extension SHOULD be absent rather
    than carry unspecified (0); removeFromCRL only belongs in delta CRLs.
    """
    if reason is None or reason is x509.ReasonFlags.unspecified:
        return None
    if reason is x509.ReasonFlags.remove_from_crl:
        raise ConfigError("removeFromCRL is only valid in delta CRLs, which fleet does not issue")
    return reason


def _revoked_certificate(entry: RevokedEntry) -> x509.RevokedCertificate:
    builder = (
        x509.RevokedCertificateBuilder()
        .serial_number(entry.serial)
        .revocation_date(entry.revoked_at)
    )
    reason = meaningful_reason(entry.reason)
    if reason is not None:
        builder = builder.add_extension(x509.CRLReason(reason), critical=False)
    return builder.build()


def build_crl(
    issuer: CertifiedKey,
    revoked: Iterable[RevokedEntry],
    *,
    now: dt.datetime,
    next_update_in: dt.timedelta,
    crl_number: int,
) -> x509.CertificateRevocationList:
    """A complete CRL for ``issuer`` listing ``revoked``, valid from ``now``.

    ``crl_number`` must increase with every CRL the issuer publishes (RFC 5280
    5.2.3) so relying parties can tell the newer of two CRLs apart; the caller
    owns that counter because it lives in the store.
    """
    require_utc(now)
    if next_update_in <= dt.timedelta(0):
        raise ConfigError(f"CRL next update interval must be positive, got {next_update_in}")
    if crl_number < 0 or crl_number.bit_length() > 159:
        raise ConfigError(f"CRL number {crl_number} must be between 0 and 2**159 - 1")
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(now)
        .next_update(now + next_update_in)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(authority_key_identifier(issuer.certificate), critical=False)
    )
    seen: set[int] = set()
    for entry in revoked:
        if entry.serial in seen:  # a serial listed twice is ambiguous about its reason
            continue
        seen.add(entry.serial)
        builder = builder.add_revoked_certificate(_revoked_certificate(entry))
    return builder.sign(issuer.private_key, signing_hash(issuer.private_key))


def crl_to_pem(crl: x509.CertificateRevocationList) -> bytes:
    """PEM encoding of ``crl`` (use ``crl.public_bytes(Encoding.DER)`` for HTTP)."""
    return crl.public_bytes(Encoding.PEM)


def crl_to_der(crl: x509.CertificateRevocationList) -> bytes:
    """DER encoding of ``crl``, as served at the CRL distribution point."""
    return crl.public_bytes(Encoding.DER)
