"""The store's roles, and ``Store``: everything fleet persists, all roles at once.

Each user depends on the role it needs: broker plugins on ``BrokerFeed`` (the
``RevocationFeed`` and the cursors they report their position in; they never
see devices or certificates), OCSP on ``CertificateLedger``, the
audit verifier on ``AuditLog``, and so on. ``Store`` combines every role; the
wiring (server app factory, CLIs) opens one and hands out its roles.

Three backends implement every role (``sqlite``, ``postgres``, ``redis``) and
pass one contract suite (tests/contract). Rules every backend keeps:

* Each method is atomic: it changes everything it says or nothing.
* Compare-and-set methods (``expected=...``) raise :class:`StoreConflict` when
  the record is not in an expected state; nothing is written then.
* Backend failures (connection refused, corrupt file) raise
  :class:`StoreUnavailable` with the backend's error chained; nothing is
  half-written.
* Lookups of a missing device or certificate raise the matching ``NotFound``.
* Methods taking ``audit=`` append that event to the audit hash chain in the
  same atomic change, and only when the change is made: when they raise, or
  return None for "already done", or recognise a replayed call, no audit record
  is written. An issued certificate thus never lacks its audit record, and one
  transaction replaces two.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator, Collection, Sequence
from typing import Protocol

from fleet.records import (
    AdminCredential,
    AuditEvent,
    AuditPage,
    AuditQuery,
    AuditRecord,
    CertificateRecord,
    Device,
    DeviceFilter,
    DeviceState,
    EnrollmentToken,
    ManifestEntry,
    Manufacturer,
    ManufacturerCA,
    ReplacementRequest,
    ReplacementStatus,
    RevocationEvent,
    RevocationReason,
    RevocationSnapshot,
)
from fleet.store.crl_numbers import StoredCrl


class ManufacturerTrust(Protocol):
    """Trusted manufacturer CAs (anchors) and the intermediate pool (path hints)."""

    # -- manufacturer trust ------------------------------------------------
    async def add_manufacturer_ca(
        self, ca: ManufacturerCA, *, audit: AuditEvent | None = None
    ) -> bool:
        """Trust a manufacturer CA; False if one with that fingerprint already was
        (then nothing is written, ``audit`` neither; else it is chained in the same
        change)."""

    async def remove_manufacturer_ca(self, sha256: str, *, audit: AuditEvent | None = None) -> None:
        """Stop trusting it, ``audit`` chained in the same change. Raises NotFound
        if it was not trusted."""

    async def list_manufacturer_cas(self) -> list[ManufacturerCA]:
        """All trusted manufacturer CAs, oldest first."""

    # -- manufacturer intermediate pool (fleet.store.intermediates) ----------
    async def add_manufacturer_intermediate(
        self, ca: ManufacturerCA, *, audit: AuditEvent | None = None
    ) -> bool:
        """Add an intermediate CA to the pool (a path hint, never an anchor),
        ``audit`` chained in the same change; False if one with that fingerprint
        already was (nothing written)."""

    async def remove_manufacturer_intermediate(
        self, sha256: str, *, audit: AuditEvent | None = None
    ) -> None:
        """Drop it from the pool, ``audit`` chained in the same change. Raises
        NotFound if it was not there."""

    async def list_manufacturer_intermediates(self) -> list[ManufacturerCA]:
        """The pool, oldest first."""


class DeviceRegistry(Protocol):
    """Devices: the manifest, pending devices, state changes, fleet-wide queries."""

    # -- devices -------------------------------------------------------------
    async def import_manifest(
        self,
        entries: Sequence[ManifestEntry],
        now: dt.datetime,
        *,
        audit: AuditEvent | None = None,
    ) -> int:
        """Create unknown devices as ``registered``; update pin, model and batch of
        known ones (their state is kept). All or nothing, ``audit`` chained in the
        same change. Returns how many devices were created."""

    async def get_device(self, device_id: str) -> Device:
        """Raises DeviceNotFound."""

    async def add_pending_device(
        self, device: Device, *, audit: AuditEvent | None = None
    ) -> Device:
        """Insert a device that is not in the manifest (state ``pending``).
        Raises StoreConflict if the id exists."""

    async def set_device_state(
        self,
        device_id: str,
        state: DeviceState,
        *,
        expected: Collection[DeviceState],
        now: dt.datetime,
        reason: str = "",
        audit: AuditEvent | None = None,
    ) -> Device:
        """Move the device to ``state`` if its current state is in ``expected``.
        Raises DeviceNotFound or StoreConflict. Revocation is not done here
        (see ``revoke_device``) because it must also revoke certificates and
        feed brokers."""

    async def list_devices(
        self, device_filter: DeviceFilter, *, after: str | None = None, limit: int = 100
    ) -> list[Device]:
        """Devices matching the filter, ordered by id, starting after ``after``."""

    async def count_devices_by_state(self) -> dict[DeviceState, int]:
        """How many devices are in each state (every state named, 0 included), from an
        index: the Overview asks on every view."""

    async def count_expiring_devices(self, before: dt.datetime) -> int:
        """How many devices ``list_devices(DeviceFilter(expiring_before=before))`` lists:
        those whose newest good certificate expires before ``before`` (an index)."""

    async def count_blast_radius(self, device_filter: DeviceFilter) -> tuple[int, int]:
        """``(devices, good certificates)``: how many devices ``list_devices`` lists
        for this filter (over all pages) and how many good certificates those
        devices hold together — what a bulk revocation would cut off (dry run)."""


class CertificateLedger(Protocol):
    """Issued certificates, recorded before they are returned, and their revocation."""

    # -- certificates --------------------------------------------------------
    async def record_certificate(
        self,
        certificate: CertificateRecord,
        *,
        expected: Collection[DeviceState],
        now: dt.datetime,
        bootstrap_sha256: str | None = None,
        audit: AuditEvent | None = None,
        supersede: Collection[int] = (),
        replacement_key: str | None = None,
        manufacturer: Manufacturer | None = None,
        renewing: int | None = None,
    ) -> Device:
        """Record an issued certificate BEFORE it is returned to the device.

        Atomically: the device must be in one of ``expected`` states (else
        StoreConflict — of 20 racing first enrollments exactly one wins); with
        ``replacement_key`` the device's replacement request must be approved
        for that key (else StoreConflict) and is consumed; the certificate is
        inserted; the device becomes ``active``; with a ``bootstrap_sha256``
        (bootstrap enrollment) the device remembers which bootstrap certificate
        enrolled it and when; with a ``manufacturer`` (the trust anchor of a
        verified bootstrap chain) the device records it; each of ``supersede`` that is still a good
        certificate of this device is revoked (reason superseded; one
        certificate feed event for all); with ``audit`` the event is chained in
        the same change; with ``renewing`` (the serial of the certificate that
        authenticated a renewal) that certificate must still be good (else
        StoreConflict: revoked after the renewal was decided, it must not buy its
        holder a successor). Recording the very same certificate again (a
        replayed call) returns the device and writes nothing."""

    async def get_certificate(self, serial: int) -> CertificateRecord:
        """Raises CertificateNotFound."""

    async def list_certificates(self, device_id: str) -> list[CertificateRecord]:
        """A device's certificates, newest first."""

    async def list_expiring(
        self, before: dt.datetime, *, limit: int = 1000
    ) -> list[CertificateRecord]:
        """Good certificates whose notAfter is before ``before``, soonest first."""

    async def list_revoked(self) -> list[CertificateRecord]:
        """Every revoked certificate (the CRL's content), by serial."""

    async def revoke_certificate(
        self,
        serial: int,
        reason: RevocationReason,
        now: dt.datetime,
        *,
        audit: AuditEvent | None = None,
    ) -> RevocationEvent | None:
        """Revoke one certificate and append a feed event, atomically.
        None if it was already revoked (idempotent). Raises CertificateNotFound."""

    async def revoke_device(
        self,
        device_id: str,
        reason: RevocationReason,
        now: dt.datetime,
        *,
        audit: AuditEvent | None = None,
    ) -> RevocationEvent | None:
        """Revoke the device and every good certificate it holds and append one
        feed event, atomically. None if it was already revoked. Raises
        DeviceNotFound."""


