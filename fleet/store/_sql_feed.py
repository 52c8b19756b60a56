"""The SQL stores' revocation feed, as the brokers read it: its head, the events
after a sequence, and one consistent snapshot of everything revoked.

The events are appended by the transactions that revoke (fleet.store._sql_records,
through fleet.store._sql_rows); this role only reads. Following the feed live is
the engine's own (fleet.store.sqlite, fleet.store.postgres). The Redis store's
counterpart is fleet.store._redis_feed.
"""

from __future__ import annotations

from fleet.records import CertificateStatus, DeviceState, RevocationEvent, RevocationSnapshot
from fleet.store._codec import feed_event_from_json, serial_int, stored_record
from fleet.store._sql import SqlConnection
from fleet.store._sql_device_queries import SqlDeviceQueries


class SqlRevocationFeed(SqlDeviceQueries):
    """The feed's reads (feed_head, feed_since, revocation_snapshot)."""

    async def feed_head(self) -> int:
        def body(conn: SqlConnection) -> int:
            (head,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM revocation_feed").fetchone()
            return int(head)

        return await self._read_here(body)

    async def feed_since(self, seq: int, *, limit: int = 1000) -> list[RevocationEvent]:
        def body(conn: SqlConnection) -> list[RevocationEvent]:
            rows = conn.execute(
                "SELECT seq, event FROM revocation_feed WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            )
            return [feed_event_from_json(r["event"], seq=int(r["seq"])) for r in rows]

        return await self._read_here(body)

    async def revocation_snapshot(self) -> RevocationSnapshot:
        def body(conn: SqlConnection) -> RevocationSnapshot:
            (head,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM revocation_feed").fetchone()
            serials = conn.execute(
                "SELECT serial FROM certificates WHERE status = ?",
                (CertificateStatus.REVOKED.value,),
            )
            devices = conn.execute(
                "SELECT device_id FROM devices WHERE state = ?", (DeviceState.REVOKED.value,)
            )
            with stored_record("set of revoked serials"):
                return RevocationSnapshot(
                    seq=int(head),
                    serials=frozenset(serial_int(r[0]) for r in serials),
                    device_ids=frozenset(r[0] for r in devices),
                )

        return await self._read(body)
