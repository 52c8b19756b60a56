"""Suspend, resume and revoke devices and certificates — one, or a whole batch.

Revocation is permanent and goes through the store's revoke operations,
which append to the revocation feed that CRL publishing and every broker
follow. Bulk revocation always knows its blast radius first: a dry run
reports it and changes nothing, and above a configured cap the caller must
confirm explicitly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from fleet.authority.audit import admin_action, record_admin_action
from fleet.kernel.errors import (
    ConfigError,
    ConfirmationRequired,
    RequestInvalid,
    StateConflict,
    StoreConflict,
)
from fleet.kernel.fingerprint import normalize_fingerprint
from fleet.kernel.reasons import Reason
from fleet.records import (
    AuditRecord,
    CertificateStatus,
    Device,
    DeviceFilter,
    DeviceState,
    RevocationEvent,
    RevocationReason,
)
from fleet.store.protocol import Store

# Reasons an admin may give (RFC 5280 §5.3.1). removeFromCRL is not a
# revocation, and certificateHold is what `suspend` is for.
GOOD = CertificateStatus.GOOD

ADMIN_REASONS = tuple(r for r in RevocationReason if r is not RevocationReason.CERTIFICATE_HOLD)


def parse_time(text: str, name: str, *, naive_is_utc: bool) -> dt.datetime:
    """An ISO 8601 date or time an admin gives (API field, CLI option), in UTC.

    Without a zone it is UTC where ``naive_is_utc`` (the CLI), refused otherwise
    (the API). The one place that knows 9999-12-31T23:59:59-05:00 parses and then
    overflows on the way to UTC."""
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise RequestInvalid(
            f"{name} {text[:40]!r} is not an ISO 8601 date or time (e.g. 2026-03-01T00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        if not naive_is_utc:
            raise RequestInvalid(f"{name} needs a time zone (e.g. Z or +00:00)")
        parsed = parsed.replace(tzinfo=dt.UTC)
    try:
        return parsed.astimezone(dt.UTC)
    except OverflowError:  # year 1 with a positive offset, year 9999 with a negative one
        raise RequestInvalid(f"{name} is outside the years 1-9999 in UTC") from None


def parse_reason(text: str) -> RevocationReason:
    """An RFC 5280 reason by its name (keyCompromise) or snake case (key_compromise)."""
    wanted = text.replace("_", "").replace("-", "").lower()
    for reason in ADMIN_REASONS:
        if reason.value.lower() == wanted:
            return reason
    names = ", ".join(r.value for r in ADMIN_REASONS)
    raise RequestInvalid(
        f"unknown revocation reason {text[:80]!r}; use one of: {names}", reason="reason_invalid"
    )


async def suspend_device(
    store: Store, device_id: str, *, actor: str, now: dt.datetime, note: str = ""
) -> Device:
    """active → suspended: refused on every EST path until resumed (brokers: revoke)."""
    return await _transition(
        store, device_id, DeviceState.SUSPENDED, {DeviceState.ACTIVE}, "suspend", actor, now, note
    )


async def resume_device(
    store: Store, device_id: str, *, actor: str, now: dt.datetime, note: str = ""
) -> Device:
    """suspended → active."""
    return await _transition(
        store, device_id, DeviceState.ACTIVE, {DeviceState.SUSPENDED}, "resume", actor, now, note
    )


async def _transition(
    store: Store,
    device_id: str,
    target: DeviceState,
    expected: set[DeviceState],
    action: str,
    actor: str,
    now: dt.datetime,
    note: str,
) -> Device:
    audit = admin_action(actor, action, f"admin_{action}", now, device_id=device_id, note=note)
    try:
        device = await store.set_device_state(
            device_id, target, expected=expected, now=now, reason=f"{action} by {actor}",
            audit=audit,
        )  # fmt: skip
    except StoreConflict as exc:
        current = await store.get_device(device_id)
        if current.state is target:
            return current  # already done: idempotent, nothing to audit
        allowed = ", ".join(sorted(s.value for s in expected))
        raise StateConflict(
            f"device {device_id} is {current.state.value}; {action} applies to {allowed} devices",
            reason=f"device_{current.state.value}",
        ) from exc
    return device


@dataclasses.dataclass(frozen=True, slots=True)
class Revocation:
    device_id: str
    event: RevocationEvent | None  # None: it was already revoked (nothing changed)


async def revoke_device(
    store: Store,
    device_id: str,
    reason: RevocationReason,
    *,
    actor: str,
    now: dt.datetime,
    note: str = "",
) -> Revocation:
    """Revoke the device and all its certificates (idempotent).

    The revocation and its audit record are one store write. The record lists the
    certificates that were good when it was written; the store revokes every good
    one, so one issued in between is audited in a second record."""
    good = {c.serial for c in await store.list_certificates(device_id) if c.status is GOOD}
    audit = admin_action(
        actor, "revoke", reason.value, now, device_id=device_id, serials=_hex(good), note=note
    )
    event = await store.revoke_device(device_id, reason, now, audit=audit)
    if event is not None and set(event.serials) - good:
        await record_admin_action(
            store, actor, "revoke", reason.value, now, device_id=device_id,
            serials=_hex(set(event.serials) - good), note="issued while it was being revoked",
        )  # fmt: skip
    return Revocation(device_id, event)


def _hex(serials: set[int]) -> str:
    return ",".join(f"{s:x}" for s in sorted(serials))


async def revoke_certificate(
    store: Store,
    serial: int,
    reason: RevocationReason,
    *,
    actor: str,
    now: dt.datetime,
    note: str = "",
) -> Revocation:
    """Revoke one certificate; the device stays as it is (idempotent)."""
    record = await store.get_certificate(serial)
    audit = admin_action(
        actor, "revoke_certificate", reason.value, now, device_id=record.device_id,
        serial=f"{serial:x}", note=note,
    )  # fmt: skip
    event = await store.revoke_certificate(serial, reason, now, audit=audit)
    return Revocation(record.device_id, event)


def parse_manufacturer(text: str | None) -> str | None:
    """A manufacturer CA named by its SHA-256 fingerprint, as a filter or bulk selector
    (any spelling `fleet trust` takes); None when not given."""
    if text is None or not text.strip():
        return None
    try:
        return normalize_fingerprint(text)
    except ConfigError as exc:
        raise RequestInvalid(
            f"manufacturer: {exc.message}", reason=Reason.FINGERPRINT_INVALID,
            hint="Name the manufacturer CA by its SHA-256 (see `fleet trust list`).",
        ) from None  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class BulkSelection:
    batch: str | None = None
    model: str | None = None
    issued_before: dt.datetime | None = None
    manufacturer: str | None = None  # the manufacturer CA's sha256 (normalised by the caller)

    def __post_init__(self) -> None:
        # "" is not "any batch": the API refuses it, the console drops it, and a CLI
        # `--batch "$UNSET"` must not select every device without a batch.
        for name in ("batch", "model", "manufacturer"):
            if getattr(self, name) == "":
                raise RequestInvalid(
                    f"{name} is empty; name the {name} to revoke, or leave it out",
                    reason="selection_empty",
                    hint="Give the batch, model or manufacturer as `fleet device list` "
                    "shows it; nothing was revoked.",
                )

    def device_filter(self) -> DeviceFilter:
        if not self.describe():
            raise RequestInvalid(
                "a bulk revocation needs at least one of batch, model, manufacturer or "
                "issued_before",
                reason="selection_empty",
                hint="Revoking the whole fleet is not a bulk operation; name what to revoke.",
            )
        return DeviceFilter(
            batch=self.batch, model=self.model, issued_before=self.issued_before,
            manufacturer_sha256=self.manufacturer,
        )  # fmt: skip

    def describe(self) -> dict[str, str]:
        parts = {"batch": self.batch, "model": self.model, "manufacturer": self.manufacturer}
        if self.issued_before is not None:
            parts["issued_before"] = self.issued_before.isoformat()
        return {k: v for k, v in parts.items() if v is not None}


@dataclasses.dataclass(frozen=True, slots=True)
class BulkResult:
    devices: int  # devices selected and not yet revoked (the blast radius)
    certificates: int  # good certificates those devices hold
    revoked: tuple[str, ...]  # device ids revoked now (empty on a dry run)
    dry_run: bool


async def bulk_revoke(
    store: Store,
    selection: BulkSelection,
    reason: RevocationReason,
    *,
    dry_run: bool,
    confirm: bool,
    threshold: int,
    actor: str,
    now: dt.datetime,
) -> BulkResult:
    device_filter = selection.device_filter()
    devices, certificates = await store.count_blast_radius(device_filter)
    # The blast radius is who would be cut off: not the devices already revoked (they
    # hold no good certificate), which the dry run and the confirmation threshold counted.
    already, _ = await store.count_blast_radius(
        dataclasses.replace(device_filter, state=DeviceState.REVOKED)
    )
    devices -= already
    if dry_run:
        return BulkResult(devices, certificates, (), True)
    if devices > threshold and not confirm:
        raise ConfirmationRequired(
            f"this revokes {devices} devices ({certificates} certificates), more than the "
            f"confirmation threshold of {threshold}; nothing changed"
        )
    await record_admin_action(
        store, actor, "bulk_revoke", reason.value, now,
        devices=str(devices), certificates=str(certificates), **selection.describe(),
    )  # fmt: skip
    revoked: list[str] = []
    after: str | None = None
    while True:
        page = await store.list_devices(device_filter, after=after, limit=200)
        if not page:
            break
        for device in page:
            if device.state is not DeviceState.REVOKED:
                result = await revoke_device(
                    store, device.device_id, reason, actor=actor, now=now, note="bulk"
                )
                if result.event is not None:
                    revoked.append(device.device_id)
        after = page[-1].device_id
    return BulkResult(devices, certificates, tuple(revoked), False)


async def decision_trace(store: Store, device_id: str) -> tuple[Device, list[AuditRecord]]:
    """`why`: the device and every audit record about it, oldest first."""
    device = await store.get_device(device_id)
    records: list[AuditRecord] = []
    after = 0
    while True:
        page = await store.audit_records(device_id=device_id, after_seq=after, limit=1000)
        records.extend(page)
        if len(page) < 1000:
            return device, records
        after = page[-1].seq