class ReplacementQueue(Protocol):
    """Bootstrap replays on active devices, waiting for an admin."""

    # -- replacement requests (a bootstrap replay on an active device) ------------
    async def get_replacement_request(self, device_id: str) -> ReplacementRequest | None:
        """The device's replacement request in any status; None if it has none."""

    async def list_replacement_requests(
        self, status: ReplacementStatus, *, after: str | None = None, limit: int = 100
    ) -> list[ReplacementRequest]:
        """Replacement requests in ``status``, ordered by device id, starting after
        ``after`` (the admin console's approval queue)."""

    async def note_replacement_attempt(
        self,
        device_id: str,
        *,
        bootstrap_sha256: str,
        key_sha256: str,
        source: str,
        now: dt.datetime,
        audit: AuditEvent | None = None,
    ) -> ReplacementRequest:
        """Open the device's pending replacement request, or count one more attempt
        on it (the newest key, source and time are kept; ``keys_seen`` grows when
        the key changed). Atomic: racing attempts make one request and each is
        counted once. The device must be ``active`` and a request it has must be
        pending (else StoreConflict: an admin's answer is never reopened here).
        Raises DeviceNotFound."""

    async def decide_replacement_request(
        self,
        device_id: str,
        status: ReplacementStatus,
        *,
        now: dt.datetime,
        actor: str,
        revoke: RevocationReason | None = None,
        audit: AuditEvent | None = None,
        key_sha256: str | None = None,
    ) -> tuple[ReplacementRequest, RevocationEvent | None]:
        """Answer the device's pending replacement request (approved or rejected),
        atomically with, given ``revoke``, the revocation of every good
        certificate the device holds for that reason (one certificate feed
        event; None if it held none). The device's state is not changed.
        With ``key_sha256``, the request must still name that key (compare-and-set:
        an admin approves the key they were shown, never one a replay put there
        meanwhile). Raises StoreConflict when it has no pending request or names
        another key, DeviceNotFound."""


