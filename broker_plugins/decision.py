"""Who may connect to a broker: the pure decision core (no I/O, no clock of its own).

Every broker adapter (the embedded amqtt broker, the Mosquitto sidecar) asks
:func:`decide_connect` the same question with what the TLS layer saw: the peer's
leaf certificate, the MQTT client id, a view of the revocation state, the trust
policy and the time. The answer is :class:`Allow` (with the device id the
session is bound to) or :class:`Deny` with a stable reason code that logs and
metrics carry.

Why each check exists, beyond "the TLS handshake verified the chain":

* ``unknown_issuer``: a TLS trust store must contain the root, so any sub-CA of
  that root (the admin CA, a future CA) and the root itself could mint
  certificates that pass the handshake. Only the configured *issuing* CA(s) may
  sign device certificates (DESIGN.md §2, the Mosquitto note).
* ``expired``: validity is checked here, with a small skew allowance, so that a
  refusal has a reason in the log rather than an anonymous handshake failure.
* ``bad_device_id``: the device id goes into topics; a CN with ``/``, ``+`` or
  ``#`` would escape the topic ACL.
* ``client_id_mismatch``: otherwise one device could take over (kick) another
  device's session, or resume its persistent session and read its queue.

The device id rule mirrors ``fleet.pki.device_id``; broker_plugins may not
import server code (it runs beside a broker, reading only the store's feed),
so the rule is restated here and both are tested against the same cases.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from collections.abc import Iterable, Sequence
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SKEW = dt.timedelta(minutes=5)

_DEVICE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)

# Same list as fleet.pki.device_id.RESERVED_DEVICE_IDS (compared case-insensitively).
RESERVED_DEVICE_IDS: frozenset[str] = frozenset(
    {
        "admin",
        "administrator",
        "root",
        "fleet",
        "broker",
        "sidecar",
        "system",
        "mosquitto",
        "anonymous",
        "$sys",
        "localhost",
        "server",
        "ca",
        ".",
        "..",
    }
)


class DenyReason(enum.StrEnum):
    """Stable reason codes of a refused connection (logs, metrics labels)."""

    NO_CERTIFICATE = "no_certificate"
    UNKNOWN_ISSUER = "unknown_issuer"
    EXPIRED = "expired"
    NOT_CLIENT_CERT = "not_client_cert"
    BAD_DEVICE_ID = "bad_device_id"
    CLIENT_ID_MISMATCH = "client_id_mismatch"
    REVOKED = "revoked"
    STALE_REVOCATION_DATA = "stale_revocation_data"


@dataclasses.dataclass(frozen=True, slots=True)
class Allow:
    device_id: str
    serial: int


@dataclasses.dataclass(frozen=True, slots=True)
class Deny:
    reason: DenyReason
    detail: str
    # What could be read from the certificate, for the refusal log.
    device_id: str | None = None
    serial: int | None = None


Decision = Allow | Deny


class RevocationView(Protocol):
    """What the decision needs to know about revocation (the cache implements it)."""

    def is_revoked(self, serial: int) -> bool: ...

    def is_device_revoked(self, device_id: str) -> bool: ...

    def usable(self) -> bool:
        """False when the data is too stale to decide on and the policy is to fail closed."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class TrustPolicy:
    """Which CAs may sign device certificates, and how much clock skew is forgiven.

    ``issuers`` sign device certificates directly. ``anchors`` are the CAs above
    them (the root); they are only used to check that an issuer is itself still
    valid, never to accept a leaf.
    """

    issuers: tuple[x509.Certificate, ...]
    anchors: tuple[x509.Certificate, ...] = ()
    skew: dt.timedelta = DEFAULT_SKEW
    reserved_ids: frozenset[str] = RESERVED_DEVICE_IDS

    def __post_init__(self) -> None:
        if not self.issuers:
            raise ValueError("a trust policy needs at least one issuing CA")
        if self.skew < dt.timedelta(0):
            raise ValueError("skew must not be negative")

    @classmethod
    def from_bundle(
        cls, certificates: Iterable[x509.Certificate], *, skew: dt.timedelta = DEFAULT_SKEW
    ) -> TrustPolicy:
        """Split a CA bundle (issuing CA(s) + root) into issuers and anchors.

        Self-issued CAs are anchors, the other CAs issuers. A bundle with only a
        root makes the root the issuer (a single-level fleet PKI).
        """
        cas = [c for c in certificates if _is_ca(c)]
        issuers = tuple(c for c in cas if c.subject != c.issuer)
        anchors = tuple(c for c in cas if c.subject == c.issuer)
        if not issuers:
            issuers, anchors = anchors, ()
        return cls(issuers=issuers, anchors=anchors, skew=skew)


