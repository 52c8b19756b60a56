"""The Redis store's engine: the connection (durability checked at open, index sets
built once), the key layout (fleet.store._redis_keys) and typed views of redis-py's
replies, with Redis errors mapped to ``StoreUnavailable``.

Every role of the store (fleet.store._redis_*) is a subclass of ``RedisEngine`` that
registers its own Lua scripts in ``__init__`` (cooperatively, through ``super()``);
``RedisStore`` (fleet.store.redis) composes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Self

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from fleet.kernel.errors import ConfigError, StoreUnavailable
from fleet.store._redis_durable import WaitingRedis, check_durability
from fleet.store._redis_indexes import ensure_indexes
from fleet.store._redis_keys import RedisKeys
from fleet.store.redis_durability import RedisDurability

# Attempts at a compare-and-set (the audit chain's head, a CRL number counter) before
# giving up: each lost attempt means another writer made progress.
CAS_ATTEMPTS = 50


# -- typed views of redis-py's loosely typed replies (decode_responses=True) ---
def as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def as_texts(value: Any) -> list[str]:
    return [as_text(v) for v in value]


def as_hash(value: Any) -> dict[str, str]:
    """A hash from HGETALL (a dict) or from a script (a flat field/value list)."""
    if isinstance(value, Mapping):
        return {as_text(k): as_text(v) for k, v in value.items()}
    flat = as_texts(value)
    return dict(zip(flat[::2], flat[1::2], strict=True))


def script_reply(value: Any) -> tuple[str, Any]:
    """A script's ``{status, payload}`` reply."""
    items = list(value)
    return as_text(items[0]), items[1] if len(items) > 1 else None


@contextlib.contextmanager
def mapped_errors() -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"Redis is unavailable: {exc}") from exc


class RedisEngine:
    """The client and the key layout every role of the Redis store works with."""

    def __init__(self, client: Redis, namespace: str) -> None:
        self._redis = client
        self._keys = RedisKeys(namespace)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        namespace: str = "fleet",
        durability: RedisDurability = RedisDurability(),  # noqa: B008 (frozen)
    ) -> Self:
        """Connect; refuse a Redis that may lose acknowledged writes (see redis_durability)."""
        if not namespace or "{" in namespace or "}" in namespace:
            raise ConfigError(f"Redis namespace {namespace!r} must be non-empty without braces")
        try:
            client = WaitingRedis.from_url(
                url,
                decode_responses=True,
                # One retry recovers a pooled connection Redis closed (restart,
                # idle timeout); more would only delay StoreUnavailable.
                retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=1),
                socket_connect_timeout=2.0,
                socket_timeout=5.0,
            )
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL: {exc}") from exc
        store = cls(client, namespace)
        try:
            with mapped_errors():
                await client.ping()
                await check_durability(client, durability)
                if not durability.reader_only and isinstance(client, WaitingRedis):
                    client.min_replicas = durability.min_replicas
                await ensure_indexes(client, store._keys.devices, store._keys.indexes)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()
