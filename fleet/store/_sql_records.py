"""The store's records as SQL, written once for both SQL backends.

Every method is one transaction body (a function of one connection) handed to
the engine underneath: ``_write`` (one write transaction, acknowledged once
durable), ``_read`` (a read of any size, one snapshot) or ``_read_here`` (one
short statement). Devices, certificates, replacement requests and the
revocations that append to the feed are here; the feed's reads in
fleet.store._sql_feed; fleet-wide device queries in
fleet.store._sql_device_queries; the directories (trust, admins, tokens, audit,
cursors, CRL numbers) in fleet.store._sql_directory. SQLite (fleet.store.sqlite) and PostgreSQL
(fleet.store.postgres) differ only in those engines, so a rule of the store
cannot differ between them. The SQL is the common dialect of both (``?``
placeholders, ``ON CONFLICT``, text timestamps and hex serials from _codec).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Sequence
from typing import TypeVar

from fleet.kernel.errors import (
    CertificateNotFound,
    StoreConflict,
)
from fleet.records import (
    AuditEvent,
    CertificateRecord,
    CertificateStatus,
    Device,
    DeviceState,
    ManifestEntry,
    Manufacturer,
    ReplacementRequest,
    ReplacementStatus,
    RevocationEvent,
    RevocationKind,
    RevocationReason,
)
from fleet.store import _sql_replacements as replacements
from fleet.store._codec import (
    certificate_record,
    check_manifest,
    check_target_state,
    opt_ts,
    parse_ts,
    serial_hex,
    serial_int,
    ts,
)
from fleet.store._sql import SqlConnection
from fleet.store._sql_feed import SqlRevocationFeed
from fleet.store._sql_rows import (
    _append_audit,
    _append_feed,
    _fetch_device,
)

T = TypeVar("T")


def _same_certificate_recorded(conn: SqlConnection, c: CertificateRecord) -> bool:
    """Whether exactly ``c`` is already recorded: a replay (the Redis backend sees
    those after a retry), not a conflict."""
    existing = conn.execute(
        "SELECT device_id, pem FROM certificates WHERE serial = ?", (serial_hex(c.serial),)
    ).fetchone()
    return (
        existing is not None and existing["device_id"] == c.device_id and existing["pem"] == c.pem
    )


def _good(conn: SqlConnection, serial: int) -> bool:
    row = conn.execute(
        "SELECT status FROM certificates WHERE serial = ?", (serial_hex(serial),)
    ).fetchone()
    return row is not None and row["status"] == CertificateStatus.GOOD.value


def _appended(event: RevocationEvent | None) -> bool:
    return event is not None


class SqlRecords(SqlRevocationFeed):
    """Every Store method but the engine's own (open, close, follow_feed)."""

    # -- devices -------------------------------------------------------------
    async def import_manifest(
        self,
        entries: Sequence[ManifestEntry],
        now: dt.datetime,
        *,
        audit: AuditEvent | None = None,
    ) -> int:
        check_manifest(entries)
        at = ts(now)

        def body(conn: SqlConnection) -> int:
            created = 0
            for e in entries:
                cursor = conn.execute(
                    "UPDATE devices SET bootstrap_sha256 = ?, model = ?, batch = ?, updated_at = ? "
                    "WHERE device_id = ?",
                    (e.bootstrap_sha256, e.model, e.batch, at, e.device_id),
                )
                if cursor.rowcount == 0:
                    conn.execute(
                        "INSERT INTO devices (device_id, state, created_at, updated_at, "
                        "bootstrap_sha256, model, batch) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            e.device_id,
                            DeviceState.REGISTERED.value,
                            at,
                            at,
                            e.bootstrap_sha256,
                            e.model,
                            e.batch,
                        ),
                    )
                    created += 1
                if e.manufacturer is not None:
                    conn.execute(
                        "UPDATE devices SET manufacturer_sha256 = ?, manufacturer_name = ? "
                        "WHERE device_id = ?",
                        (e.manufacturer.sha256, e.manufacturer.name, e.device_id),
                    )
            _append_audit(conn, audit)
            return created

        return await self._write(body)

    async def get_device(self, device_id: str) -> Device:
        return await self._read_here(lambda conn: _fetch_device(conn, device_id))

    async def add_pending_device(
        self, device: Device, *, audit: AuditEvent | None = None
    ) -> Device:
        def body(conn: SqlConnection) -> Device:
            cursor = conn.execute(
                "INSERT INTO devices (device_id, state, created_at, updated_at, bootstrap_sha256, "
                "model, batch, enrolled_bootstrap_sha256, enrolled_at, state_reason, "
                "manufacturer_sha256, manufacturer_name) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (device_id) DO NOTHING",
                (
                    device.device_id,
                    device.state.value,
                    ts(device.created_at),
                    ts(device.updated_at),
                    device.bootstrap_sha256,
                    device.model,
                    device.batch,
                    device.enrolled_bootstrap_sha256,
                    opt_ts(device.enrolled_at),
                    device.state_reason,
                    device.manufacturer.sha256 if device.manufacturer else None,
                    device.manufacturer.name if device.manufacturer else "",
                ),
            )
            if cursor.rowcount == 0:
                raise StoreConflict(f"device {device.device_id!r} already exists")
            _append_audit(conn, audit)
            return _fetch_device(conn, device.device_id)

        return await self._write(body)

    async def set_device_state(
        self,
        device_id: str,
        state: DeviceState,
        *,
        expected: Collection[DeviceState],
        now: dt.datetime,
        reason: str = "",
        audit: AuditEvent | None = None,
    ) -> Device:
        check_target_state(state)
        allowed = {s.value for s in expected}
        at = ts(now)

        def body(conn: SqlConnection) -> Device:
            current = _fetch_device(conn, device_id)
            if current.state.value not in allowed:
                raise StoreConflict(
                    f"device {device_id!r} is {current.state.value}, not one of {sorted(allowed)}"
                )
            conn.execute(
                "UPDATE devices SET state = ?, updated_at = ?, state_reason = ? "
                "WHERE device_id = ?",
                (state.value, at, reason, device_id),
            )
            _append_audit(conn, audit)
            return _fetch_device(conn, device_id)

        return await self._write(body)

    # -- certificates --------------------------------------------------------
    async def record_certificate(
        self,
        certificate: CertificateRecord,
        *,
        expected: Collection[DeviceState],
        now: dt.datetime,
        bootstrap_sha256: str | None = None,
        audit: AuditEvent | None = None,
        supersede: Collection[int] = (),
        replacement_key: str | None = None,
        manufacturer: Manufacturer | None = None,
        renewing: int | None = None,
    ) -> Device:
        allowed = {s.value for s in expected}
        at = ts(now)
        c = certificate

        def body(conn: SqlConnection) -> tuple[Device, RevocationEvent | None]:
            current = _fetch_device(conn, c.device_id)
            if current.state.value not in allowed:
                if _same_certificate_recorded(conn, c):
                    return current, None  # a replayed call that already succeeded
                raise StoreConflict(
                    f"device {c.device_id!r} is {current.state.value}, not one of {sorted(allowed)}"
                )
            if renewing is not None and not _good(conn, renewing):
                if _same_certificate_recorded(conn, c):
                    return current, None  # a replay (the renewing one superseded since)
                raise StoreConflict(
                    f"certificate {serial_hex(renewing)} that authenticated the renewal is "
                    "no longer good"
                )
            if replacement_key is not None:
                if _same_certificate_recorded(conn, c):
                    return current, None  # consumed by the call being replayed
                replacements.consume_approval(conn, c.device_id, replacement_key)
            inserted = conn.execute(
                "INSERT INTO certificates (serial, device_id, not_before, not_after, "
                "issued_at, pem, status, revoked_at, revocation_reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (serial) DO NOTHING",
                (
                    serial_hex(c.serial),
                    c.device_id,
                    ts(c.not_before),
                    ts(c.not_after),
                    ts(c.issued_at),
                    c.pem,
                    c.status.value,
                    opt_ts(c.revoked_at),
                    None if c.revocation_reason is None else c.revocation_reason.value,
                ),
            )
            # ON CONFLICT, not a caught IntegrityError: PostgreSQL aborts the whole
            # transaction on a failed statement.
            if inserted.rowcount == 0:  # the serial is taken (the device exists)
                if _same_certificate_recorded(conn, c):
                    return current, None
                raise StoreConflict(
                    f"a different certificate with serial {serial_hex(c.serial)} is recorded"
                )
            if bootstrap_sha256 is None:
                conn.execute(
                    "UPDATE devices SET state = ?, updated_at = ? WHERE device_id = ?",
                    (DeviceState.ACTIVE.value, at, c.device_id),
                )
            else:
                conn.execute(
                    "UPDATE devices SET state = ?, updated_at = ?, enrolled_bootstrap_sha256 = ?, "
                    "enrolled_at = ? WHERE device_id = ?",
                    (DeviceState.ACTIVE.value, at, bootstrap_sha256, at, c.device_id),
                )
            if manufacturer is not None:
                conn.execute(
                    "UPDATE devices SET manufacturer_sha256 = ?, manufacturer_name = ? "
                    "WHERE device_id = ?",
                    (manufacturer.sha256, manufacturer.name, c.device_id),
                )
            superseded = replacements.revoke_certificates(
                conn, c.device_id, supersede, RevocationReason.SUPERSEDED, now
            )
            _append_audit(conn, audit)
            # What the UPDATE just wrote, without reading the row back.
            return dataclasses.replace(
                current,
                state=DeviceState.ACTIVE,
                updated_at=parse_ts(at),
                enrolled_bootstrap_sha256=(
                    current.enrolled_bootstrap_sha256
                    if bootstrap_sha256 is None
                    else bootstrap_sha256
                ),
                enrolled_at=current.enrolled_at if bootstrap_sha256 is None else parse_ts(at),
                manufacturer=current.manufacturer if manufacturer is None else manufacturer,
            ), superseded

        device, _ = await self._write(body, feed=lambda result: result[1] is not None)
        return device

    # -- replacement requests ----------------------------------------------------
    async def get_replacement_request(self, device_id: str) -> ReplacementRequest | None:
        return await self._read_here(lambda conn: replacements.fetch_request(conn, device_id))

    async def list_replacement_requests(
        self, status: ReplacementStatus, *, after: str | None = None, limit: int = 100
    ) -> list[ReplacementRequest]:
        return await self._read(lambda conn: replacements.list_requests(conn, status, after, limit))

    async def note_replacement_attempt(
        self,
        device_id: str,
        *,
        bootstrap_sha256: str,
        key_sha256: str,
        source: str,
        now: dt.datetime,
        audit: AuditEvent | None = None,
    ) -> ReplacementRequest:
        return await self._write(
            lambda conn: replacements.note_attempt(
                conn, device_id, bootstrap_sha256=bootstrap_sha256, key_sha256=key_sha256,
                source=source, now=now, audit=audit,
            )
        )  # fmt: skip

    async def decide_replacement_request(
        self,
        device_id: str,
        status: ReplacementStatus,
        *,
        now: dt.datetime,
        actor: str,
        revoke: RevocationReason | None = None,
        audit: AuditEvent | None = None,
        key_sha256: str | None = None,
    ) -> tuple[ReplacementRequest, RevocationEvent | None]:
        return await self._write(
            lambda conn: replacements.decide(
                conn,
                device_id,
                status,
                now=now,
                actor=actor,
                revoke=revoke,
                audit=audit,
                key_sha256=key_sha256,
            ),
            feed=lambda result: result[1] is not None,
        )

    async def get_certificate(self, serial: int) -> CertificateRecord:
        def body(conn: SqlConnection) -> CertificateRecord:
            row = conn.execute(
                "SELECT * FROM certificates WHERE serial = ?", (serial_hex(serial),)
            ).fetchone()
            if row is None:
                raise CertificateNotFound(f"no certificate with serial {serial:x}")
            return certificate_record(row)

        return await self._read_here(body)

    async def list_certificates(self, device_id: str) -> list[CertificateRecord]:
        def body(conn: SqlConnection) -> list[CertificateRecord]:
            rows = conn.execute("SELECT * FROM certificates WHERE device_id = ?", (device_id,))
            certs = [certificate_record(r) for r in rows]
            return sorted(certs, key=lambda c: (c.issued_at, c.serial), reverse=True)

        return await self._read_here(body)

    async def list_expiring(
        self, before: dt.datetime, *, limit: int = 1000
    ) -> list[CertificateRecord]:
        # Hex serials of different lengths do not sort as text; length first makes them numeric.
        sql = (
            "SELECT * FROM certificates WHERE not_after < ? AND status = ? "
            "ORDER BY not_after, length(serial), serial LIMIT ?"
        )
        params = (ts(before), CertificateStatus.GOOD.value, limit)
        return await self._read(
            lambda conn: [certificate_record(r) for r in conn.execute(sql, params)]
        )

    async def list_revoked(self) -> list[CertificateRecord]:
        sql = "SELECT * FROM certificates WHERE status = ? ORDER BY length(serial), serial"
        params = (CertificateStatus.REVOKED.value,)
        return await self._read(
            lambda conn: [certificate_record(r) for r in conn.execute(sql, params)]
        )

    async def revoke_certificate(
        self,
        serial: int,
        reason: RevocationReason,
        now: dt.datetime,
        *,
        audit: AuditEvent | None = None,
    ) -> RevocationEvent | None:
        at = ts(now)

        def body(conn: SqlConnection) -> RevocationEvent | None:
            row = conn.execute(
                "SELECT device_id, status FROM certificates WHERE serial = ?", (serial_hex(serial),)
            ).fetchone()
            if row is None:
                raise CertificateNotFound(f"no certificate with serial {serial:x}")
            if row["status"] == CertificateStatus.REVOKED.value:
                return None
            conn.execute(
                "UPDATE certificates SET status = ?, revoked_at = ?, revocation_reason = ? "
                "WHERE serial = ?",
                (CertificateStatus.REVOKED.value, at, reason.value, serial_hex(serial)),
            )
            _append_audit(conn, audit)
            return _append_feed(
                conn, RevocationKind.CERTIFICATE, row["device_id"], [serial], reason, now
            )

        return await self._write(body, feed=_appended)

    async def revoke_device(
        self,
        device_id: str,
        reason: RevocationReason,
        now: dt.datetime,
        *,
        audit: AuditEvent | None = None,
    ) -> RevocationEvent | None:
        at = ts(now)

        def body(conn: SqlConnection) -> RevocationEvent | None:
            current = _fetch_device(conn, device_id)
            if current.state is DeviceState.REVOKED:
                return None
            good = [
                r["serial"]
                for r in conn.execute(
                    "SELECT serial FROM certificates WHERE device_id = ? AND status = ?",
                    (device_id, CertificateStatus.GOOD.value),
                )
            ]
            conn.execute(
                "UPDATE certificates SET status = ?, revoked_at = ?, revocation_reason = ? "
                "WHERE device_id = ? AND status = ?",
                (
                    CertificateStatus.REVOKED.value,
                    at,
                    reason.value,
                    device_id,
                    CertificateStatus.GOOD.value,
                ),
            )
            conn.execute(
                "UPDATE devices SET state = ?, updated_at = ?, state_reason = ? "
                "WHERE device_id = ?",
                (DeviceState.REVOKED.value, at, reason.value, device_id),
            )
            _append_audit(conn, audit)
            return _append_feed(
                conn,
                RevocationKind.DEVICE,
                device_id,
                [serial_int(s) for s in good],
                reason,
                now,
            )

        return await self._write(body, feed=_appended)
