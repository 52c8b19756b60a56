"""What only the PostgreSQL engine has: schema versions, LISTEN/NOTIFY catch-up, reconnects.

The store's behaviour itself is the shared contract suite (test_store_contract
runs on PostgreSQL too); these tests cover the engine under it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator

import psycopg
import pytest

from fleet.kernel.errors import ConfigError, StoreUnavailable
from fleet.records import (
    AuditEvent,
    AuditQuery,
    DeviceFilter,
    DeviceState,
    Manufacturer,
    RevocationEvent,
    RevocationKind,
    RevocationReason,
)
from fleet.store._codec import feed_event_to_json
from fleet.store._postgres_schema import MIGRATIONS, SCHEMA_VERSION, UPGRADE_COMMAND, VERSION_TABLE
from fleet.store.crl_numbers import StoredCrl
from fleet.store.postgres import FEED_POLL_SECONDS, PostgresStore, upgrade_schema
from tests.contract.test_store_contract import aclose, certificate, enrolled, entry, sha
from tests.support.postgres import PostgresServer, fresh_schema, postgres_server

__all__ = ["postgres_server"]


def raw(server: PostgresServer, schema: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(server.url, autocommit=True, options=f"-c search_path={schema}")


@pytest.fixture
async def store(postgres_server: PostgresServer) -> AsyncIterator[PostgresStore]:
    schema = fresh_schema()
    upgrade_schema(postgres_server.url, schema=schema)
    opened = await PostgresStore.open(postgres_server.url, schema=schema)
    try:
        yield opened
    finally:
        await opened.close()


async def test_an_unmigrated_database_is_refused_with_the_command_to_run(
    postgres_server: PostgresServer,
) -> None:
    schema = fresh_schema()
    with raw(postgres_server, "public") as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    with pytest.raises(StoreUnavailable) as caught:
        await PostgresStore.open(postgres_server.url, schema=schema)
    assert UPGRADE_COMMAND in caught.value.diagnostics()
    assert upgrade_schema(postgres_server.url, schema=schema) == (0, SCHEMA_VERSION)
    assert upgrade_schema(postgres_server.url, schema=schema) == (SCHEMA_VERSION, SCHEMA_VERSION)
    store = await PostgresStore.open(postgres_server.url, schema=schema)
    await store.close()


def released_schema(postgres_server: PostgresServer, version: int) -> str:
    """A fresh schema as `fleet db upgrade` left it at ``version`` (released migrations)."""
    schema = fresh_schema()
    with raw(postgres_server, "public") as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    with raw(postgres_server, schema) as conn:
        conn.execute(VERSION_TABLE)
        for number, statements in MIGRATIONS:
            if number <= version:
                conn.execute(statements)  # type: ignore[arg-type] # a released migration
        conn.execute("INSERT INTO fleet_schema (version) VALUES (%s)", (version,))
    return schema


async def test_a_version_2_database_upgrades_to_manufacturers_and_audit_indexes(
    postgres_server: PostgresServer, now: dt.datetime
) -> None:
    schema = released_schema(postgres_server, 2)
    with pytest.raises(StoreUnavailable, match="version 2"):
        await PostgresStore.open(postgres_server.url, schema=schema)
    assert upgrade_schema(postgres_server.url, schema=schema) == (2, SCHEMA_VERSION)
    store = await PostgresStore.open(postgres_server.url, schema=schema)
    try:
        await store.import_manifest([entry("d1")], now)
        acme = Manufacturer(sha("acme"), "Acme")
        await store.record_certificate(
            certificate(1, "d1", now), expected={DeviceState.REGISTERED}, now=now,
            bootstrap_sha256=sha("bootstrap:d1"), manufacturer=acme,
            audit=AuditEvent(now, "admin:a", "enroll", "done", "fine", device_id="d1"),
        )  # fmt: skip
        assert [
            d.device_id
            for d in await store.list_devices(DeviceFilter(manufacturer_sha256=acme.sha256))
        ] == ["d1"]
        page = await store.search_audit(AuditQuery(actor="admin:a"))
        assert [r.event.action for r in page.records] == ["enroll"]
    finally:
        await store.close()
    with raw(postgres_server, schema) as conn:  # the search's filters have their indexes
        names = {
            r[0]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,)
            )
        }
    assert {"audit_actor", "audit_action", "audit_outcome", "audit_reason"} <= names


async def test_a_version_3_database_upgrades_to_signed_crls(
    postgres_server: PostgresServer,
) -> None:
    schema = released_schema(postgres_server, 3)
    with pytest.raises(StoreUnavailable, match="version 3"):
        await PostgresStore.open(postgres_server.url, schema=schema)
    assert upgrade_schema(postgres_server.url, schema=schema) == (3, SCHEMA_VERSION)
    store = await PostgresStore.open(postgres_server.url, schema=schema)
    try:
        crl = StoredCrl(7, 2, b"\x30\x00\xff")
        assert await store.keep_signed_crl("ski:00", crl)
        assert await store.newest_signed_crl("ski:00") == crl
    finally:
        await store.close()


async def test_a_newer_schema_is_refused_by_open_and_by_upgrade(
    postgres_server: PostgresServer,
) -> None:
    schema = fresh_schema()
    upgrade_schema(postgres_server.url, schema=schema)
    with raw(postgres_server, schema) as conn:
        conn.execute("UPDATE fleet_schema SET version = %s", (SCHEMA_VERSION + 1,))
    for attempt in (
        lambda: PostgresStore.open(postgres_server.url, schema=schema),
        lambda: asyncio.to_thread(upgrade_schema, postgres_server.url, schema=schema),
    ):
        with pytest.raises(StoreUnavailable, match="newer"):
            await attempt()
    with raw(postgres_server, schema) as conn:  # upgrade left it untouched
        assert conn.execute("SELECT version FROM fleet_schema").fetchone() == (SCHEMA_VERSION + 1,)


async def test_synchronous_commit_off_is_refused(postgres_server: PostgresServer) -> None:
    schema = fresh_schema()
    upgrade_schema(postgres_server.url, schema=schema)
    options = f"-csearch_path%3D{schema}%20-csynchronous_commit%3Doff"
    with pytest.raises(ConfigError) as caught:
        await PostgresStore.open(f"{postgres_server.url}?options={options}")
    assert "synchronous_commit = on" in caught.value.diagnostics()


async def next_event(feed: AsyncIterator[RevocationEvent], within: float) -> RevocationEvent:
    return await asyncio.wait_for(anext(feed), within)


async def test_a_follower_wakes_on_notify_well_before_its_poll(
    store: PostgresStore, now: dt.datetime
) -> None:
    await enrolled(store, "d1", 0x51, now)
    feed = store.follow_feed(0)
    try:
        pending = asyncio.ensure_future(anext(feed))
        await asyncio.sleep(0.2)  # the follower is waiting on LISTEN
        start = asyncio.get_running_loop().time()
        await store.revoke_device("d1", RevocationReason.KEY_COMPROMISE, now)
        event = await asyncio.wait_for(pending, FEED_POLL_SECONDS * 5)
        woke = asyncio.get_running_loop().time() - start
        assert (event.device_id, event.serials) == ("d1", (0x51,))
        assert woke < FEED_POLL_SECONDS / 2, f"woke after {woke:.3f}s: by polling, not NOTIFY"
    finally:
        await aclose(feed)


async def test_a_follower_that_missed_notifications_catches_up_from_the_sequence(
    store: PostgresStore, postgres_server: PostgresServer, now: dt.datetime
) -> None:
    """Events appended without a NOTIFY (one lost with a connection) and a LISTEN
    connection killed under the follower: every event still arrives, in order, once."""
    feed = store.follow_feed(0)
    try:
        pending = asyncio.ensure_future(anext(feed))
        await asyncio.sleep(0.2)
        silent = RevocationEvent(
            seq=1,
            kind=RevocationKind.CERTIFICATE,
            device_id="d0",
            serials=(0x50,),
            reason=RevocationReason.UNSPECIFIED,
            at=now,
        )
        with raw(postgres_server, store._schema) as conn:
            conn.execute(
                "INSERT INTO revocation_feed (seq, event) VALUES (1, %s)",
                (feed_event_to_json(silent),),
            )
        assert (await asyncio.wait_for(pending, FEED_POLL_SECONDS * 5)).seq == 1
        # Kill the follower's LISTEN connection: it reconnects and reads on from seq 1.
        with raw(postgres_server, store._schema) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query ILIKE 'LISTEN%%' AND pid <> pg_backend_pid()"
            )
        await enrolled(store, "d2", 0x52, now)
        await store.revoke_device("d2", RevocationReason.KEY_COMPROMISE, now)
        event = await next_event(feed, FEED_POLL_SECONDS * 5)
        assert (event.seq, event.device_id) == (2, "d2")
    finally:
        await aclose(feed)


async def test_connections_killed_under_the_store_are_replaced_without_a_restart(
    store: PostgresStore, postgres_server: PostgresServer, now: dt.datetime
) -> None:
    await enrolled(store, "d1", 0x61, now)
    with raw(postgres_server, store._schema) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = 'fleet' AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        ).fetchone()
    assert killed is not None
    assert int(str(killed[0])) >= 1
    # The pool checks a connection before lending it: no error, no restart.
    assert (await store.get_device("d1")).device_id == "d1"
    await store.revoke_device("d1", RevocationReason.KEY_COMPROMISE, now)
    assert await store.feed_head() == 1


async def test_a_stopped_server_is_store_unavailable_then_served_again_when_back() -> None:
    server = PostgresServer()
    try:
        server.start()
        upgrade_schema(server.url)
        store = await PostgresStore.open(server.url)
        try:
            assert await store.feed_head() == 0
            server.stop(mode="immediate")  # a crash: no clean shutdown
            with pytest.raises(StoreUnavailable) as caught:
                await store.feed_head()
            assert "fleet reconnects by itself" in caught.value.diagnostics()
            server.start()  # same port, same data
            # Served again without reopening the store (the pool reconnects with
            # backoff; each call meanwhile is a clear StoreUnavailable).
            started = time.monotonic()
            while True:
                try:
                    assert await store.feed_head() == 0
                    break
                except StoreUnavailable:
                    assert time.monotonic() - started < 30, "never reconnected"
                    await asyncio.sleep(0.2)
            print(f"reconnected {time.monotonic() - started:.1f}s after the restart")
        finally:
            await store.close()
    finally:
        server.stop()
        server.remove()
