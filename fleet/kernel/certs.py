"""What a certificate says about itself (pure): validity with skew, CA flag, EKU, issuer, key.

These are the leaf checks every enforcer makes: the EST server on a renewal,
the agent before it installs what the server sent, and both brokers at
connect (the C plugin makes the same checks in the same order; the shared
vectors prove it). Each check returns ``None`` or a :class:`Problem` with a
reason code, so callers can raise, deny or log as their layer requires.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtendedKeyUsageOID

from fleet.kernel.errors import KeyNotAllowed
from fleet.kernel.keys import KeyType, key_type_of
from fleet.kernel.reasons import Reason

DEFAULT_SKEW = dt.timedelta(minutes=5)


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    reason: Reason
    detail: str


def describe(cert: x509.Certificate) -> str:
    """``certificate 'CN=x' (serial 1f)``, for messages."""
    subject = cert.subject.rfc4514_string() or "(empty subject)"
    return f"certificate {subject!r} (serial {cert.serial_number:x})"


def validity_problem(
    cert: x509.Certificate,
    now: dt.datetime,
    skew: dt.timedelta,
    *,
    expired: Reason = Reason.CERTIFICATE_EXPIRED,
) -> Problem | None:
    """Outside [notBefore - skew, notAfter + skew]? Device clocks are often a little wrong."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if now > cert.not_valid_after_utc + skew:
        return Problem(
            expired, f"{describe(cert)} expired at {cert.not_valid_after_utc.isoformat()}"
        )
    if now < cert.not_valid_before_utc - skew:
        return Problem(
            Reason.CERTIFICATE_NOT_YET_VALID if expired is Reason.CERTIFICATE_EXPIRED else expired,
            f"{describe(cert)} is not valid before {cert.not_valid_before_utc.isoformat()}",
        )
    return None


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def path_length(cert: x509.Certificate) -> int | None:
    """basicConstraints pathLenConstraint of a CA; None when unlimited, absent or not a CA."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
    return constraints.path_length if constraints.ca else None


def has_client_auth_eku(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in eku


def client_cert_problem(
    cert: x509.Certificate, allowed_keys: frozenset[KeyType] = frozenset(KeyType)
) -> Problem | None:
    """Not usable as a device's client certificate: a CA, no EKU clientAuth, or a key we refuse."""
    if is_ca(cert):
        return Problem(Reason.NOT_CLIENT_CERT, f"{describe(cert)} is a CA certificate")
    if not has_client_auth_eku(cert):
        return Problem(Reason.NOT_CLIENT_CERT, f"{describe(cert)} has no EKU clientAuth")
    try:
        key_type = key_type_of(cert.public_key())
    # ValueError, UnsupportedAlgorithm: a key cryptography cannot load.
    except (KeyNotAllowed, ValueError, UnsupportedAlgorithm) as exc:
        return Problem(Reason.KEY_NOT_ALLOWED, f"{describe(cert)}: {exc}")
    if key_type not in allowed_keys:
        return Problem(Reason.KEY_NOT_ALLOWED, f"{describe(cert)}: key type {key_type} not allowed")
    return None


def issued_by(
    cert: x509.Certificate, issuers: Iterable[x509.Certificate]
) -> x509.Certificate | None:
    """The CA among ``issuers`` that signed ``cert`` (name and signature), or None."""
    for issuer in issuers:
        if cert.issuer != issuer.subject:
            continue
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, UnsupportedAlgorithm, InvalidSignature):
            continue
        return issuer
    return None


def server_certificate_problem(
    der: bytes | None, now: dt.datetime, skew: dt.timedelta = DEFAULT_SKEW
) -> Problem | None:
    """The certificate a server or broker presented to a device, judged for time.

    For device contexts that leave dates to the kernel (``tls_policy.check_time_in_kernel``):
    the handshake verified the chain to the pinned root; here an EXPIRED certificate is
    refused (its key may be long retired). notBefore is not held against the server: a
    device whose clock is slow must still reach the server that will tell it so, and a
    certificate the fleet root signed is authentic whenever it starts.
    """
    if not der:
        return Problem(Reason.NO_CERTIFICATE, "the server presented no certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return Problem(Reason.NO_CERTIFICATE, "the server's certificate does not parse")
    if now > cert.not_valid_after_utc + skew:
        return validity_problem(cert, now, skew)
    return None
