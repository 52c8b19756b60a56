"""Client-certificate admission: who may connect to a broker as which device (pure).

Every broker (the embedded amqtt broker, Mosquitto's plugin via the same
vectors) asks :func:`admit_client` one question with what the TLS layer saw:
the peer's leaf certificate, the MQTT client id, a view of the revocation
state, the trust policy and the time. The answer is :class:`Allow` (with the
device id the session is bound to) or :class:`Deny` with a :class:`Reason`.

The checks, in this order (the C plugin follows the same order, and the
shared vectors in ``tests/vectors/`` prove both agree):

1. ``no_certificate``: nothing was presented.
2. ``device_id_invalid`` when the subject has no CN or several: without exactly
   one, the broker, the ACL and the store could each pick a different name.
3. ``unknown_issuer``: a TLS trust store must hold the root, so any sub-CA of it
   (the admin CA) and the root itself would pass the handshake. Only the
   currently trusted *issuing* CAs (several during a rotation) may sign devices.
4. ``certificate_expired`` / ``certificate_not_yet_valid`` / ``issuer_expired``:
   validity with the configured skew, so a refusal has a reason in the log
   rather than an anonymous handshake failure.
5. ``not_client_cert`` (a CA, or no EKU clientAuth) and ``key_not_allowed``.
6. ``device_id_invalid``: the id goes into topics; ``/``, ``+``, ``#`` would
   escape the topic ACL; reserved ids mean something to a broker.
7. ``client_id_mismatch``: otherwise one device could take over (kick) another
   device's session, or resume its persistent session and read its queue.
8. ``certificate_revoked``, ``device_revoked``.
9. ``revocation_state_stale``: the revocation data is older than allowed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from typing import Protocol

from cryptography import x509
from cryptography.x509.oid import NameOID

from fleet.kernel.certs import (
    DEFAULT_SKEW,
    Problem,
    client_cert_problem,
    is_ca,
    issued_by,
    validity_problem,
)
from fleet.kernel.device_id import device_id_from_certificate, subject_attributes
from fleet.kernel.errors import DeviceIdInvalid
from fleet.kernel.keys import KeyType
from fleet.kernel.reasons import Reason

__all__ = [
    "DEFAULT_SKEW",
    "Allow",
    "Decision",
    "Deny",
    "RevocationView",
    "TrustPolicy",
    "admit_client",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Allow:
    device_id: str
    serial: int


@dataclasses.dataclass(frozen=True, slots=True)
class Deny:
    reason: Reason
    detail: str
    # What could be read from the certificate, for the refusal log.
    device_id: str | None = None
    serial: int | None = None


Decision = Allow | Deny


class RevocationView(Protocol):
    """What admission needs to know about revocation (the brokers' caches implement it)."""

    def is_revoked(self, serial: int) -> bool: ...

    def is_device_revoked(self, device_id: str) -> bool: ...

    def usable(self) -> bool:
        """False when the data is too stale to decide on and the policy is to fail closed."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class TrustPolicy:
    """Which CAs may sign device certificates, how much skew is forgiven, which keys pass.

    ``issuers`` sign device certificates directly (more than one during an
    issuing-CA rotation). ``anchors`` are the CAs above them (the root); they
    are only used to check that an issuer is itself still valid, never to
    accept a leaf.
    """

    issuers: tuple[x509.Certificate, ...]
    anchors: tuple[x509.Certificate, ...] = ()
    skew: dt.timedelta = DEFAULT_SKEW
    allowed_keys: frozenset[KeyType] = frozenset(KeyType)

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
        cas = [c for c in certificates if is_ca(c)]
        issuers = tuple(c for c in cas if c.subject != c.issuer)
        anchors = tuple(c for c in cas if c.subject == c.issuer)
        if not issuers:
            issuers, anchors = anchors, ()
        return cls(issuers=issuers, anchors=anchors, skew=skew)


def admit_client(
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
        return Deny(Reason.NO_CERTIFICATE, "the client presented no certificate")
    serial = leaf.serial_number
    names = subject_attributes(leaf, NameOID.COMMON_NAME)
    if len(names) != 1:
        return Deny(
            Reason.DEVICE_ID_INVALID,
            f"subject has {len(names)} CN attributes; exactly one is required",
            serial=serial,
        )
    try:
        device_id: str | None = device_id_from_certificate(leaf)
    except DeviceIdInvalid as exc:
        device_id, id_problem = None, exc.message
    else:
        id_problem = ""

    def deny(reason: Reason, detail: str) -> Deny:
        return Deny(reason, detail, device_id=device_id, serial=serial)

    issuer = issued_by(leaf, policy.issuers)
    if issuer is None:
        return deny(
            Reason.UNKNOWN_ISSUER,
            f"issuer {leaf.issuer.rfc4514_string()!r} is not a trusted fleet issuing CA",
        )
    problem = validity_problem(leaf, now, policy.skew) or _issuer_problem(issuer, policy, now)
    if problem is None:
        problem = client_cert_problem(leaf, policy.allowed_keys)
    if problem is not None:
        return deny(problem.reason, problem.detail)
    if device_id is None:
        return deny(Reason.DEVICE_ID_INVALID, id_problem)
    if client_id != device_id:
        return deny(
            Reason.CLIENT_ID_MISMATCH,
            f"client id {client_id[:80]!r} is not the certificate's device id",
        )
    if revocations.is_revoked(serial):
        return deny(Reason.CERTIFICATE_REVOKED, "certificate is revoked")
    if revocations.is_device_revoked(device_id):
        return deny(Reason.DEVICE_REVOKED, "device is revoked")
    if not revocations.usable():
        return deny(
            Reason.REVOCATION_STATE_STALE,
            "revocation state is older than max_staleness_seconds (fail-closed policy)",
        )
    return Allow(device_id, serial)


def _issuer_problem(
    issuer: x509.Certificate, policy: TrustPolicy, now: dt.datetime
) -> Problem | None:
    problem = validity_problem(issuer, now, policy.skew, expired=Reason.ISSUER_EXPIRED)
    if problem is not None:
        return problem
    for anchor in policy.anchors:
        if anchor.subject == issuer.issuer:
            return validity_problem(anchor, now, policy.skew, expired=Reason.ISSUER_EXPIRED)
    return None