class AdminDirectory(Protocol):
    """Credentials of the admin API."""

    # -- admin credentials -------------------------------------------------------
    async def put_admin_credential(
        self, cred: AdminCredential, *, audit: AuditEvent | None = None
    ) -> None:
        """Add a credential of the admin API, ``audit`` chained in the same change.
        Raises StoreConflict if one with that sha256 exists (nothing is replaced)."""

    async def find_admin_credential(self, sha256: str) -> AdminCredential:
        """The credential with this fingerprint, disabled ones included (the
        caller refuses those). Raises AdminNotFound."""

    async def list_admin_credentials(self) -> list[AdminCredential]:
        """Every admin credential, by name, then created_at (then sha256)."""

    async def disable_admin_credential(
        self, sha256: str, *, audit: AuditEvent | None = None
    ) -> bool:
        """Mark the credential disabled (kept for the record; idempotent): True if
        it was enabled, and then ``audit`` is chained in the same change.
        Raises AdminNotFound."""


class EnrollmentTokens(Protocol):
    """One-time enrollment tokens (stored hashed)."""

    # -- one-time enrollment tokens -----------------------------------------
    async def put_enrollment_token(
        self, token: EnrollmentToken, *, audit: AuditEvent | None = None
    ) -> None:
        """Store a token (hashed); it replaces any earlier token of the device;
        ``audit`` is chained in the same change."""

    async def consume_enrollment_token(
        self, device_id: str, token_sha256: str, now: dt.datetime
    ) -> None:
        """Use the token once. Raises TokenInvalid if unknown, used or expired;
        of many racing requests exactly one succeeds."""


