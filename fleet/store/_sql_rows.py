"""Row codecs and in-transaction helpers shared by the SQL stores (SQLite, PostgreSQL).

Everything here runs inside the caller's transaction on the caller's
connection; nothing commits.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

from fleet.kernel.errors import DeviceNotFound
from fleet.records import (
    AuditEvent,
    AuditRecord,
    Device,
    RevocationEvent,
    RevocationKind,
    RevocationReason,
)
from fleet.store._codec import (
    device_record,
    feed_event_to_json,
)
from fleet.store._sql import SqlConnection
from fleet.store.audit_chain import GENESIS, chain_after, event_to_json


def _fetch_device(conn: SqlConnection, device_id: str) -> Device:
    row = conn.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
    if row is None:
        raise DeviceNotFound(f"no device {device_id!r}")
    return device_record(row)


def _append_audit(conn: SqlConnection, event: AuditEvent | None) -> AuditRecord | None:
    """Chain ``event`` after the newest record, inside the caller's write transaction."""
    if event is None:
        return None
    row = conn.execute("SELECT seq, sha256 FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    record = chain_after(0, GENESIS, event) if row is None else chain_after(row[0], row[1], event)
    conn.execute(
        "INSERT INTO audit (seq, event, prev_sha256, sha256, device_id) VALUES (?, ?, ?, ?, ?)",
        (
            record.seq,
            json.dumps(event_to_json(event), sort_keys=True),
            record.prev_sha256,
            record.sha256,
            event.device_id,
        ),
    )
    return record


def _append_feed(
    conn: SqlConnection,
    kind: RevocationKind,
    device_id: str,
    serials: Sequence[int],
    reason: RevocationReason,
    now: dt.datetime,
) -> RevocationEvent:
    (head,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM revocation_feed").fetchone()
    event = RevocationEvent(
        seq=head + 1,
        kind=kind,
        device_id=device_id,
        serials=tuple(sorted(serials)),
        reason=reason,
        at=now,
    )
    conn.execute(
        "INSERT INTO revocation_feed (seq, event) VALUES (?, ?)",
        (event.seq, feed_event_to_json(event)),
    )
    return event
