"""Backend failures: they surface as StoreUnavailable and never leave half a change."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

import fleet.store._sqlite_engine as sqlite_engine
import fleet.store._sqlite_schema as sqlite_schema
from fleet.kernel.errors import StoreUnavailable
from fleet.records import AuditEvent, AuditRecord, DeviceFilter, DeviceState, RevocationReason
from fleet.store.audit_chain import verify_chain
from fleet.store.redis import RedisStore
from fleet.store.sqlite import SqliteStore
from tests.contract.test_store_contract import (
    aclose,
    audit_event,
    certificate,
    enrolled,
    entry,
    sha,
)
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]


# -- Redis ---------------------------------------------------------------------------
async def test_redis_with_nothing_listening_is_unavailable() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        await RedisStore.open(f"redis://127.0.0.1:{free_port()}/0")
    assert isinstance(caught.value.__cause__, RedisConnectionError)


@pytest.mark.needs_binary("redis-server")
async def test_redis_stopped_mid_test_is_unavailable_then_recovers(
    tmp_path: Path, now: dt.datetime
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        store = await RedisStore.open(server.url)
        try:
            await store.import_manifest([entry("d1")], now)
            server.stop()
            with pytest.raises(StoreUnavailable):
                await store.get_device("d1")
            with pytest.raises(StoreUnavailable):
                await store.record_certificate(
                    certificate(1, "d1", now), expected={DeviceState.REGISTERED}, now=now
                )
            server.start(port=server.port)
            # The same store works again, and the acknowledged write survived
            # (appendfsync always: fleet refuses a Redis without it).
            assert (await store.get_device("d1")).device_id == "d1"
            assert await store.import_manifest([entry("d1")], now) == 0
        finally:
            await store.close()
    finally:
        server.stop()


@pytest.mark.needs_binary("redis-server")
async def test_redis_follow_feed_resyncs_after_dropped_subscription(
    redis_server: RedisServer, now: dt.datetime
) -> None:
    namespace = "follow-drop"
    store = await RedisStore.open(redis_server.url, namespace=namespace)
    writer = await RedisStore.open(redis_server.url, namespace=namespace)
    raw = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        for n in range(1, 5):
            await enrolled(store, f"d{n}", n, now)
        async with asyncio.timeout(15):
            follower = store.follow_feed(0)
            await writer.revoke_certificate(1, RevocationReason.UNSPECIFIED, now)
            assert (await anext(follower)).seq == 1
            # Cut the subscriber off, then publish while it is away.
            await raw.client_kill_filter(_type="pubsub")
            for serial in (2, 3, 4):
                await writer.revoke_certificate(serial, RevocationReason.UNSPECIFIED, now)
            assert [(await anext(follower)).seq for _ in range(3)] == [2, 3, 4]
            await aclose(follower)
    finally:
        await raw.aclose()
        await writer.close()
        await store.close()


@pytest.mark.needs_binary("redis-server")
async def test_redis_follow_feed_waits_out_a_restart(tmp_path: Path, now: dt.datetime) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        store = await RedisStore.open(server.url)
        try:
            async with asyncio.timeout(20):
                follower = store.follow_feed(0)
                pending = asyncio.ensure_future(anext(follower))
                await asyncio.sleep(0.2)
                server.stop()
                await asyncio.sleep(0.5)  # the follower retries with backoff, raising nothing
                assert not pending.done()
                server.start(port=server.port)
                await enrolled(store, "d1", 1, now)
                await store.revoke_certificate(1, RevocationReason.UNSPECIFIED, now)
                assert (await pending).seq == 1
                await aclose(follower)
        finally:
            await store.close()
    finally:
        server.stop()


@pytest.mark.needs_binary("redis-server")
@pytest.mark.parametrize("change", ["record_certificate", "revoke_device"])
async def test_redis_audited_change_retries_when_the_audit_head_moved(
    redis_server: RedisServer, now: dt.datetime, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Another writer appends between our read of the audit head and our script:
    the script writes nothing, and the retry makes the change with its record
    chained after the other one (had the first attempt written the change, the
    retry would find it done and the record would be missing)."""
    namespace = f"audit-moved-{change}"
    store = await RedisStore.open(redis_server.url, namespace=namespace)
    other = await RedisStore.open(redis_server.url, namespace=namespace)
    try:
        await store.import_manifest([entry("d1")], now)
        if change == "revoke_device":
            await store.record_certificate(
                certificate(1, "d1", now), expected={DeviceState.REGISTERED}, now=now
            )
        real = store._next_audit_record
        reads = 0

        async def raced(event: AuditEvent) -> AuditRecord:
            nonlocal reads
            reads += 1
            record = await real(event)
            if reads == 1:
                await other.append_audit(audit_event(now, 1))
            return record

        monkeypatch.setattr(store, "_next_audit_record", raced)
        mine = audit_event(now, 2, "d1")
        if change == "record_certificate":
            device = await store.record_certificate(
                certificate(1, "d1", now),
                expected={DeviceState.REGISTERED},
                now=now,
                bootstrap_sha256=sha("bootstrap:d1"),
                audit=mine,
            )
            assert device.state is DeviceState.ACTIVE
        else:
            event = await store.revoke_device("d1", RevocationReason.UNSPECIFIED, now, audit=mine)
            assert event is not None
            assert (event.seq, event.serials) == (1, (1,))
        assert reads == 2
        records = await store.audit_records()
        assert verify_chain(records) == []
        assert [(r.seq, r.event.reason) for r in records] == [(1, "reason-1"), (2, "reason-2")]
        assert [r.seq for r in await store.audit_records(device_id="d1")] == [2]
    finally:
        await other.close()
        await store.close()


