"""The manufacturer intermediate pool, for both store backends.

Manufacturers sign device certificates with intermediate CAs below the root
an admin trusts (IEEE 802.1AR: root → intermediate(s) → IDevID), and a device
rarely sends its intermediate (a proxy forwards only the leaf; Python 3.11's
ssl shows only the leaf). The pool holds intermediates an admin imported,
each checked against a trusted manufacturer root when added.

The pool is kept apart from the trusted manufacturer CAs, in its own table
(SQLite) or hash (Redis), not as a flag on the trusted CAs' rows: the
trusted list is what the verifier uses as *anchors*, and a row there is
trusted by itself. A pool certificate is only a path hint; the verifier
still needs a trusted root above it, so removing the root distrusts every
device below it whatever the pool holds, and no query that forgets a flag
can turn an intermediate into an anchor.

``SqlIntermediates`` is a mixin of the SQL stores (SQLite, PostgreSQL); the Redis
store's is ``fleet.store._redis_intermediates``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from fleet.kernel.errors import NotFound
from fleet.records import AuditEvent, ManufacturerCA
from fleet.store._codec import parse_ts, ts
from fleet.store._sql import SqlConnection
from fleet.store._sql_rows import _append_audit

T = TypeVar("T")

# Appended to the SQL schema (a new table only: older files gain it in place).
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS manufacturer_intermediates (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    pem TEXT NOT NULL,
    added_at TEXT NOT NULL
);
"""


def missing_intermediate(sha256: str) -> NotFound:
    return NotFound(f"no manufacturer intermediate CA with fingerprint {sha256} in the pool")


class _Sql(Protocol):
    async def _write(self, body: Callable[[SqlConnection], T], *, feed: bool = ...) -> T: ...

    async def _read_here(self, body: Callable[[SqlConnection], T]) -> T: ...


class SqlIntermediates:
    async def add_manufacturer_intermediate(
        self: _Sql, ca: ManufacturerCA, *, audit: AuditEvent | None = None
    ) -> bool:
        def body(conn: SqlConnection) -> bool:
            cursor = conn.execute(
                "INSERT INTO manufacturer_intermediates (sha256, name, pem, added_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
                (ca.sha256, ca.name, ca.pem, ts(ca.added_at)),
            )
            if cursor.rowcount != 1:
                return False
            _append_audit(conn, audit)
            return True

        return await self._write(body)

    async def remove_manufacturer_intermediate(
        self: _Sql, sha256: str, *, audit: AuditEvent | None = None
    ) -> None:
        def body(conn: SqlConnection) -> None:
            cursor = conn.execute(
                "DELETE FROM manufacturer_intermediates WHERE sha256 = ?", (sha256,)
            )
            if cursor.rowcount == 0:
                raise missing_intermediate(sha256)
            _append_audit(conn, audit)

        await self._write(body)

    async def list_manufacturer_intermediates(self: _Sql) -> list[ManufacturerCA]:
        def body(conn: SqlConnection) -> list[ManufacturerCA]:
            rows = conn.execute(
                "SELECT sha256, name, pem, added_at FROM manufacturer_intermediates "
                "ORDER BY added_at, sha256"
            ).fetchall()
            return [
                ManufacturerCA(r["sha256"], r["name"], r["pem"], parse_ts(r["added_at"]))
                for r in rows
            ]

        return await self._read_here(body)
