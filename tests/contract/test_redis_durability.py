"""Redis as the system of record only when it is durable (fleet.store.redis_durability).

Real redis-servers: volatile (the default Redis), CONFIG disabled (a managed
Redis), and a primary with a replica for ``min_replicas`` + WAIT.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from fleet.config import parse_config
from fleet.kernel.errors import ConfigError, StoreUnavailable
from fleet.store import _redis_durable
from fleet.store.redis import RedisStore
from fleet.store.redis_durability import FEED_READER, RedisDurability, durability_problem
from tests.contract.test_store_contract import entry
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.needs_binary("redis-server")]


@pytest.fixture
def volatile(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "volatile", durable=False)
    server.start()
    yield server
    server.stop()


async def test_a_volatile_redis_is_refused_naming_the_settings(volatile: RedisServer) -> None:
    with pytest.raises(ConfigError) as caught:
        await RedisStore.open(volatile.url)
    told = caught.value.diagnostics()
    assert "appendonly no" in told
    for setting in ("appendonly yes", "appendfsync always", "min_replicas", "allow_volatile"):
        assert setting in told


async def test_allow_volatile_opens_it_with_a_loud_warning(
    volatile: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fleet.store.redis"):
        store = await RedisStore.open(volatile.url, durability=RedisDurability(allow_volatile=True))
    await store.close()
    assert any("allow_volatile" in r.getMessage() for r in caplog.records)


async def test_a_feed_reader_is_not_checked(volatile: RedisServer) -> None:
    store = await RedisStore.open(volatile.url, durability=FEED_READER)
    assert await store.feed_head() == 0
    await store.close()


async def test_a_durable_redis_is_accepted(redis_server: RedisServer) -> None:
    store = await RedisStore.open(redis_server.url, namespace="durability-ok")
    await store.close()


async def test_config_disabled_is_refused_saying_so(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "managed", extra_args=("--rename-command", "CONFIG", ""))
    server.start()
    try:
        with pytest.raises(ConfigError) as caught:
            await RedisStore.open(server.url)
        told = caught.value.diagnostics()
        assert "CONFIG GET" in told
        assert "min_replicas" in told
    finally:
        server.stop()


def _wait_for_replica(primary: RedisServer, within: float = 10) -> None:
    async def online() -> bool:
        async with Redis.from_url(primary.url, decode_responses=True) as client:
            info = await client.info("replication")
            replica = info.get("slave0")
            return isinstance(replica, dict) and replica.get("state") == "online"

    deadline = time.monotonic() + within
    while not asyncio.run(online()):
        assert time.monotonic() < deadline, "the replica never connected"
        time.sleep(0.05)


async def test_min_replicas_waits_for_the_replica_and_fails_a_write_it_lacks(
    tmp_path: Path, now: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_redis_durable, "WAIT_TIMEOUT_MS", 200)
    primary = RedisServer(tmp_path / "primary", durable=False)
    primary.start()
    replica: RedisServer | None = None
    try:
        wanted = RedisDurability(min_replicas=1)
        with pytest.raises(ConfigError, match="0 connected replica"):
            await RedisStore.open(primary.url, durability=wanted)
        replica = RedisServer(
            tmp_path / "replica",
            durable=False,
            extra_args=("--replicaof", "127.0.0.1", str(primary.port)),
        )
        replica.start()
        await asyncio.to_thread(_wait_for_replica, primary)
        store = await RedisStore.open(primary.url, durability=wanted)
        try:
            assert await store.import_manifest([entry("w1")], now) == 1
            async with Redis.from_url(replica.url, decode_responses=True) as on_replica:
                # Acknowledged means on the replica already: no polling needed.
                assert await on_replica.exists("{fleet}:device:w1") == 1
            replica.stop()
            with pytest.raises(StoreUnavailable, match="only 0 of 1"):
                await store.import_manifest([entry("w2")], now)
        finally:
            await store.close()
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()


def test_store_redis_settings_from_the_file_and_the_environment_form() -> None:
    def parse(store: dict[str, object]) -> RedisDurability:
        return parse_config({"store": store}, base_dir=Path("/nonexistent")).store_redis

    assert parse({}) == RedisDurability()
    assert parse({"redis": {"min_replicas": 2}}).min_replicas == 2
    assert parse({"redis_allow_volatile": True}).allow_volatile
    with pytest.raises(ConfigError, match="unknown"):
        parse({"redis": {"allow_volatil": True}})
    with pytest.raises(ConfigError, match="min_replicas"):
        parse({"redis": {"min_replicas": -1}})


def test_the_rule_itself() -> None:
    durable = {"appendonly": "yes", "appendfsync": "always"}
    assert durability_problem(durable, 0, RedisDurability()) is None
    assert durability_problem({**durable, "appendfsync": "everysec"}, 0, RedisDurability())
    assert durability_problem(None, 0, RedisDurability())
    assert durability_problem(None, 2, RedisDurability(min_replicas=2)) is None
    assert durability_problem(None, 1, RedisDurability(min_replicas=2))
    assert durability_problem({}, 0, RedisDurability(allow_volatile=True)) is None
