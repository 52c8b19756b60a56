"""Recording what an admin did: one helper for every admin use-case."""

from __future__ import annotations

import datetime as dt

from fleet.records import AuditEvent
from fleet.store.audit_chain import ChainProblem, verify_chain
from fleet.store.protocol import AuditLog


def admin_action(
    actor: str,
    action: str,
    reason: str,
    now: dt.datetime,
    *,
    device_id: str | None = None,
    **detail: str,
) -> AuditEvent:
    """The audit event of a done admin action; empty detail values are left out.

    A store write that takes ``audit=`` records it in the same transaction as the
    change: a crash between two writes would leave the change unaudited for good
    (a retry finds nothing left to do, so it audits nothing)."""
    return AuditEvent(
        at=now,
        actor=actor,
        action=action,
        outcome="done",
        reason=reason,
        device_id=device_id,
        detail={key: value for key, value in detail.items() if value},
    )


async def record_admin_action(
    store: AuditLog,
    actor: str,
    action: str,
    reason: str,
    now: dt.datetime,
    *,
    device_id: str | None = None,
    **detail: str,
) -> None:
    """Append a done admin action on its own (an action whose change is not one
    store write that takes ``audit=``)."""
    await store.append_audit(
        admin_action(actor, action, reason, now, device_id=device_id, **detail)
    )


async def verify_audit_log(store: AuditLog) -> tuple[int, list[ChainProblem]]:
    """Check the whole hash chain: how many records, and every break (empty: intact)."""
    records = []
    after = 0
    while True:
        page = await store.audit_records(after_seq=after, limit=5000)
        records.extend(page)
        if len(page) < 5000:
            break
        after = page[-1].seq
    return len(records), verify_chain(records)
