"""Enrollment and re-enrollment: decide, sign, record, then answer.

The order is the product's promise: the certificate is recorded in the store
BEFORE it is returned, and every decision — issued, held, refused — lands in
the audit log with its reason code. Decisions are pure (fleet.policy); this
module applies them with the store's compare-and-set operations, so two
racing requests cannot both enroll one device.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleet.kernel.clock import Clock
from fleet.kernel.device_id import validate_device_id
from fleet.kernel.errors import (
    CertificateNotFound,
    DeviceNotFound,
    EnrollmentPending,
    EnrollmentRefused,
    FleetError,
    StoreConflict,
)
from fleet.kernel.keys import key_type_of
from fleet.pki.ca import CertifiedKey
from fleet.pki.issuance import (
    ValidatedRequest,
    build_device_certificate,
    sign_certificate,
    validate_request,
)
from fleet.pki.keys import PublicKey
from fleet.pki.profile import DeviceProfile
from fleet.policy.enrollment import (
    Action,
    BootstrapCredential,
    Credential,
    Decision,
    EnrollmentPolicy,
    TokenCredential,
    decide_enrollment,
)
from fleet.policy.renewal import decide_renewal
from fleet.store.protocol import Store
from fleet.store.records import (
    AuditEvent,
    CertificateRecord,
    Device,
    DeviceState,
)

log = logging.getLogger(__name__)

# A device that lost the reply to its enrollment retries with the same
# bootstrap certificate and the same new key; within this window we hand the
# recorded certificate back instead of treating it as a clone.
REPLAY_WINDOW = dt.timedelta(minutes=15)


@dataclasses.dataclass(frozen=True, slots=True)
class Issued:
    certificate: x509.Certificate
    reason: str  # why it was issued (audit reason code)


class Authority:
    def __init__(
        self,
        *,
        store: Store,
        issuer: CertifiedKey,
        policy: EnrollmentPolicy,
        clock: Clock,
        retry_after: int,
    ) -> None:
        self._store = store
        self._issuer = issuer
        self._policy = policy
        self._clock = clock
        self._retry_after = retry_after

    async def enroll(
        self,
        credential: Credential,
        csr: x509.CertificateSigningRequest,
        profile: DeviceProfile,
        *,
        replace_key: PublicKey | None = None,
    ) -> Issued:
        """First enrollment (simpleenroll) with a bootstrap certificate or a token.

        ``replace_key``: serverkeygen certifies a key made by the server
        instead of the CSR's (the CSR still proves the request is well formed).
        """
        device_id = credential.device_id
        try:
            request = validate_request(csr, device_id=device_id, profile=profile)
        except FleetError as exc:
            await self._audit("enroll", device_id, "refused", exc.reason)
            raise
        if replace_key is not None:
            request = dataclasses.replace(
                request, public_key=replace_key, key_type=key_type_of(replace_key)
            )
        # One retry: a concurrent request may change the device between our
        # read and our compare-and-set; the second decision sees its result.
        for attempt in (1, 2):
            device = await self._find_device(device_id)
            decision = decide_enrollment(credential, device, self._policy)
            try:
                return await self._apply(decision, credential, device, request, profile)
            except StoreConflict:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def reenroll(
        self,
        current: x509.Certificate,
        device_id: str,
        csr: x509.CertificateSigningRequest,
        profile: DeviceProfile,
    ) -> Issued:
        """Renewal (simplereenroll), authenticated by the current operational certificate."""
        now = self._clock.now()
        try:
            record = await self._store.get_certificate(current.serial_number)
        except CertificateNotFound:
            record = None
        device = await self._find_device(device_id)
        decision = decide_renewal(device_id, record, device)
        if decision.action is not Action.ISSUE:
            await self._audit(
                "renew", device_id, "refused", decision.reason, flagged=decision.flagged
            )
            raise _refusal(decision, device_id)
        try:
            request = validate_request(csr, device_id=device_id, profile=profile)
        except FleetError as exc:
            await self._audit("renew", device_id, "refused", exc.reason)
            raise
        certificate = self._sign(request, profile, now)
        # The audit record is written in the same store transaction as the certificate.
        await self._store.record_certificate(
            _record(certificate, device_id, now),
            expected=decision.expected,
            now=now,
            audit=self._event(
                "renew", device_id, "allowed", decision.reason, serial=certificate.serial_number
            ),
        )
        return Issued(certificate, decision.reason)

    async def record_refusal(
        self, action: str, claimed_device_id: str | None, reason: str, **detail: str
    ) -> None:
        """Audit a request refused before it was authenticated (untrusted issuer,
        bad token, expired certificate), so `why` can show it too."""
        try:
            device_id = validate_device_id(claimed_device_id) if claimed_device_id else None
        except FleetError:
            device_id = None
        if claimed_device_id and device_id is None:
            detail["claimed_id"] = claimed_device_id[:80].encode("ascii", "replace").decode()
        await self._store.append_audit(
            AuditEvent(
                at=self._clock.now(),
                actor="unauthenticated",
                action=action,
                outcome="refused",
                reason=reason,
                device_id=device_id,
                detail=detail,
            )
        )

    async def _apply(
        self,
        decision: Decision,
        credential: Credential,
        device: Device | None,
        request: ValidatedRequest,
        profile: DeviceProfile,
    ) -> Issued:
        now = self._clock.now()
        device_id = credential.device_id
        flagged = decision.flagged

        def held() -> AuditEvent:
            return self._event("enroll", device_id, "held", decision.reason, flagged=flagged)

        match decision.action:
            case Action.ISSUE:
                certificate = self._sign(request, profile, now)
                bootstrap = (
                    credential.sha256 if isinstance(credential, BootstrapCredential) else None
                )
                # The audit record is written in the same store transaction as the certificate.
                await self._store.record_certificate(
                    _record(certificate, device_id, now),
                    expected=decision.expected,
                    now=now,
                    bootstrap_sha256=bootstrap,
                    audit=self._event(
                        "enroll",
                        device_id,
                        "allowed",
                        decision.reason,
                        serial=certificate.serial_number,
                        credential=_kind(credential),
                    ),
                )
                return Issued(certificate, decision.reason)
            case Action.HOLD if device is not None:
                replay = await self._replayed(device, request, now)
                if replay is not None:
                    await self._audit(
                        "enroll",
                        device_id,
                        "allowed",
                        "reply_replayed",
                        serial=replay.serial_number,
                    )
                    return Issued(replay, "reply_replayed")
                await self._store.set_device_state(
                    device_id,
                    DeviceState.PENDING,
                    expected={DeviceState.ACTIVE},
                    now=now,
                    reason=decision.reason,
                    audit=held(),
                )
            case Action.HOLD_NEW:
                assert isinstance(credential, BootstrapCredential)
                await self._store.add_pending_device(
                    Device(
                        device_id=device_id,
                        state=DeviceState.PENDING,
                        created_at=now,
                        updated_at=now,
                        bootstrap_sha256=credential.sha256,  # approval pins what asked
                        state_reason=decision.reason,
                    ),
                    audit=held(),
                )
            case Action.WAIT:
                await self._store.append_audit(held())
            case _:
                await self._audit(
                    "enroll",
                    device_id,
                    "refused",
                    decision.reason,
                    flagged=flagged,
                    credential=_kind(credential),
                )
                raise _refusal(decision, device_id)
        raise EnrollmentPending(
            f"device {device_id} is waiting for an admin's approval",
            retry_after=self._retry_after,
            reason=decision.reason,
        )

    async def _replayed(
        self, device: Device, request: ValidatedRequest, now: dt.datetime
    ) -> x509.Certificate | None:
        """The certificate just issued for this very key, if this is a lost-reply retry."""
        if device.enrolled_at is None or now - device.enrolled_at > REPLAY_WINDOW:
            return None
        certificates = await self._store.list_certificates(device.device_id)
        if not certificates:
            return None
        latest = x509.load_pem_x509_certificate(certificates[0].pem.encode())
        if _spki(latest.public_key()) != _spki(request.public_key):
            return None
        return latest

    def _sign(
        self, request: ValidatedRequest, profile: DeviceProfile, now: dt.datetime
    ) -> x509.Certificate:
        builder = build_device_certificate(request, issuer=self._issuer, profile=profile, now=now)
        return sign_certificate(builder, self._issuer)

    async def _find_device(self, device_id: str) -> Device | None:
        try:
            return await self._store.get_device(device_id)
        except DeviceNotFound:
            return None

    async def _audit(
        self,
        action: str,
        device_id: str,
        outcome: str,
        reason: str,
        *,
        flagged: bool = False,
        serial: int | None = None,
        credential: str | None = None,
    ) -> None:
        await self._store.append_audit(
            self._event(
                action,
                device_id,
                outcome,
                reason,
                flagged=flagged,
                serial=serial,
                credential=credential,
            )
        )

    def _event(
        self,
        action: str,
        device_id: str,
        outcome: str,
        reason: str,
        *,
        flagged: bool = False,
        serial: int | None = None,
        credential: str | None = None,
    ) -> AuditEvent:
        """A device's audit event; store changes take it as ``audit=`` to write both at once."""
        detail = {}
        if flagged:
            detail["flag"] = "possible_clone"
        if serial is not None:
            detail["serial"] = f"{serial:x}"
        if credential is not None:
            detail["credential"] = credential
        return AuditEvent(
            at=self._clock.now(),
            actor=f"device:{device_id}",
            action=action,
            outcome=outcome,
            reason=reason,
            device_id=device_id,
            detail=detail,
        )


def _record(certificate: x509.Certificate, device_id: str, now: dt.datetime) -> CertificateRecord:
    return CertificateRecord(
        serial=certificate.serial_number,
        device_id=device_id,
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        issued_at=now,
        pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
    )


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _kind(credential: Credential) -> str:
    return "token" if isinstance(credential, TokenCredential) else "bootstrap"


def _refusal(decision: Decision, device_id: str) -> EnrollmentRefused:
    return EnrollmentRefused(
        f"enrollment of device {device_id} refused: {decision.reason.replace('_', ' ')}",
        reason=decision.reason,
    )