def validate_device_id(text: str, reserved: frozenset[str] = RESERVED_DEVICE_IDS) -> str | None:
    """None if ``text`` is a valid, unreserved device id; else why not."""
    if not _DEVICE_ID.fullmatch(text):
        return f"device id {text!r} must be 1-64 characters of A-Z a-z 0-9 . _ -"
    if text.lower() in reserved:
        return f"device id {text!r} is reserved"
    return None


def device_id_of(leaf: x509.Certificate) -> str | Deny:
    """The device id (the single CN) of ``leaf``, or a Deny."""
    serial = leaf.serial_number
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return Deny(
            DenyReason.BAD_DEVICE_ID,
            f"subject has {len(names)} CN attributes; exactly one is required",
            serial=serial,
        )
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def decide_connect(
    leaf: x509.Certificate | None,
    client_id: str,
    *,
    revocations: RevocationView,
    policy: TrustPolicy,
    now: dt.datetime,
) -> Decision:
    """Allow ``leaf``'s device to connect as ``client_id`` at ``now``, or say why not."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if leaf is None:
        return Deny(DenyReason.NO_CERTIFICATE, "the client presented no certificate")
    serial = leaf.serial_number
    claimed = device_id_of(leaf)
    if isinstance(claimed, Deny):
        return claimed
    shown_id = claimed if _DEVICE_ID.fullmatch(claimed) else None

    def deny(reason: DenyReason, detail: str) -> Deny:
        return Deny(reason, detail, device_id=shown_id, serial=serial)

    issuer = _issuer_of(leaf, policy.issuers)
    if issuer is None:
        return deny(
            DenyReason.UNKNOWN_ISSUER,
            f"issuer {leaf.issuer.rfc4514_string()!r} is not a configured fleet issuing CA",
        )
    expired = _validity_problem(leaf, now, policy.skew) or _issuer_validity_problem(
        issuer, policy.anchors, now, policy.skew
    )
    if expired is not None:
        return deny(DenyReason.EXPIRED, expired)
    if _is_ca(leaf) or not _has_client_auth(leaf):
        return deny(DenyReason.NOT_CLIENT_CERT, "certificate lacks EKU clientAuth or is a CA")
    problem = validate_device_id(claimed, policy.reserved_ids)
    if problem is not None:
        return deny(DenyReason.BAD_DEVICE_ID, problem)
    if client_id != claimed:
        return deny(
            DenyReason.CLIENT_ID_MISMATCH,
            f"client id {client_id[:80]!r} is not the certificate's device id",
        )
    if revocations.is_revoked(serial):
        return deny(DenyReason.REVOKED, "certificate is revoked")
    if revocations.is_device_revoked(claimed):
        return deny(DenyReason.REVOKED, "device is revoked")
    if not revocations.usable():
        return deny(
            DenyReason.STALE_REVOCATION_DATA,
            "revocation data is older than allowed (fail-closed policy)",
        )
    return Allow(claimed, serial)


def _issuer_of(
    leaf: x509.Certificate, issuers: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    for issuer in issuers:
        if leaf.issuer != issuer.subject:
            continue
        try:
            leaf.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return issuer
    return None


def _validity_problem(cert: x509.Certificate, now: dt.datetime, skew: dt.timedelta) -> str | None:
    if now > cert.not_valid_after_utc + skew:
        return f"{_name(cert)} expired at {cert.not_valid_after_utc.isoformat()}"
    if now < cert.not_valid_before_utc - skew:
        return f"{_name(cert)} is not valid before {cert.not_valid_before_utc.isoformat()}"
    return None


def _issuer_validity_problem(
    issuer: x509.Certificate,
    anchors: Sequence[x509.Certificate],
    now: dt.datetime,
    skew: dt.timedelta,
) -> str | None:
    problem = _validity_problem(issuer, now, skew)
    if problem is not None:
        return problem
    for anchor in anchors:
        if anchor.subject == issuer.issuer:
            return _validity_problem(anchor, now, skew)
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _has_client_auth(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in eku


def _name(cert: x509.Certificate) -> str:
    return f"certificate {cert.subject.rfc4514_string()!r} (serial {cert.serial_number:x})"
