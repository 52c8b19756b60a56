"""Records as JSON (pure): the one codec of the admin API and the CLI, local or remote.

The OpenAPI schemas describe these shapes; `fleet … --json` prints the same
ones, so a script reads the same fields, with the same time format (ISO 8601
in UTC), whichever way it asks.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fleet.authority.lifecycle import BulkResult
from fleet.records import (
    AdminCredential,
    AuditRecord,
    CertificateRecord,
    Device,
    ManufacturerCA,
    ReplacementRequest,
)


def when(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat()


def device_json(device: Device) -> dict[str, Any]:
    return {
        "device_id": device.device_id,
        "state": device.state.value,
        "state_reason": device.state_reason,
        "model": device.model,
        "batch": device.batch,
        "bootstrap_sha256": device.bootstrap_sha256,
        "enrolled_bootstrap_sha256": device.enrolled_bootstrap_sha256,
        "enrolled_at": when(device.enrolled_at),
        "manufacturer": (
            None
            if device.manufacturer is None
            else {"sha256": device.manufacturer.sha256, "name": device.manufacturer.name}
        ),
        "created_at": when(device.created_at),
        "updated_at": when(device.updated_at),
    }


def device_detail_json(device: Device, request: ReplacementRequest | None) -> dict[str, Any]:
    """One device as shown on its own: with its replacement request (or null)."""
    return {**device_json(device), "replacement_request": replacement_json(request)}


def replacement_json(request: ReplacementRequest | None) -> dict[str, Any] | None:
    if request is None:
        return None
    return {
        "status": request.status.value,
        "bootstrap_sha256": request.bootstrap_sha256,
        "key_sha256": request.key_sha256,
        "first_seen": when(request.first_seen),
        "last_seen": when(request.last_seen),
        "attempts": request.attempts,
        "keys_seen": request.keys_seen,
        "source": request.source,
        "decided_at": when(request.decided_at),
        "decided_by": request.decided_by,
    }


def certificate_json(record: CertificateRecord) -> dict[str, Any]:
    return {
        "serial": f"{record.serial:x}",
        "device_id": record.device_id,
        "status": record.status.value,
        "not_before": when(record.not_before),
        "not_after": when(record.not_after),
        "issued_at": when(record.issued_at),
        "revoked_at": when(record.revoked_at),
        "revocation_reason": record.revocation_reason.value if record.revocation_reason else None,
        "pem": record.pem,
    }


def audit_json(record: AuditRecord) -> dict[str, Any]:
    event = record.event
    return {
        "seq": record.seq,
        "at": when(event.at),
        "actor": event.actor,
        "action": event.action,
        "outcome": event.outcome,
        "reason": event.reason,
        "device_id": event.device_id,
        "detail": dict(event.detail),
        "sha256": record.sha256,
    }


def manufacturer_json(ca: ManufacturerCA) -> dict[str, Any]:
    return {"sha256": ca.sha256, "name": ca.name, "added_at": when(ca.added_at), "pem": ca.pem}


def admin_credential_json(credential: AdminCredential) -> dict[str, Any]:
    """An admin credential, never its secret (only the fingerprint that names it)."""
    return {
        "name": credential.name,
        "role": credential.role.value,
        "kind": credential.kind,
        "sha256": credential.sha256,
        "created_at": when(credential.created_at),
        "disabled": credential.disabled,
    }


def bulk_json(result: BulkResult) -> dict[str, Any]:
    """A bulk revocation (or its dry run): counts and the serials revoked."""
    return {
        "dry_run": result.dry_run,
        "devices": result.devices,
        "certificates": result.certificates,
        "revoked": list(result.revoked),
    }
