"""Two fleet processes on one PostgreSQL database, racing: overlapping bulk
revocations, and approve against reject of the same pending devices. Each device
is revoked once (one feed event, one audit record), the feed sequence has no
hole or repeat, each pending device is decided exactly once, and the audit
chain verifies."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from fleet.authority.audit import verify_audit_log
from fleet.records import Device, DeviceFilter, DeviceState, ManifestEntry
from fleet.store.postgres import PostgresStore, upgrade_schema
from tests.support.fleet_server import make_data_dir
from tests.support.postgres import PostgresServer, postgres_server

__all__ = ["postgres_server"]

pytestmark = pytest.mark.needs_binary("postgres")
DEVICES = 120
PENDING = 4


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:
    """A database of its own (the CLI's store.url names one, not a schema)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = postgres_server.url.rsplit("/", 1)[0] + f"/{name}"
    upgrade_schema(url)
    yield url
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


async def _with_store(url: str, fn: object) -> object:
    store = await PostgresStore.open(url)
    try:
        return await fn(store)  # type: ignore[operator]
    finally:
        await store.close()


def _run(url: str, fn: object) -> object:
    return asyncio.run(_with_store(url, fn))


async def _fleet(store: PostgresStore) -> None:
    now = dt.datetime.now(dt.UTC)
    await store.import_manifest(
        [
            ManifestEntry(f"d{i:03d}", f"{i:064x}", batch=f"b{i % 2}", model=f"m{i % 3}")
            for i in range(DEVICES)
        ],
        now,
    )
    for i in range(PENDING):
        await store.add_pending_device(
            Device(device_id=f"p{i}", state=DeviceState.PENDING, created_at=now, updated_at=now)
        )


def test_two_processes_racing_on_one_database(tmp_path: Path, database: str) -> None:
    config = make_data_dir(tmp_path / "data")
    _run(database, _fleet)
    env = {**os.environ, "FLEET_CONFIG": str(config), "FLEET_STORE_URL": database}

    def fleet(*words: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "fleet", *words], env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

    revoke = ("device", "revoke", "--reason", "keyCompromise", "--confirm")
    racing = [fleet(*revoke, "--batch", "b0"), fleet(*revoke, "--model", "m0")]
    for i in range(PENDING):
        racing += [fleet("device", "approve", f"p{i}"), fleet("device", "reject", f"p{i}")]
    results = [(p.args, *p.communicate(timeout=120), p.returncode) for p in racing]
    for args, _out, err, code in results[:2]:
        assert code == 0, (args, err)
    decided = [code for _args, _out, _err, code in results[2:]]
    assert decided.count(0) == PENDING, results[2:]  # one of each pair won, the other refused

    async def check(store: PostgresStore) -> None:
        _, problems = await verify_audit_log(store)
        assert problems == []
        revoked = sorted(
            d.device_id
            for d in await store.list_devices(DeviceFilter(state=DeviceState.REVOKED), limit=999)
        )
        wanted = sorted(f"d{i:03d}" for i in range(DEVICES) if i % 2 == 0 or i % 3 == 0)
        assert revoked == wanted
        events = await store.feed_since(0, limit=9999)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert sorted(e.device_id for e in events) == wanted  # one event per device
        records = await store.audit_records(limit=9999)
        audited = sorted(r.event.device_id or "" for r in records if r.event.action == "revoke")
        assert audited == wanted
        for i in range(PENDING):
            device = await store.get_device(f"p{i}")
            assert device.state in (DeviceState.REGISTERED, DeviceState.REJECTED)
            decisions = [r for r in records if r.event.device_id == f"p{i}"]
            assert [r.event.action for r in decisions] in (["approve"], ["reject"])

    _run(database, check)
