"""Fixtures of the store contract suite: every test runs against both backends.

A :class:`Backend` opens store instances on one shared data set (a second
instance is a second connection: another SqliteStore on the same file, another
RedisStore on the same server and namespace) and reaches under the store with
the backend's own client to tamper with or sabotage data.
"""

from __future__ import annotations

import abc
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from redis.asyncio import Redis

from fleet.records import AuditRecord
from fleet.store.audit_chain import event_to_json
from fleet.store.postgres import PostgresStore, upgrade_schema
from fleet.store.protocol import Store
from fleet.store.redis import RedisStore
from fleet.store.sqlite import SqliteStore
from tests.support.postgres import PostgresServer, fresh_schema, postgres_server
from tests.support.redis_server import RedisServer, redis_server

__all__ = ["Backend", "postgres_server", "redis_server"]


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    async def open(self) -> Store:
        """A new store instance (own connection) on this test's data."""

    @abc.abstractmethod
    async def edit_audit(self, seq: int, reason: str) -> None:
        """Change the reason of audit record ``seq`` in place, hashes untouched."""

    @abc.abstractmethod
    async def delete_audit(self, seq: int) -> None: ...

    @abc.abstractmethod
    async def replace_audit_event(self, seq: int, event: object) -> None:
        """Store ``event`` (any JSON value) as audit record ``seq``'s event, hashes untouched."""

    @abc.abstractmethod
    async def insert_audit(self, record: AuditRecord) -> None:
        """Renumber records from ``record.seq`` up by one and put ``record`` in the gap."""

    @abc.abstractmethod
    async def sabotage_device_write(self, device_id: str) -> None:
        """Make the backend fail when it writes ``device_id``."""

    @abc.abstractmethod
    async def revoke_unreadably(self, device_id: str, event_text: str) -> None:
        """Revoke ``device_id`` as an older version or a hand edit might have: the
        device is revoked, and the next feed event is ``event_text`` verbatim."""

    @abc.abstractmethod
    async def edit_device(self, device_id: str, field: str, value: str) -> None:
        """Set one stored field of a device by hand (no checks)."""

    @abc.abstractmethod
    async def edit_admin_role(self, sha256: str, role: str) -> None:
        """Set an admin credential's stored role by hand (no checks)."""

    @abc.abstractmethod
    async def add_unreadable_revoked_serial(self, device_id: str) -> None:
        """A revoked certificate of ``device_id`` whose stored serial is not hex."""


