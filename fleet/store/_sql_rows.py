"""Row codecs and in-transaction helpers shared by the SQL stores (SQLite, PostgreSQL).

Everything here runs inside the caller's transaction on the caller's
connection; nothing commits.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from fleet.kernel.errors import DeviceNotFound
from fleet.records import (
    AuditEvent,
    AuditRecord,
    CertificateRecord,
    CertificateStatus,
    Device,
    DeviceState,
    Manufacturer,
    RevocationEvent,
    RevocationKind,
    RevocationReason,
)
from fleet.store._codec import (
    feed_event_to_json,
    opt_parse_ts,
    parse_ts,
    serial_int,
    stored_record,
)
from fleet.store._sql import SqlConnection
from fleet.store.audit_chain import GENESIS, chain_after, event_to_json


def _device(row: Any) -> Device:
    with stored_record(f"device {row['device_id']!r}"):
        return _decode_device(row)


def _decode_device(row: Any) -> Device:
    return Device(
        device_id=row["device_id"],
        state=DeviceState(row["state"]),
        created_at=parse_ts(row["created_at"]),
        updated_at=parse_ts(row["updated_at"]),
        bootstrap_sha256=row["bootstrap_sha256"],
        model=row["model"],
        batch=row["batch"],
        enrolled_bootstrap_sha256=row["enrolled_bootstrap_sha256"],
        enrolled_at=opt_parse_ts(row["enrolled_at"]),
        state_reason=row["state_reason"],
        manufacturer=(
            None
            if row["manufacturer_sha256"] is None
            else Manufacturer(row["manufacturer_sha256"], row["manufacturer_name"])
        ),
    )


def _certificate(row: Any) -> CertificateRecord:
    with stored_record(f"certificate {row['serial']!r}"):
        return _decode_certificate(row)


def _decode_certificate(row: Any) -> CertificateRecord:
    reason = row["revocation_reason"]
    return CertificateRecord(
        serial=serial_int(row["serial"]),
        device_id=row["device_id"],
        not_before=parse_ts(row["not_before"]),
        not_after=parse_ts(row["not_after"]),
        issued_at=parse_ts(row["issued_at"]),
        pem=row["pem"],
        status=CertificateStatus(row["status"]),
        revoked_at=opt_parse_ts(row["revoked_at"]),
        revocation_reason=None if reason is None else RevocationReason(reason),
    )


def _fetch_device(conn: SqlConnection, device_id: str) -> Device:
    row = conn.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
    if row is None:
        raise DeviceNotFound(f"no device {device_id!r}")
    return _device(row)


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
