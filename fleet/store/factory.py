"""Wiring: pick a Store backend from a URL (only wiring code imports backends)."""

from __future__ import annotations

from pathlib import Path

from fleet.kernel.errors import ConfigError
from fleet.store.protocol import Store
from fleet.store.redis_durability import RedisDurability

ACCEPTED_FORMS = (
    "sqlite:///absolute/path/fleet.db, sqlite:relative/path/fleet.db, "
    "redis://host:port/db, rediss://host:port/db or postgresql://user@host:port/dbname"
)


async def open_store(
    url: str, *, redis: RedisDurability | None = None, feed_poll_seconds: float | None = None
) -> Store:
    """Open the store ``url`` names; anything unrecognised is a ConfigError.

    ``redis``: what a Redis store must guarantee (fleet.store.redis_durability);
    by default it must be durable. ``feed_poll_seconds``: how soon a SQLite feed
    follower must learn of another process's revocation (default: at once, for
    brokers); PostgreSQL and Redis wake their followers themselves.
    """
    if url.startswith("sqlite:"):
        from fleet.store.sqlite import SqliteStore

        return await SqliteStore.open(_sqlite_path(url), feed_poll_seconds=feed_poll_seconds)
    if url.startswith(("redis://", "rediss://")):
        from fleet.store.redis import RedisStore

        return await RedisStore.open(url, durability=redis or RedisDurability())
    if url.startswith(("postgresql://", "postgres://")):
        from fleet.store.postgres import PostgresStore

        return await PostgresStore.open(url)
    raise ConfigError(
        f"unsupported store URL {url!r}",
        hint=f"Use one of: {ACCEPTED_FORMS}.",
    )


def _sqlite_path(url: str) -> Path:
    rest = url.removeprefix("sqlite:")
    if rest.startswith("//"):
        # sqlite:///abs/path -> "/abs/path"; sqlite://host/... names a host, which SQLite has not.
        if not rest.startswith("///"):
            raise ConfigError(
                f"SQLite URL {url!r} names a host",
                hint=f"Use one of: {ACCEPTED_FORMS}.",
            )
        rest = rest[2:]
    if not rest:
        raise ConfigError(f"SQLite URL {url!r} has no path", hint=f"Use one of: {ACCEPTED_FORMS}.")
    return Path(rest)