class SqlBackend(Backend):
    """A SQL backend: the audit table is tampered with by the same statements in
    SQLite and PostgreSQL (``?`` placeholders; PostgreSQL's ``_raw`` rewrites them)."""

    @abc.abstractmethod
    def _raw(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        """Run ``statements`` in one transaction with the backend's own client."""

    @abc.abstractmethod
    async def sabotage_audit(self, action: str | None) -> None:
        """Make every append of an audit record of ``action`` fail (None: stop that)."""

    async def delete_audit(self, seq: int) -> None:
        self._raw(("DELETE FROM audit WHERE seq = ?", (seq,)))

    async def replace_audit_event(self, seq: int, event: object) -> None:
        self._raw(("UPDATE audit SET event = ? WHERE seq = ?", (json.dumps(event), seq)))

    async def edit_device(self, device_id: str, field: str, value: str) -> None:
        if field not in ("state", "created_at"):  # column names are not parameters
            raise ValueError(f"not an editable column: {field!r}")
        statement = f"UPDATE devices SET {field} = ? WHERE device_id = ?"  # noqa: S608
        self._raw((statement, (value, device_id)))

    async def edit_admin_role(self, sha256: str, role: str) -> None:
        self._raw(("UPDATE admin_credentials SET role = ? WHERE sha256 = ?", (role, sha256)))

    async def revoke_unreadably(self, device_id: str, event_text: str) -> None:
        self._raw(
            ("UPDATE devices SET state = 'revoked' WHERE device_id = ?", (device_id,)),
            (
                "INSERT INTO revocation_feed (seq, event) "
                "SELECT COALESCE(MAX(seq), 0) + 1, ? FROM revocation_feed",
                (event_text,),
            ),
        )

    async def add_unreadable_revoked_serial(self, device_id: str) -> None:
        at = "2026-01-01T00:00:00.000000Z"
        self._raw(
            (
                "INSERT INTO certificates (serial, device_id, not_before, not_after, issued_at, "
                "pem, status, revoked_at, revocation_reason) "
                "VALUES ('not-hex', ?, ?, ?, ?, '', 'revoked', ?, 'unspecified')",
                (device_id, at, at, at, at),
            )
        )

    async def insert_audit(self, record: AuditRecord) -> None:
        # Renumber in two steps so no intermediate row collides with the primary key.
        self._raw(
            ("UPDATE audit SET seq = seq + 1000000 WHERE seq >= ?", (record.seq,)),
            ("UPDATE audit SET seq = seq - 999999 WHERE seq >= 1000000", ()),
            (
                "INSERT INTO audit (seq, event, prev_sha256, sha256) VALUES (?, ?, ?, ?)",
                (
                    record.seq,
                    json.dumps(event_to_json(record.event)),
                    record.prev_sha256,
                    record.sha256,
                ),
            ),
        )


class SqliteBackend(SqlBackend):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def open(self) -> Store:
        return await SqliteStore.open(self.path)

    def _raw(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for sql, params in statements:
                conn.execute(sql, params)
            conn.execute("COMMIT")
        finally:
            conn.close()

    async def edit_audit(self, seq: int, reason: str) -> None:
        self._raw(
            ("UPDATE audit SET event = json_set(event, '$.reason', ?) WHERE seq = ?", (reason, seq))
        )

    async def sabotage_audit(self, action: str | None) -> None:
        self._raw(("DROP TRIGGER IF EXISTS sabotage_audit", ()))
        if action is not None:
            # The action is a test constant (no quotes in it).
            trigger = (
                "CREATE TRIGGER sabotage_audit BEFORE INSERT ON audit "
                f"WHEN json_extract(NEW.event, '$.action') = '{action}' "
                "BEGIN SELECT RAISE(ABORT, 'audit sabotaged by the test'); END"
            )
            self._raw((trigger, ()))

    async def sabotage_device_write(self, device_id: str) -> None:
        trigger = (
            f"CREATE TRIGGER sabotage BEFORE INSERT ON devices WHEN NEW.device_id = '{device_id}' "
            "BEGIN SELECT RAISE(ABORT, 'sabotaged by the test'); END"
        )
        self._raw((trigger, ()))


class RedisBackend(Backend):
    name = "redis"

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.namespace = f"t-{uuid.uuid4().hex[:12]}"
        self.tag = "{" + self.namespace + "}"

    async def open(self) -> Store:
        return await RedisStore.open(self.server.url, namespace=self.namespace)

    def raw(self) -> Redis:
        return Redis.from_url(self.server.url, decode_responses=True)

    async def _records(self, client: Redis) -> list[tuple[int, dict[str, object]]]:
        members = await client.zrange(f"{self.tag}:audit", 0, -1)
        records = [json.loads(str(m)) for m in members]
        return [(int(r["seq"]), r) for r in records]

    async def edit_audit(self, seq: int, reason: str) -> None:
        async with self.raw() as client:
            key = f"{self.tag}:audit"
            (member,) = await client.zrange(key, seq, seq, byscore=True)
            data = json.loads(str(member))
            data["event"]["reason"] = reason
            await client.zremrangebyscore(key, seq, seq)
            await client.zadd(key, {json.dumps(data, sort_keys=True): seq})

    async def delete_audit(self, seq: int) -> None:
        async with self.raw() as client:
            await client.zremrangebyscore(f"{self.tag}:audit", seq, seq)

    async def replace_audit_event(self, seq: int, event: object) -> None:
        async with self.raw() as client:
            key = f"{self.tag}:audit"
            (member,) = await client.zrange(key, seq, seq, byscore=True)
            data = json.loads(str(member))
            data["event"] = event
            await client.zremrangebyscore(key, seq, seq)
            await client.zadd(key, {json.dumps(data, sort_keys=True): seq})

    async def edit_device(self, device_id: str, field: str, value: str) -> None:
        async with self.raw() as client:
            await client.hset(f"{self.tag}:device:{device_id}", field, value)

    async def edit_admin_role(self, sha256: str, role: str) -> None:
        async with self.raw() as client:
            key = f"{self.tag}:admins"
            data = json.loads(str(await client.hget(key, sha256)))
            data["role"] = role
            await client.hset(key, sha256, json.dumps(data))

    async def revoke_unreadably(self, device_id: str, event_text: str) -> None:
        async with self.raw() as client, client.pipeline(transaction=True) as pipe:
            pipe.hset(f"{self.tag}:device:{device_id}", "state", "revoked")
            pipe.sadd(f"{self.tag}:revoked-devices", device_id)
            pipe.incr(f"{self.tag}:feed:seq")
            pipe.rpush(f"{self.tag}:feed", event_text)
            await pipe.execute()

    async def add_unreadable_revoked_serial(self, device_id: str) -> None:
        async with self.raw() as client:
            await client.sadd(f"{self.tag}:revoked", "not-hex")

    async def insert_audit(self, record: AuditRecord) -> None:
        key = f"{self.tag}:audit"
        async with self.raw() as client:
            for old_seq, data in reversed(await self._records(client)):
                if old_seq >= record.seq:
                    await client.zremrangebyscore(key, old_seq, old_seq)
                    data["seq"] = old_seq + 1
                    await client.zadd(key, {json.dumps(data, sort_keys=True): old_seq + 1})
            forged = {
                "seq": record.seq,
                "event": event_to_json(record.event),
                "prev_sha256": record.prev_sha256,
                "sha256": record.sha256,
            }
            await client.zadd(key, {json.dumps(forged, sort_keys=True): record.seq})

    async def sabotage_device_write(self, device_id: str) -> None:
        # A key of the wrong type where the device hash goes makes HSET fail.
        async with self.raw() as client:
            await client.set(f"{self.tag}:device:{device_id}", "not a hash")


class PostgresBackend(SqlBackend):
    """One schema of the session's PostgreSQL per test, migrated as `fleet db upgrade` does."""

    name = "postgres"

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.schema = fresh_schema()
        upgrade_schema(server.url, schema=self.schema)

    async def open(self) -> Store:
        return await PostgresStore.open(self.server.url, schema=self.schema)

    def _raw(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        with psycopg.connect(self.server.url, options=f"-c search_path={self.schema}") as conn:
            for statement, params in statements:
                conn.execute(statement.replace("?", "%s"), params)

    async def edit_audit(self, seq: int, reason: str) -> None:
        with psycopg.connect(self.server.url, options=f"-c search_path={self.schema}") as conn:
            row = conn.execute("SELECT event FROM audit WHERE seq = %s", (seq,)).fetchone()
            assert row is not None
            event = json.loads(row[0])
            event["reason"] = reason
            conn.execute(
                "UPDATE audit SET event = %s WHERE seq = %s",
                (json.dumps(event, sort_keys=True), seq),
            )

    async def sabotage_audit(self, action: str | None) -> None:
        self._raw(("DROP TRIGGER IF EXISTS sabotage_audit ON audit", ()))
        if action is not None:
            self._raw(
                (
                    "CREATE OR REPLACE FUNCTION sabotage_audit() RETURNS trigger "
                    "LANGUAGE plpgsql AS $$ BEGIN "
                    f"IF (NEW.event::jsonb ->> 'action') = '{action}' THEN "
                    "RAISE EXCEPTION 'audit sabotaged by the test'; END IF; RETURN NEW; END $$",
                    (),
                ),
                (
                    "CREATE TRIGGER sabotage_audit BEFORE INSERT ON audit "
                    "FOR EACH ROW EXECUTE FUNCTION sabotage_audit()",
                    (),
                ),
            )

    async def sabotage_device_write(self, device_id: str) -> None:
        self._raw(
            (
                "CREATE FUNCTION sabotage() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.device_id = '{device_id}' THEN "
                "RAISE EXCEPTION 'sabotaged by the test'; END IF; RETURN NEW; END $$",
                (),
            ),
            (
                "CREATE TRIGGER sabotage BEFORE INSERT ON devices "
                "FOR EACH ROW EXECUTE FUNCTION sabotage()",
                (),
            ),
        )


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("redis", marks=pytest.mark.needs_binary("redis-server")),
        "postgres",
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield SqliteBackend(tmp_path / "fleet.db")
    elif request.param == "redis":
        yield RedisBackend(request.getfixturevalue("redis_server"))
    else:
        yield PostgresBackend(request.getfixturevalue("postgres_server"))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    opened = await backend.open()
    try:
        yield opened
    finally:
        await opened.close()
