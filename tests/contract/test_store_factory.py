"""Picking a backend from a store URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.kernel.errors import ConfigError, StoreUnavailable
from fleet.store.factory import open_store
from fleet.store.postgres import PostgresStore, upgrade_schema
from fleet.store.redis import RedisStore
from fleet.store.sqlite import SqliteStore
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer, fresh_schema
from tests.support.redis_server import RedisServer


async def test_sqlite_absolute_url(tmp_path: Path) -> None:
    store = await open_store(f"sqlite://{tmp_path}/fleet.db")
    try:
        assert isinstance(store, SqliteStore)
    finally:
        await store.close()
    assert (tmp_path / "fleet.db").exists()


async def test_sqlite_relative_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    store = await open_store("sqlite:data/fleet.db")
    await store.close()
    assert (tmp_path / "data" / "fleet.db").exists()


@pytest.mark.needs_binary("redis-server")
async def test_redis_url(redis_server: RedisServer) -> None:
    store = await open_store(redis_server.url)
    try:
        assert isinstance(store, RedisStore)
    finally:
        await store.close()


@pytest.mark.parametrize(
    "url", ["mysql://db/fleet", "fleet.db", "sqlite:", "sqlite://host/fleet.db", ""]
)
async def test_unsupported_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        await open_store(url)
    assert "sqlite:///" in caught.value.diagnostics()


async def test_postgresql_url(postgres_server: PostgresServer) -> None:
    schema = fresh_schema()
    upgrade_schema(postgres_server.url, schema=schema)
    store = await open_store(f"{postgres_server.url}?options=-csearch_path%3D{schema}")
    try:
        assert isinstance(store, PostgresStore)
        assert await store.feed_head() == 0
    finally:
        await store.close()


async def test_unreachable_postgresql_is_store_unavailable_naming_the_server() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        await open_store(f"postgresql://fleet@127.0.0.1:{free_port()}/fleet")
    assert "127.0.0.1" in str(caught.value)