class AuditLog(Protocol):
    """The append-only, hash-chained audit log."""

    # -- audit log -------------------------------------------------------------
    async def append_audit(self, event: AuditEvent) -> AuditRecord:
        """Append to the hash chain (see fleet.store.audit_chain)."""

    async def audit_records(
        self, *, device_id: str | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[AuditRecord]:
        """Audit records in sequence order, optionally of one device."""

    async def search_audit(self, query: AuditQuery, *, limit: int = 100) -> AuditPage:
        """Records matching ``query``, newest first, at most ``limit``. A backend examines
        a bounded number of records per call (an index, or a budgeted walk), so a
        page may be short while ``next_before`` is not 0: the caller searches on
        from there. Nothing is read into memory beyond the page."""

    async def count_audit(
        self, query: AuditQuery, *, by: tuple[str, ...]
    ) -> dict[tuple[str, ...], int]:
        """How many records match ``query``, grouped by the event fields named in ``by``
        (of actor, action, outcome, reason); counted where the records are, none read
        into memory (the Overview's chart)."""


class Cursors(Protocol):
    """Named integers (e.g. a notifier's position in the audit log)."""

    # -- cursors -----------------------------------------------------------------
    async def get_cursor(self, name: str) -> int:
        """A named integer (e.g. a notifier's position in the audit log); 0 when unset."""

    async def set_cursor(self, name: str, value: int) -> None:
        """Set the named integer (signed 64-bit; last write wins)."""

    async def list_cursors(self, prefix: str) -> dict[str, int]:
        """Every named integer whose name starts with ``prefix`` (e.g. the brokers'
        feed positions, fleet.store.broker_positions)."""


class RevocationFeed(Protocol):
    """What brokers read: revocation events in sequence, and snapshots."""

    # -- revocation feed -------------------------------------------------------
    async def feed_head(self) -> int:
        """Sequence of the newest feed event (0 when empty)."""

    async def feed_since(self, seq: int, *, limit: int = 1000) -> list[RevocationEvent]:
        """Feed events with sequence > ``seq``, in order."""

    async def revocation_snapshot(self) -> RevocationSnapshot:
        """All revoked serials and devices, consistent with one feed sequence."""

    def follow_feed(self, after_seq: int) -> AsyncGenerator[RevocationEvent, None]:
        """Yield every event after ``after_seq`` in order, then new ones as they
        are appended, forever. Gaps (missed notifications) are filled from
        ``feed_since``, so no event is skipped or repeated."""


class CrlNumbers(Protocol):
    """The one CRL number counter of every node and worker, and the newest CRL
    signed under it (fleet.store.crl_numbers)."""

    async def allocate_crl_number(self, scope: str, content_seq: int, floor: int) -> int | None:
        """In ``scope`` (one CRL issuer: one sequence of numbers), a number for a CRL
        whose content is the revocation state at feed sequence
        ``content_seq``: above every number allocated before and at least ``floor``.
        None (nothing changed) when a CRL of newer content already has a number:
        re-read the content and ask again. Atomic across every store instance."""

    async def latest_crl_number(self, scope: str) -> int:
        """The highest number allocated in ``scope`` so far, by any node (0 when none)."""

    async def keep_signed_crl(self, scope: str, crl: StoredCrl) -> bool:
        """Keep ``crl`` as ``scope``'s newest signed CRL, unless the one kept has a
        number at least as high (then nothing changes): True when kept. Atomic
        across every store instance, so racing writers leave the highest."""

    async def newest_signed_crl(self, scope: str) -> StoredCrl | None:
        """The CRL ``keep_signed_crl`` kept for ``scope`` (None when none yet)."""


class BrokerFeed(RevocationFeed, Cursors, Protocol):
    """What a broker uses: the feed, and cursors to report how far it has applied
    it (fleet.store.broker_positions)."""


class Store(
    ManufacturerTrust,
    DeviceRegistry,
    CertificateLedger,
    ReplacementQueue,
    AdminDirectory,
    EnrollmentTokens,
    AuditLog,
    Cursors,
    RevocationFeed,
    CrlNumbers,
    Protocol,
):
    """Every role: what a backend implements and the wiring opens."""

    async def close(self) -> None:
        """Release connections. The store is unusable afterwards."""
