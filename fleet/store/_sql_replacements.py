"""Replacement requests and superseded certificates, inside the caller's transaction.

SQL shared by the SQLite and PostgreSQL stores. The store's methods wrap these
in one write transaction each (SQLite's ``BEGIN IMMEDIATE``), so every check and
change here is atomic with the rest of it. SQLITE_SCHEMA is SQLite's table;
PostgreSQL's is in fleet.store._postgres_schema.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from fleet.kernel.errors import StoreConflict
from fleet.records import (
    AuditEvent,
    CertificateStatus,
    DeviceState,
    ReplacementRequest,
    ReplacementStatus,
    RevocationEvent,
    RevocationKind,
    RevocationReason,
)
from fleet.store._codec import opt_ts, replacement_request, serial_hex, ts
from fleet.store._sql import SqlConnection
from fleet.store._sql_rows import _append_audit, _append_feed, _fetch_device

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS replacement_requests (
    device_id TEXT PRIMARY KEY REFERENCES devices(device_id),
    bootstrap_sha256 TEXT NOT NULL,
    key_sha256 TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    keys_seen INTEGER NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    decided_at TEXT,
    decided_by TEXT NOT NULL DEFAULT ''
);
"""

_GOOD = CertificateStatus.GOOD.value


def fetch_request(conn: SqlConnection, device_id: str) -> ReplacementRequest | None:
    row = conn.execute(
        "SELECT * FROM replacement_requests WHERE device_id = ?", (device_id,)
    ).fetchone()
    return None if row is None else replacement_request(row)


def list_requests(
    conn: SqlConnection, status: ReplacementStatus, after: str | None, limit: int
) -> list[ReplacementRequest]:
    rows = conn.execute(
        "SELECT * FROM replacement_requests WHERE status = ? AND device_id > ? "
        "ORDER BY device_id LIMIT ?",
        (status.value, after or "", limit),
    )
    return [replacement_request(row) for row in rows]


def note_attempt(
    conn: SqlConnection,
    device_id: str,
    *,
    bootstrap_sha256: str,
    key_sha256: str,
    source: str,
    now: dt.datetime,
    audit: AuditEvent | None,
) -> ReplacementRequest:
    device = _fetch_device(conn, device_id)
    if device.state is not DeviceState.ACTIVE:
        raise StoreConflict(f"device {device_id!r} is {device.state.value}, not active")
    current = fetch_request(conn, device_id)
    at = ts(now)
    if current is None:
        conn.execute(
            "INSERT INTO replacement_requests (device_id, bootstrap_sha256, key_sha256, "
            "first_seen, last_seen, attempts, keys_seen, source, status) "
            "VALUES (?, ?, ?, ?, ?, 1, 1, ?, ?)",
            (device_id, bootstrap_sha256, key_sha256, at, at, source,
             ReplacementStatus.PENDING.value),
        )  # fmt: skip
    elif current.status is not ReplacementStatus.PENDING:
        raise StoreConflict(
            f"the replacement request of device {device_id!r} is {current.status.value}"
        )
    else:
        changed = 1 if current.key_sha256 != key_sha256 else 0
        conn.execute(
            "UPDATE replacement_requests SET bootstrap_sha256 = ?, key_sha256 = ?, "
            "last_seen = ?, attempts = attempts + 1, keys_seen = keys_seen + ?, source = ? "
            "WHERE device_id = ?",
            (bootstrap_sha256, key_sha256, at, changed, source, device_id),
        )
    _append_audit(conn, audit)
    request = fetch_request(conn, device_id)
    assert request is not None
    return request


def decide(
    conn: SqlConnection,
    device_id: str,
    status: ReplacementStatus,
    *,
    now: dt.datetime,
    actor: str,
    revoke: RevocationReason | None,
    audit: AuditEvent | None,
    key_sha256: str | None = None,
) -> tuple[ReplacementRequest, RevocationEvent | None]:
    if status is ReplacementStatus.PENDING:
        raise ValueError("a replacement request is answered approved or rejected")
    _fetch_device(conn, device_id)  # DeviceNotFound
    current = fetch_request(conn, device_id)
    if current is None or current.status is not ReplacementStatus.PENDING:
        what = "no" if current is None else f"a {current.status.value}"
        raise StoreConflict(f"device {device_id!r} has {what} replacement request")
    if key_sha256 is not None and current.key_sha256 != key_sha256:
        raise StoreConflict(
            f"the replacement request of device {device_id!r} now names another key "
            f"({current.key_sha256[:16]}…): a new key was presented meanwhile"
        )
    conn.execute(
        "UPDATE replacement_requests SET status = ?, decided_at = ?, decided_by = ? "
        "WHERE device_id = ?",
        (status.value, ts(now), actor, device_id),
    )
    event = None
    if revoke is not None:
        good = [
            int(r["serial"], 16)
            for r in conn.execute(
                "SELECT serial FROM certificates WHERE device_id = ? AND status = ?",
                (device_id, _GOOD),
            )
        ]
        event = revoke_certificates(conn, device_id, good, revoke, now)
    _append_audit(conn, audit)
    request = fetch_request(conn, device_id)
    assert request is not None
    return request, event


def consume_approval(conn: SqlConnection, device_id: str, key_sha256: str) -> None:
    """Remove the device's approved request for ``key_sha256``; StoreConflict if there is none."""
    cursor = conn.execute(
        "DELETE FROM replacement_requests WHERE device_id = ? AND status = ? AND key_sha256 = ?",
        (device_id, ReplacementStatus.APPROVED.value, key_sha256),
    )
    if cursor.rowcount == 0:
        raise StoreConflict(f"device {device_id!r} has no replacement approved for this key")


def revoke_certificates(
    conn: SqlConnection,
    device_id: str,
    serials: Collection[int],
    reason: RevocationReason,
    now: dt.datetime,
) -> RevocationEvent | None:
    """Revoke those of ``serials`` that are good certificates of the device; one feed event."""
    revoked = []
    for serial in serials:
        cursor = conn.execute(
            "UPDATE certificates SET status = ?, revoked_at = ?, revocation_reason = ? "
            "WHERE serial = ? AND device_id = ? AND status = ?",
            (CertificateStatus.REVOKED.value, opt_ts(now), reason.value, serial_hex(serial),
             device_id, _GOOD),
        )  # fmt: skip
        if cursor.rowcount:
            revoked.append(serial)
    if not revoked:
        return None
    return _append_feed(conn, RevocationKind.CERTIFICATE, device_id, revoked, reason, now)
