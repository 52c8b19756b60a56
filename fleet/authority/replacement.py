"""An admin's answer to a replacement request: a bootstrap replay beside an active device.

A replay of a device's bootstrap certificate never changes the device; the
enrollment noted a pending replacement request instead (fleet.policy.enrollment).
The admin answers it:

* approve with ``replace`` — the factory-reset case: every good certificate of
  the device is revoked (RFC 5280 ``superseded``) now, and the key the request
  names is issued at the device's next EST retry (the store consumes the approval);
* reject — the clone case: the replay is refused from then on; with ``revoke``
  the device's current certificates are revoked too (``keyCompromise``): whoever
  holds the factory key may also hold the operational one.

Approving without saying ``replace`` changes nothing and explains both choices.
"""

from __future__ import annotations

import datetime as dt

from fleet.kernel.errors import (
    NoReplacementRequest,
    ReplacementChoiceRequired,
    ReplacementKeyRequired,
    StoreConflict,
)
from fleet.kernel.fingerprint import fingerprint_prefix
from fleet.records import (
    AuditEvent,
    CertificateStatus,
    ReplacementRequest,
    ReplacementStatus,
    RevocationReason,
)
from fleet.store.protocol import Store


def choice_required(device_id: str, request: ReplacementRequest) -> ReplacementChoiceRequired:
    return ReplacementChoiceRequired(
        f"device {device_id} is active and has a pending replacement request (its bootstrap "
        f"certificate presented again: {request.attempts} attempt(s), last "
        f"{request.last_seen.isoformat()}, new key {request.key_sha256[:16]}...); approving "
        "it needs a choice: --replace (a factory reset: the new key replaces the current "
        "certificates) or reject it (a clone: --revoke also revokes the current ones); "
        "nothing changed"
    )


def no_request(device_id: str, option: str) -> NoReplacementRequest:
    return NoReplacementRequest(
        f"device {device_id} has no pending replacement request; {option} applies only to "
        "one; nothing changed"
    )


def approved_key(request: ReplacementRequest, key: str | None) -> str:
    """The key an approval is for: the one the admin names (a unique prefix of 8+ hex
    digits is enough), or the request's only key when a single one was ever presented.

    An approval is bound to a key so that a replay between the admin's look and their
    answer cannot swap in an attacker's key (the store compares and sets it too).
    """
    if key is None:
        if request.keys_seen > 1:
            raise ReplacementKeyRequired(
                f"device {request.device_id}'s bootstrap certificate was presented with "
                f"{request.keys_seen} different keys (the newest is {request.key_sha256[:16]}…); "
                "say which key to approve; nothing changed"
            )
        return request.key_sha256
    given = fingerprint_prefix(key)
    if given is None or not request.key_sha256.startswith(given):
        raise ReplacementKeyRequired(
            f"the replacement request of device {request.device_id} names key "
            f"{request.key_sha256[:16]}…, not {key[:64]!r}; nothing changed"
        )
    return request.key_sha256


async def pending_request(store: Store, device_id: str) -> ReplacementRequest | None:
    request = await store.get_replacement_request(device_id)
    if request is None or request.status is not ReplacementStatus.PENDING:
        return None
    return request


async def answer_replacement(
    store: Store,
    request: ReplacementRequest,
    *,
    approve: bool,
    revoke: bool,
    actor: str,
    now: dt.datetime,
    key: str | None = None,
) -> ReplacementRequest:
    """Approve (revoking the current certificates as superseded) or reject (revoking
    them as keyCompromise when ``revoke``) the pending request, atomically with its
    audit record."""
    device_id = request.device_id
    reason: RevocationReason | None = None
    if approve:
        reason = RevocationReason.SUPERSEDED
    elif revoke:
        reason = RevocationReason.KEY_COMPROMISE
    status = ReplacementStatus.APPROVED if approve else ReplacementStatus.REJECTED
    good = [
        c.serial
        for c in await store.list_certificates(device_id)
        if c.status is CertificateStatus.GOOD
    ]
    detail = {
        "replacement": status.value,
        "key_sha256": request.key_sha256,
        "bootstrap_sha256": request.bootstrap_sha256,
        "attempts": str(request.attempts),
        "first_seen": request.first_seen.isoformat(),
        "last_seen": request.last_seen.isoformat(),
    }
    if request.source:
        detail["source"] = request.source
    if reason is not None and good:
        detail["revoked"] = ",".join(f"{s:x}" for s in good)
        detail["revocation_reason"] = reason.value
    audit = AuditEvent(
        at=now,
        actor=actor,
        action="approve" if approve else "reject",
        outcome="done",
        reason="replacement_approved" if approve else "replacement_rejected",
        device_id=device_id,
        detail=detail,
    )
    try:
        answered, _ = await store.decide_replacement_request(
            device_id, status, now=now, actor=actor, revoke=reason, audit=audit, key_sha256=key
        )
    except StoreConflict as exc:
        raise NoReplacementRequest(
            f"the replacement request of device {device_id} changed meanwhile ({exc.message}); "
            "nothing changed: look again"
        ) from exc
    return answered