# -- SQLite --------------------------------------------------------------------------
async def test_sqlite_garbage_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    path.write_bytes(os.urandom(16384))
    with pytest.raises(StoreUnavailable) as caught:
        await SqliteStore.open(path)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


async def test_sqlite_corrupted_pages_are_unavailable(tmp_path: Path, now: dt.datetime) -> None:
    path = tmp_path / "fleet.db"
    store = await SqliteStore.open(path)
    await store.import_manifest([entry(f"device-{n:05d}") for n in range(2000)], now)
    await store.close()
    size = path.stat().st_size
    with path.open("r+b") as db:
        db.seek(4096)  # keep page 1 (header and schema); garble every table page
        db.write(os.urandom(size - 4096))

    async def open_and_read() -> None:
        damaged = await SqliteStore.open(path)
        try:
            await damaged.list_devices(DeviceFilter(), limit=5000)
        finally:
            await damaged.close()

    with pytest.raises(StoreUnavailable) as caught:
        await open_and_read()
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


async def test_sqlite_version_1_file_upgrades_in_place(tmp_path: Path, now: dt.datetime) -> None:
    path = tmp_path / "fleet.db"
    store = await SqliteStore.open(path)
    await store.import_manifest([entry("d1")], now)
    await store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TABLE admin_credentials")
        conn.execute("DROP TABLE cursors")
        conn.execute("UPDATE schema_version SET version = 1")
    finally:
        conn.close()

    store = await SqliteStore.open(path)
    try:
        assert (await store.get_device("d1")).state is DeviceState.REGISTERED
        await store.set_cursor("c", 5)
        assert await store.get_cursor("c") == 5
        assert await store.list_admin_credentials() == []
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [
            (sqlite_schema.SCHEMA_VERSION,)
        ]
    finally:
        conn.close()


async def test_sqlite_locked_beyond_timeout_is_unavailable_and_rolled_back(
    tmp_path: Path, now: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_engine, "BUSY_TIMEOUT_MS", 100)
    path = tmp_path / "fleet.db"
    store = await SqliteStore.open(path)
    try:
        await store.import_manifest([entry("d1")], now)
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.record_certificate(
                    certificate(1, "d1", now), expected={DeviceState.REGISTERED}, now=now
                )
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        assert await store.list_certificates("d1") == []
        assert (await store.get_device("d1")).state is DeviceState.REGISTERED
    finally:
        await store.close()


_CRASH_CHILD = """
import asyncio, datetime as dt, sys
from pathlib import Path
from fleet.records import CertificateRecord, DeviceState, ManifestEntry
from fleet.store.sqlite import SqliteStore

async def main() -> None:
    store = await SqliteStore.open(Path(sys.argv[1]))
    now = dt.datetime.now(dt.UTC)
    n = 0
    while True:
        n += 1
        device_id = f"d{n}"
        await store.import_manifest([ManifestEntry(device_id, "ab" * 32)], now)
        cert = CertificateRecord(n, device_id, now, now + dt.timedelta(days=30), now, "pem")
        await store.record_certificate(cert, expected={DeviceState.REGISTERED}, now=now)
        print(n, flush=True)

asyncio.run(main())
"""


async def test_sqlite_survives_sigkill_mid_write(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CRASH_CHILD,
        str(path),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(30):
            for _ in range(40):
                line = await child.stdout.readline()
                assert line, (await child.stderr.read()).decode() if child.stderr else "child died"
    finally:
        if child.returncode is None:
            child.kill()  # SIGKILL to our own child, by its PID, in the middle of its loop
        await child.communicate()
    assert child.returncode == -signal.SIGKILL

    store = await SqliteStore.open(path)
    try:
        devices = await store.list_devices(DeviceFilter(), limit=100_000)
        certified = 0
        for device in devices:
            certs = await store.list_certificates(device.device_id)
            # record_certificate is atomic: a certificate exists iff the device is active.
            assert (device.state is DeviceState.ACTIVE) == bool(certs), device
            certified += bool(certs)
        assert certified >= 40
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        orphans = conn.execute(
            "SELECT COUNT(*) FROM certificates c JOIN devices d USING (device_id) "
            "WHERE d.state != 'active'"
        ).fetchone()
        assert orphans == (0,)
    finally:
        conn.close()
