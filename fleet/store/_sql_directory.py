"""The store's directories as SQL, written once for both SQL backends.

Manufacturer trust, admin credentials, enrollment tokens, the audit log,
cursors, CRL numbers and the newest signed CRLs: everything but devices, certificates and the
revocation feed (fleet.store._sql_records, fleet.store._sql_feed). Each method is one transaction
body handed to the engine underneath (``_write``, ``_read``, ``_read_here``),
so SQLite (fleet.store.sqlite) and PostgreSQL (fleet.store.postgres) keep
one rule each.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

from fleet.kernel.errors import (
    AdminNotFound,
    NotFound,
    StoreConflict,
    TokenInvalid,
)
from fleet.records import (
    AdminCredential,
    AdminRole,
    AuditEvent,
    AuditPage,
    AuditQuery,
    AuditRecord,
    EnrollmentToken,
    ManufacturerCA,
)
from fleet.store._codec import (
    admin_order,
    check_admin_credential,
    check_cursor,
    parse_ts,
    stored_record,
    ts,
)
from fleet.store._sql import AUDIT_INDEXED, SqlConnection
from fleet.store._sql_rows import (
    _append_audit,
)
from fleet.store.audit_chain import stored_event
from fleet.store.crl_numbers import CrlCounter, StoredCrl, next_crl_number, replaces
from fleet.store.intermediates import SqlIntermediates

T = TypeVar("T")


def _audit(row: Any) -> AuditRecord:
    return AuditRecord(
        seq=row["seq"],
        event=stored_event(row["event"]),
        prev_sha256=row["prev_sha256"],
        sha256=row["sha256"],
    )


def _admin(row: Any) -> AdminCredential:
    with stored_record(f"admin credential {row['sha256']!r}"):
        return _decode_admin(row)


def _decode_admin(row: Any) -> AdminCredential:
    return AdminCredential(
        name=row["name"],
        role=AdminRole(row["role"]),
        kind=row["kind"],
        sha256=row["sha256"],
        created_at=parse_ts(row["created_at"]),
        disabled=bool(row["disabled"]),
    )


class SqlDirectory(SqlIntermediates):
    """The directories; subclasses give the engine (``_write``, ``_read``, ``_read_here``)."""

    @staticmethod
    def _event_field(field: str) -> str:
        """The SQL of one field of an audit record's event JSON: the very expression
        of its index (fleet.store._sql.AUDIT_INDEXED), so the planner uses it. Each
        dialect says JSON its own way; ``field`` is one of AUDIT_INDEXED, never input."""
        return f"json_extract(event, '$.{field}')"

    def _audit_where(self, query: AuditQuery) -> tuple[str, list[Any]]:
        """The WHERE clause (fixed strings only; every value a parameter) of an audit query."""
        clauses: list[str] = ["seq > ?"]
        params: list[Any] = [query.after_seq]
        if query.before_seq is not None:
            clauses.append("seq < ?")
            params.append(query.before_seq)
        if query.device_id is not None:
            clauses.append("device_id = ?")
            params.append(query.device_id)
        for field in AUDIT_INDEXED:
            value = getattr(query, field)
            if value is not None:
                clauses.append(f"{self._event_field(field)} = ?")
                params.append(value)
        return " AND ".join(clauses), params

    async def _write(
        self, body: Callable[[SqlConnection], T], *, feed: Callable[[T], bool] | None = None
    ) -> T:
        """Run ``body`` in one write transaction; return once it is durable. ``feed``
        tells from the result whether a revocation feed event was appended."""
        raise NotImplementedError

    async def _read(self, body: Callable[[SqlConnection], T]) -> T:
        """A read of any size, in one snapshot."""
        raise NotImplementedError

    async def _read_here(self, body: Callable[[SqlConnection], T]) -> T:
        """A short read of one statement by key."""
        raise NotImplementedError

    # -- manufacturer trust ------------------------------------------------
    async def add_manufacturer_ca(
        self, ca: ManufacturerCA, *, audit: AuditEvent | None = None
    ) -> bool:
        def body(conn: SqlConnection) -> bool:
            cursor = conn.execute(
                "INSERT INTO manufacturer_cas (sha256, name, pem, added_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sha256) DO NOTHING",
                (ca.sha256, ca.name, ca.pem, ts(ca.added_at)),
            )
            if cursor.rowcount != 1:
                return False
            _append_audit(conn, audit)
            return True

        return await self._write(body)

    async def remove_manufacturer_ca(self, sha256: str, *, audit: AuditEvent | None = None) -> None:
        def body(conn: SqlConnection) -> None:
            cursor = conn.execute("DELETE FROM manufacturer_cas WHERE sha256 = ?", (sha256,))
            if cursor.rowcount == 0:
                raise NotFound(f"no trusted manufacturer CA with fingerprint {sha256}")
            _append_audit(conn, audit)

        await self._write(body)

    async def list_manufacturer_cas(self) -> list[ManufacturerCA]:
        def body(conn: SqlConnection) -> list[ManufacturerCA]:
            rows = conn.execute(
                "SELECT sha256, name, pem, added_at FROM manufacturer_cas ORDER BY added_at, sha256"
            ).fetchall()
            return [
                ManufacturerCA(
                    sha256=r["sha256"],
                    name=r["name"],
                    pem=r["pem"],
                    added_at=parse_ts(r["added_at"]),
                )
                for r in rows
            ]

        return await self._read_here(body)

    # -- admin credentials -------------------------------------------------------
    async def put_admin_credential(
        self, cred: AdminCredential, *, audit: AuditEvent | None = None
    ) -> None:
        check_admin_credential(cred)

        def body(conn: SqlConnection) -> None:
            cursor = conn.execute(
                "INSERT INTO admin_credentials (sha256, name, role, kind, created_at, disabled) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
                (
                    cred.sha256,
                    cred.name,
                    cred.role.value,
                    cred.kind,
                    ts(cred.created_at),
                    int(cred.disabled),
                ),
            )
            if cursor.rowcount == 0:
                raise StoreConflict(f"an admin credential with sha256 {cred.sha256} exists")
            _append_audit(conn, audit)

        await self._write(body)

    async def find_admin_credential(self, sha256: str) -> AdminCredential:
        def body(conn: SqlConnection) -> AdminCredential:
            row = conn.execute(
                "SELECT * FROM admin_credentials WHERE sha256 = ?", (sha256,)
            ).fetchone()
            if row is None:
                raise AdminNotFound(f"no admin credential with sha256 {sha256}")
            return _admin(row)

        return await self._read_here(body)

    async def list_admin_credentials(self) -> list[AdminCredential]:
        def body(conn: SqlConnection) -> list[AdminCredential]:
            rows = conn.execute("SELECT * FROM admin_credentials").fetchall()
            return sorted(map(_admin, rows), key=admin_order)

        return await self._read(body)

    async def disable_admin_credential(
        self, sha256: str, *, audit: AuditEvent | None = None
    ) -> bool:
        def body(conn: SqlConnection) -> bool:
            cursor = conn.execute(
                "UPDATE admin_credentials SET disabled = 1 WHERE sha256 = ? AND disabled = 0",
                (sha256,),
            )
            if cursor.rowcount == 0:
                found = conn.execute(
                    "SELECT 1 FROM admin_credentials WHERE sha256 = ?", (sha256,)
                ).fetchone()
                if found is None:
                    raise AdminNotFound(f"no admin credential with sha256 {sha256}")
                return False  # already disabled
            _append_audit(conn, audit)
            return True

        return await self._write(body)

    # -- one-time enrollment tokens -----------------------------------------
    async def put_enrollment_token(
        self, token: EnrollmentToken, *, audit: AuditEvent | None = None
    ) -> None:
        def body(conn: SqlConnection) -> None:
            conn.execute(
                "INSERT INTO enrollment_tokens (device_id, token_sha256, created_at, expires_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
                "token_sha256 = excluded.token_sha256, created_at = excluded.created_at, "
                "expires_at = excluded.expires_at",
                (token.device_id, token.token_sha256, ts(token.created_at), ts(token.expires_at)),
            )
            _append_audit(conn, audit)

        await self._write(body)

    async def consume_enrollment_token(
        self, device_id: str, token_sha256: str, now: dt.datetime
    ) -> None:
        at = ts(now)

        def body(conn: SqlConnection) -> None:
            row = conn.execute(
                "SELECT token_sha256, expires_at FROM enrollment_tokens WHERE device_id = ?",
                (device_id,),
            ).fetchone()
            # One message for every cause, so a caller cannot probe which it was.
            if row is None or row["token_sha256"] != token_sha256 or row["expires_at"] <= at:
                raise TokenInvalid(f"no valid enrollment token for device {device_id!r}")
            conn.execute("DELETE FROM enrollment_tokens WHERE device_id = ?", (device_id,))

        await self._write(body)

    # -- audit log -------------------------------------------------------------
    async def append_audit(self, event: AuditEvent) -> AuditRecord:
        def body(conn: SqlConnection) -> AuditRecord:
            record = _append_audit(conn, event)
            assert record is not None
            return record

        return await self._write(body)

    async def audit_records(
        self, *, device_id: str | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[AuditRecord]:
        if device_id is None:
            sql = "SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?"
            params: tuple[Any, ...] = (after_seq, limit)
        else:
            sql = "SELECT * FROM audit WHERE device_id = ? AND seq > ? ORDER BY seq LIMIT ?"
            params = (device_id, after_seq, limit)
        return await self._read(lambda conn: [_audit(r) for r in conn.execute(sql, params)])

    async def search_audit(self, query: AuditQuery, *, limit: int = 100) -> AuditPage:
        where, params = self._audit_where(query)
        sql = f"SELECT * FROM audit WHERE {where} ORDER BY seq DESC LIMIT ?"  # noqa: S608
        params.append(limit)
        records = await self._read(lambda conn: [_audit(r) for r in conn.execute(sql, params)])
        # An index answers the whole query: a short page is the end.
        return AuditPage(records, records[-1].seq if len(records) == limit else 0)

    async def count_audit(
        self, query: AuditQuery, *, by: tuple[str, ...]
    ) -> dict[tuple[str, ...], int]:
        if not by or any(field not in AUDIT_INDEXED for field in by):
            raise ValueError(f"count_audit groups by some of {AUDIT_INDEXED}, not {by}")
        where, params = self._audit_where(query)
        groups = ", ".join(self._event_field(field) for field in by)
        sql = f"SELECT {groups}, COUNT(*) FROM audit WHERE {where} GROUP BY {groups}"  # noqa: S608

        def body(conn: SqlConnection) -> dict[tuple[str, ...], int]:
            counts: dict[tuple[str, ...], int] = {}
            for row in conn.execute(sql, params):
                *values, n = tuple(row)  # rows of either engine: iterable, not sliceable
                counts[tuple(str(v) for v in values)] = int(n)
            return counts

        return await self._read(body)

    # -- cursors -----------------------------------------------------------------
    async def get_cursor(self, name: str) -> int:
        def body(conn: SqlConnection) -> int:
            row = conn.execute("SELECT value FROM cursors WHERE name = ?", (name,)).fetchone()
            return 0 if row is None else int(row[0])

        return await self._read_here(body)

    async def set_cursor(self, name: str, value: int) -> None:
        check_cursor(name, value)

        def body(conn: SqlConnection) -> None:
            conn.execute(
                "INSERT INTO cursors (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

        await self._write(body)

    async def list_cursors(self, prefix: str) -> dict[str, int]:
        def body(conn: SqlConnection) -> dict[str, int]:
            rows = conn.execute(
                "SELECT name, value FROM cursors WHERE substr(name, 1, ?) = ?",
                (len(prefix), prefix),
            )
            return {str(name): int(value) for name, value in rows}

        return await self._read_here(body)

    # -- CRL numbers -------------------------------------------------------------
    async def latest_crl_number(self, scope: str) -> int:
        def body(conn: SqlConnection) -> int:
            row = conn.execute("SELECT number FROM crl_numbers WHERE name = ?", (scope,)).fetchone()
            return 0 if row is None else int(row[0])

        return await self._read_here(body)

    async def allocate_crl_number(self, scope: str, content_seq: int, floor: int) -> int | None:
        def body(conn: SqlConnection) -> int | None:
            row = conn.execute(
                "SELECT number, content_seq FROM crl_numbers WHERE name = ?", (scope,)
            ).fetchone()
            last = None if row is None else CrlCounter(int(row[0]), int(row[1]))
            counter = next_crl_number(last, content_seq, floor)
            if counter is None:
                return None
            conn.execute(
                "INSERT INTO crl_numbers (name, number, content_seq) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET number = excluded.number, "
                "content_seq = excluded.content_seq",
                (scope, counter.number, counter.content_seq),
            )
            return counter.number

        return await self._write(body)

    async def keep_signed_crl(self, scope: str, crl: StoredCrl) -> bool:
        def body(conn: SqlConnection) -> bool:
            row = conn.execute("SELECT number FROM signed_crls WHERE name = ?", (scope,)).fetchone()
            if not replaces(None if row is None else int(row[0]), crl):
                return False
            conn.execute(
                "INSERT INTO signed_crls (name, number, content_seq, der) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET number = excluded.number, "
                "content_seq = excluded.content_seq, der = excluded.der",
                (scope, crl.number, crl.content_seq, crl.der),
            )
            return True

        return await self._write(body)

    async def newest_signed_crl(self, scope: str) -> StoredCrl | None:
        # A CRL may be megabytes: a read of any size (off SQLite's event loop).
        return await self._read(lambda conn: _signed_crl(conn, scope))


def _signed_crl(conn: SqlConnection, scope: str) -> StoredCrl | None:
    row = conn.execute(
        "SELECT number, content_seq, der FROM signed_crls WHERE name = ?", (scope,)
    ).fetchone()
    return None if row is None else StoredCrl(int(row[0]), int(row[1]), bytes(row[2]))
