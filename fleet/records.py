"""What the store keeps: immutable records, free of any backend.

Times are timezone-aware UTC. Serial numbers are Python ints (up to 159 bits);
backends store them as lowercase hex without leading zeros.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum


class DeviceState(enum.StrEnum):
    """Lifecycle of a device.

    registered: known (manifest or admin approval) and allowed to enroll
    pending:    asked to enroll, waits for an admin (unknown device, possible clone)
    active:     enrolled; renews with its operational certificate
    suspended:  temporarily refused everywhere; ``resume`` returns it to active
    rejected:   an admin refused its pending enrollment
    revoked:    permanently cut off; can neither renew nor re-bootstrap
    """

    REGISTERED = "registered"
    PENDING = "pending"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REJECTED = "rejected"
    REVOKED = "revoked"


class CertificateStatus(enum.StrEnum):
    GOOD = "good"
    REVOKED = "revoked"


class RevocationReason(enum.StrEnum):
    """RFC 5280 CRLReason names (the values cryptography's ReasonFlags use)."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    CA_COMPROMISE = "cACompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"
    CERTIFICATE_HOLD = "certificateHold"
    PRIVILEGE_WITHDRAWN = "privilegeWithdrawn"
    AA_COMPROMISE = "aACompromise"


@dataclasses.dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One line of the factory manifest."""

    device_id: str
    bootstrap_sha256: str  # lowercase hex of the DER bootstrap certificate
    model: str = ""
    batch: str = ""
    # The manufacturer CA the manifest says made it (None: not named; a known
    # device keeps what it had).
    manufacturer: Manufacturer | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    state: DeviceState
    created_at: dt.datetime
    updated_at: dt.datetime
    bootstrap_sha256: str | None = None  # manifest pin; None = not in the manifest
    model: str = ""
    batch: str = ""
    # SHA-256 of the bootstrap certificate that last enrolled; set on first
    # enrollment, it is what makes a second use of the same bootstrap visible.
    enrolled_bootstrap_sha256: str | None = None
    enrolled_at: dt.datetime | None = None
    state_reason: str = ""
    # The trust anchor the device's bootstrap certificate chains to (the trusted
    # manufacturer CA), as learned from its verified chain; None = not known yet.
    manufacturer: Manufacturer | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Manufacturer:
    """Which trusted manufacturer CA made a device: its fingerprint and the name it was
    trusted under (``fleet trust add-manufacturer``), kept as they were when learned."""

    sha256: str  # fingerprint of the DER manufacturer CA certificate, lowercase hex
    name: str = ""


class ReplacementStatus(enum.StrEnum):
    """Where a replacement request stands (see :class:`ReplacementRequest`)."""

    PENDING = "pending"  # waiting for an admin; the device itself stays as it is
    APPROVED = "approved"  # the key it names is issued at the device's next retry
    REJECTED = "rejected"  # the replay is refused from then on


@dataclasses.dataclass(frozen=True, slots=True)
class ReplacementRequest:
    """A bootstrap certificate used again on an active device: a factory reset or a clone.

    It sits beside the device and never changes the device's state; an admin
    approves it (the old certificates are superseded and ``key_sha256`` is
    issued at the next retry) or rejects it (the replay is refused from then
    on). One per device: the newest attempt's evidence is kept, with counts.
    """

    device_id: str
    bootstrap_sha256: str  # the bootstrap certificate that was presented again
    key_sha256: str  # SHA-256 of the SubjectPublicKeyInfo of the newest attempt's key
    first_seen: dt.datetime
    last_seen: dt.datetime
    attempts: int = 1
    keys_seen: int = 1  # how often the key changed between attempts, plus one
    source: str = ""  # the newest attempt's peer address, when known
    status: ReplacementStatus = ReplacementStatus.PENDING
    decided_at: dt.datetime | None = None
    decided_by: str = ""  # the admin ("admin:<name>")


@dataclasses.dataclass(frozen=True, slots=True)
class CertificateRecord:
    serial: int
    device_id: str
    not_before: dt.datetime
    not_after: dt.datetime
    issued_at: dt.datetime
    pem: str
    status: CertificateStatus = CertificateStatus.GOOD
    revoked_at: dt.datetime | None = None
    revocation_reason: RevocationReason | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ManufacturerCA:
    sha256: str  # fingerprint of the DER CA certificate, lowercase hex
    name: str
    pem: str
    added_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class EnrollmentToken:
    device_id: str
    token_sha256: str  # the token itself is never stored
    created_at: dt.datetime
    expires_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEvent:
    """An audit event before the store places it in the chain."""

    at: dt.datetime
    actor: str  # "device:<id>", "admin:<name>", "system"
    action: str  # e.g. "enroll", "renew", "revoke", "approve"
    outcome: str  # "allowed", "refused", "held", "done"
    reason: str  # reason code, e.g. "manifest_pinned", "bootstrap_reused"
    device_id: str | None = None
    detail: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class AuditRecord:
    """An audit event as chained: ``sha256`` covers ``prev_sha256`` and the event."""

    seq: int
    event: AuditEvent
    prev_sha256: str
    sha256: str


@dataclasses.dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which audit records a search returns: every given field must match, and the
    sequence must lie strictly between ``after_seq`` and ``before_seq`` (None: no
    upper bound). A time range is a sequence range: records are appended in time order."""

    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    reason: str | None = None
    device_id: str | None = None
    after_seq: int = 0
    before_seq: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class AuditPage:
    """Matches of a search, newest first. ``next_before`` is the ``before_seq`` to search
    on from (older records remain to be examined), 0 when none remain."""

    records: list[AuditRecord]
    next_before: int


class RevocationKind(enum.StrEnum):
    DEVICE = "device"  # the device and every certificate it holds
    CERTIFICATE = "certificate"  # one certificate


@dataclasses.dataclass(frozen=True, slots=True)
class RevocationEvent:
    """One entry of the revocation feed that brokers follow."""

    seq: int  # strictly increasing, no gaps, starting at 1
    kind: RevocationKind
    device_id: str
    serials: tuple[int, ...]  # certificates revoked by this event
    reason: RevocationReason
    at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class RevocationSnapshot:
    """Every revoked serial and device as of feed sequence ``seq``."""

    seq: int
    serials: frozenset[int]
    device_ids: frozenset[str]


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceFilter:
    """Which devices a listing or a bulk operation covers; every given field must match."""

    state: DeviceState | None = None
    batch: str | None = None
    model: str | None = None
    # Devices whose bootstrap certificate chains to this manufacturer CA (its sha256).
    manufacturer_sha256: str | None = None
    # Devices holding at least one GOOD certificate issued (``issued_at``) before this.
    issued_before: dt.datetime | None = None
    # Devices whose newest good certificate (latest ``issued_at``, then highest
    # serial) has its notAfter before this; devices with no good certificate never match.
    expiring_before: dt.datetime | None = None


class AdminRole(enum.StrEnum):
    """What an admin credential may do; each role includes the ones below it."""

    VIEWER = "viewer"  # read
    OPERATOR = "operator"  # day-to-day changes (approve, suspend, revoke)
    ADMIN = "admin"  # everything, including admin credentials

    def allows(self, needed: AdminRole) -> bool:
        """True if this role may do what ``needed`` may (viewer < operator < admin)."""
        return _ADMIN_RANK[self] >= _ADMIN_RANK[needed]


_ADMIN_RANK = {AdminRole.VIEWER: 0, AdminRole.OPERATOR: 1, AdminRole.ADMIN: 2}

ADMIN_CREDENTIAL_KINDS = frozenset({"certificate", "token"})


@dataclasses.dataclass(frozen=True, slots=True)
class AdminCredential:
    """One credential of the admin API: an mTLS client certificate or a bearer token."""

    name: str  # the admin, as audit logs show it ("admin:<name>")
    role: AdminRole
    kind: str  # "certificate" | "token"
    sha256: str  # lowercase hex of the DER certificate or of the token; the token is never stored
    created_at: dt.datetime
    disabled: bool = False
