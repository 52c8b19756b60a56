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
import hashlib
import logging

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleet.authority.issuers import LiveIssuers
from fleet.authority.refusals import RefusalAudit
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
    EnrollmentFacts,
    EnrollmentPolicy,
    TokenCredential,
    decide_enrollment,
)
from fleet.policy.renewal import RenewalOverlap, decide_renewal
from fleet.records import (
    AuditEvent,
    CertificateRecord,
    Device,
    DeviceState,
)
from fleet.store.protocol import Store

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Issued:
    certificate: x509.Certificate
    reason: str  # why it was issued (audit reason code)


class Authority:
    def __init__(
        self,
        *,
        store: Store,
        issuer: CertifiedKey | LiveIssuers,
        policy: EnrollmentPolicy,
        clock: Clock,
        retry_after: int,
        renewal_overlap: RenewalOverlap = RenewalOverlap.PREVIOUS,
        refusals: RefusalAudit | None = None,
    ) -> None:
        self._store = store
        # Shared with the console's sign-in refusals: one budget per process.
        self._refusals = refusals or RefusalAudit(store)
        # The current issuer signs; a rotation swaps it under a running server.
        self._issuers = issuer if isinstance(issuer, LiveIssuers) else LiveIssuers.of(issuer)
        self._policy = policy
        self._clock = clock
        self._retry_after = retry_after
        self._renewal_overlap = renewal_overlap

    async def enroll(
        self,
        credential: Credential,
        csr: x509.CertificateSigningRequest,
        profile: DeviceProfile,
        *,
        replace_key: PublicKey | None = None,
        source: str = "",
    ) -> Issued:
        """First enrollment (simpleenroll) with a bootstrap certificate or a token.

        ``replace_key``: serverkeygen certifies a key made by the server
        instead of the CSR's (the CSR still proves the request is well formed).
        ``source``: the peer's address, kept as evidence on a replacement request.
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
        key_sha256 = _key_sha256(request.public_key)
        for attempt in (1, 2):
            device = await self._find_device(device_id)
            facts = await self._facts(credential, device, key_sha256)
            decision = decide_enrollment(credential, device, self._policy, facts)
            try:
                return await self._apply(decision, credential, request, profile, facts, source)
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
        """Renewal (simplereenroll), authenticated by the current operational certificate.

        The certificate is recorded only if the one that authenticated the request is
        still good then (``renewing``): revoked while this request was decided and
        signed, it is refused as at the start, with the second decision's reason."""
        validated: ValidatedRequest | None = None
        for attempt in (1, 2):
            now = self._clock.now()
            decision = await self._renewal_decision(current, device_id, now)
            if decision.action is not Action.ISSUE:
                await self._audit(
                    "renew", device_id, "refused", decision.reason, flagged=decision.flagged
                )
                raise _refusal(decision, device_id)
            if validated is None:
                try:
                    validated = validate_request(csr, device_id=device_id, profile=profile)
                except FleetError as exc:
                    await self._audit("renew", device_id, "refused", exc.reason)
                    raise
            certificate = self._sign(validated, profile, now)
            try:
                # The audit record is written in the same store transaction as the certificate.
                await self._store.record_certificate(
                    _record(certificate, device_id, now),
                    expected=decision.expected,
                    now=now,
                    supersede=decision.supersede,
                    renewing=current.serial_number,
                    audit=self._event(
                        "renew", device_id, "allowed", decision.reason,
                        serial=certificate.serial_number,
                        superseded=_serials(decision.supersede),
                    ),
                )  # fmt: skip
            except StoreConflict:
                if attempt == 2:
                    raise
                continue  # changed meanwhile (revoked, suspended): decide again
            return Issued(certificate, decision.reason)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _renewal_decision(
        self, current: x509.Certificate, device_id: str, now: dt.datetime
    ) -> Decision:
        try:
            record = await self._store.get_certificate(current.serial_number)
        except CertificateNotFound:
            record = None
        device = await self._find_device(device_id)
        certificates = (
            await self._store.list_certificates(device_id)
            if device is not None and device.state is DeviceState.ACTIVE
            else []
        )
        return decide_renewal(
            device_id, record, device,
            certificates=certificates, now=now, overlap=self._renewal_overlap,
        )  # fmt: skip

    async def record_refusal(
        self, action: str, claimed_device_id: str | None, reason: str, **detail: str
    ) -> None:
        """Audit a request refused before it was authenticated (untrusted issuer,
        bad token, expired certificate), so `why` can show it too; within the
        budget of fleet.authority.refusals (such requests cost their sender nothing)."""
        try:
            device_id = validate_device_id(claimed_device_id) if claimed_device_id else None
        except FleetError:
            device_id = None
        if claimed_device_id and device_id is None:
            detail["claimed_id"] = claimed_device_id[:80].encode("ascii", "replace").decode()
        event = AuditEvent(
            at=self._clock.now(),
            actor="unauthenticated",
            action=action,
            outcome="refused",
            reason=reason,
            device_id=device_id,
            detail=detail,
        )
        await self._refusals.record(event, detail.get("remote", ""))

    async def _facts(
        self, credential: Credential, device: Device | None, key_sha256: str
    ) -> EnrollmentFacts:
        now = self._clock.now()
        if device is None or device.state not in _HOLDS_CERTIFICATES:
            return EnrollmentFacts(now=now, key_sha256=key_sha256)
        certificates = await self._store.list_certificates(device.device_id)
        latest_key = None
        if certificates:
            latest = x509.load_pem_x509_certificate(certificates[0].pem.encode())
            latest_key = _key_sha256(latest.public_key())
        replacement = None
        if isinstance(credential, BootstrapCredential) and device.state is DeviceState.ACTIVE:
            replacement = await self._store.get_replacement_request(device.device_id)
        return EnrollmentFacts(now, key_sha256, certificates, latest_key, replacement)

    async def _apply(
        self,
        decision: Decision,
        credential: Credential,
        request: ValidatedRequest,
        profile: DeviceProfile,
        facts: EnrollmentFacts,
        source: str,
    ) -> Issued:
        now = facts.now
        device_id = credential.device_id
        flagged = decision.flagged

        def held(replacement: str = "", key_sha256: str = "") -> AuditEvent:
            # The evidence an admin approves or rejects by (the console's approval queue).
            bootstrap = credential if isinstance(credential, BootstrapCredential) else None
            return self._event(
                "enroll", device_id, "held", decision.reason, flagged=flagged,
                replacement=replacement, key_sha256=key_sha256, source=source,
                bootstrap_sha256=bootstrap.sha256 if bootstrap else "",
                manufacturer=bootstrap.manufacturer if bootstrap else "",
            )  # fmt: skip

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
                    supersede=decision.supersede,
                    replacement_key=decision.replacement_key,
                    manufacturer=(
                        credential.anchor if isinstance(credential, BootstrapCredential) else None
                    ),
                    audit=self._event(
                        "enroll",
                        device_id,
                        "allowed",
                        decision.reason,
                        serial=certificate.serial_number,
                        credential=_kind(credential),
                        superseded=_serials(decision.supersede),
                        key_sha256=facts.key_sha256 if decision.replacement_key else "",
                    ),
                )
                return Issued(certificate, decision.reason)
            case Action.REPLY_AGAIN:
                recorded = next(c for c in facts.certificates if c.serial == decision.certificate)
                await self._audit(
                    "enroll", device_id, "allowed", decision.reason, serial=recorded.serial
                )
                again = x509.load_pem_x509_certificate(recorded.pem.encode())
                return Issued(again, decision.reason)
            case Action.REQUEST_REPLACEMENT:
                assert isinstance(credential, BootstrapCredential)
                replacement = await self._store.note_replacement_attempt(
                    device_id,
                    bootstrap_sha256=credential.sha256,
                    key_sha256=facts.key_sha256,
                    source=source,
                    now=now,
                    audit=held(replacement="pending", key_sha256=facts.key_sha256),
                )
                raise EnrollmentPending(
                    f"device {device_id} is active; this second use of its bootstrap "
                    f"certificate is a replacement request (attempt {replacement.attempts}) "
                    "waiting for an admin's approval (the new key replaces the device's "
                    "certificates) or rejection",
                    retry_after=self._retry_after,
                    reason=decision.reason,
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
                        manufacturer=credential.anchor,
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

    def _sign(
        self, request: ValidatedRequest, profile: DeviceProfile, now: dt.datetime
    ) -> x509.Certificate:
        issuers = self._issuers.now
        validity = issuers.validity_for(profile.validity, now)
        if validity != profile.validity:  # `fleet device renew --all --before` is in force
            profile = dataclasses.replace(profile, validity=validity)
        builder = build_device_certificate(
            request, issuer=issuers.current, profile=profile, now=now
        )
        return sign_certificate(builder, issuers.current)

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
                action, device_id, outcome, reason,
                flagged=flagged, serial=serial, credential=credential,
            )
        )  # fmt: skip

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
        **extra: str,
    ) -> AuditEvent:
        """A device's audit event; store changes take it as ``audit=`` to write both at once.
        Empty ``extra`` details are left out."""
        detail = {key: value for key, value in extra.items() if value}
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


# States whose certificates a decision may supersede (pending: held by an earlier version).
_HOLDS_CERTIFICATES = frozenset({DeviceState.ACTIVE, DeviceState.REGISTERED, DeviceState.PENDING})


def _key_sha256(key: object) -> str:
    """SHA-256 (hex) of a public key's SubjectPublicKeyInfo: what identifies a device's key."""
    der = key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _serials(serials: tuple[int, ...]) -> str:
    return ",".join(f"{s:x}" for s in serials)


def _kind(credential: Credential) -> str:
    return "token" if isinstance(credential, TokenCredential) else "bootstrap"


def _refusal(decision: Decision, device_id: str) -> EnrollmentRefused:
    return EnrollmentRefused(
        f"enrollment of device {device_id} refused: {decision.reason.replace('_', ' ')}",
        reason=decision.reason,
    )
