"""Fleet-wide device queries as SQL, written once for both SQL backends.

Listing devices by filter and the counts the console and bulk actions show
(by state, expiring, blast radius): reads only, each one statement the
engine runs in one snapshot (fleet.store._sql_records has the writes).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fleet.records import CertificateStatus, Device, DeviceFilter, DeviceState
from fleet.store._codec import device_record, ts
from fleet.store._sql import SqlConnection
from fleet.store._sql_directory import SqlDirectory

_GOOD = CertificateStatus.GOOD.value
# The newest good certificate of the device in the enclosing query: latest
# issued_at, then the highest serial (length first: hex serials as numbers).
_NEWEST_GOOD_NOT_AFTER = (
    "(SELECT c.not_after FROM certificates c "
    "WHERE c.device_id = devices.device_id AND c.status = ? "
    "ORDER BY c.issued_at DESC, length(c.serial) DESC, c.serial DESC LIMIT 1)"
)


def _device_where(device_filter: DeviceFilter, after: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause (fixed strings only; every value a parameter) of a device filter."""
    clauses = ["device_id > ?"]
    params: list[Any] = ["" if after is None else after]
    if device_filter.state is not None:
        clauses.append("state = ?")
        params.append(device_filter.state.value)
    if device_filter.batch is not None:
        clauses.append("batch = ?")
        params.append(device_filter.batch)
    if device_filter.model is not None:
        clauses.append("model = ?")
        params.append(device_filter.model)
    if device_filter.manufacturer_sha256 is not None:
        clauses.append("manufacturer_sha256 = ?")
        params.append(device_filter.manufacturer_sha256)
    if device_filter.issued_before is not None:
        clauses.append(
            "EXISTS (SELECT 1 FROM certificates c WHERE c.device_id = devices.device_id "
            "AND c.status = ? AND c.issued_at < ?)"
        )
        params += [_GOOD, ts(device_filter.issued_before)]
    if device_filter.expiring_before is not None:
        # NULL (no good certificate) < ? is NULL: such devices do not match.
        clauses.append(f"{_NEWEST_GOOD_NOT_AFTER} < ?")
        params += [_GOOD, ts(device_filter.expiring_before)]
    return " AND ".join(clauses), params


class SqlDeviceQueries(SqlDirectory):
    """Device listing and counts; the engine comes from the subclass."""

    async def list_devices(
        self, device_filter: DeviceFilter, *, after: str | None = None, limit: int = 100
    ) -> list[Device]:
        where, params = _device_where(device_filter, after)
        params.append(limit)
        # Only fixed clause strings are joined in; every value is a parameter.
        sql = f"SELECT * FROM devices WHERE {where} ORDER BY device_id LIMIT ?"  # noqa: S608
        return await self._read(lambda conn: [device_record(r) for r in conn.execute(sql, params)])

    async def count_devices_by_state(self) -> dict[DeviceState, int]:
        def body(conn: SqlConnection) -> dict[DeviceState, int]:
            rows = conn.execute("SELECT state, COUNT(*) FROM devices GROUP BY state")
            counts = dict.fromkeys(DeviceState, 0)
            counts.update({DeviceState(state): int(n) for state, n in rows})
            return counts

        return await self._read(body)

    async def count_expiring_devices(self, before: dt.datetime) -> int:
        devices, _ = await self.count_blast_radius(DeviceFilter(expiring_before=before))
        return devices

    async def count_blast_radius(self, device_filter: DeviceFilter) -> tuple[int, int]:
        where, params = _device_where(device_filter, None)
        # Only fixed clause strings are joined in; every value is a parameter.
        sql = (
            "SELECT COUNT(*), COALESCE(SUM((SELECT COUNT(*) FROM certificates c "  # noqa: S608
            "WHERE c.device_id = devices.device_id AND c.status = ?)), 0) "
            f"FROM devices WHERE {where}"
        )

        def body(conn: SqlConnection) -> tuple[int, int]:
            devices, certificates = conn.execute(sql, [_GOOD, *params]).fetchone()
            return int(devices), int(certificates)

        return await self._read(body)
