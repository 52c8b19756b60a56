"""Which audit records become webhook notifications, and the JSON they carry. Pure.

The audit log is the outbox: every revocation, suspension and held enrollment
is an audit record, so selecting notifications is a function of the record
alone. To notify on another audit action, add one line to :data:`RULES`.

Body (compact JSON, keys sorted, UTF-8)::

    {"id": "42", "type": "device.revoked", "at": "2026-06-01T12:00:00+00:00",
     "device_id": "dev-1", "reason": "keyCompromise", "actor": "admin:alice",
     "detail": {...}}

``id`` is the audit sequence number: delivery is at-least-once, receivers
de-duplicate on it (it is also the ``X-Fleet-Delivery`` header).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from fleet.records import AuditEvent, AuditRecord


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """Audit records with this action and outcome (None: any) notify as ``type``."""

    type: str
    action: str | None = None
    outcome: str | None = None

    def matches(self, event: AuditEvent) -> bool:
        return (self.action is None or self.action == event.action) and (
            self.outcome is None or self.outcome == event.outcome
        )


# First match wins. Only completed admin actions ("done") notify: a refused
# revocation changed nothing a receiver must act on.
RULES: tuple[Rule, ...] = (
    Rule("device.revoked", action="revoke", outcome="done"),
    Rule("certificate.revoked", action="revoke_certificate", outcome="done"),
    Rule("device.suspended", action="suspend", outcome="done"),
    # Unknown device or possible clone (detail "flag": "possible_clone").
    Rule("enrollment.held", outcome="held"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Notification:
    seq: int
    type: str
    body: bytes  # exactly the bytes that are signed and sent
    device_id: str | None

    @property
    def id(self) -> str:
        return str(self.seq)


def notification_type(event: AuditEvent, rules: Sequence[Rule] = RULES) -> str | None:
    """The notification type of an audit event, or None if it does not notify."""
    return next((rule.type for rule in rules if rule.matches(event)), None)


def notification_for(record: AuditRecord, rules: Sequence[Rule] = RULES) -> Notification | None:
    """The notification an audit record becomes, or None."""
    kind = notification_type(record.event, rules)
    if kind is None:
        return None
    return Notification(
        seq=record.seq,
        type=kind,
        body=encode_body(notification_body(record, kind)),
        device_id=record.event.device_id,
    )


def notification_body(record: AuditRecord, kind: str) -> dict[str, Any]:
    event = record.event
    return {
        "id": str(record.seq),
        "type": kind,
        "at": event.at.astimezone(dt.UTC).isoformat(),
        "device_id": event.device_id,
        "reason": event.reason,
        "actor": event.actor,
        "detail": dict(event.detail),
    }


def encode_body(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
