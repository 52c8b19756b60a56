"""The Redis client side of the durability rule (fleet.store.redis_durability):
checking the server at connect, and ``WAIT`` after every write."""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from fleet.kernel.errors import ConfigError, StoreUnavailable
from fleet.store.redis_durability import WAIT_TIMEOUT_MS, RedisDurability, durability_problem

log = logging.getLogger("fleet.store.redis")


def _fields(value: Any) -> dict[str, str]:
    """CONFIG GET's reply: a dict of text (the client decodes responses)."""
    return {str(k): str(v) for k, v in dict(value).items()}


async def check_durability(client: Redis, wanted: RedisDurability) -> None:
    if wanted.reader_only:
        return
    if wanted.allow_volatile:
        log.warning(
            "store.redis.allow_volatile = true: Redis may lose acknowledged certificates "
            "and revocations (a lost revocation re-admits a device). Tests and demos only."
        )
        return
    settings: dict[str, str] | None
    try:
        settings = {
            **_fields(await client.config_get("appendonly")),
            **_fields(await client.config_get("appendfsync")),
        }
    except ResponseError:  # CONFIG renamed or disabled (managed Redis)
        settings = None
    info = await client.info("replication")
    problem = durability_problem(settings, int(info.get("connected_slaves", 0)), wanted)
    if problem is not None:
        what, hint = problem
        raise ConfigError(f"refusing Redis as the system of record: {what}", hint=hint)


class WaitingRedis(Redis):
    """A client that, with ``min_replicas`` N > 0, follows every write with ``WAIT N``
    on the same connection and fails the write unless N replicas acknowledged it."""

    min_replicas = 0

    async def _send_command_parse_response(
        self, conn: Any, command_name: str, *args: Any, **options: Any
    ) -> Any:
        result = await super()._send_command_parse_response(  # type: ignore[no-untyped-call]
            conn, command_name, *args, **options
        )
        if self.min_replicas and str(command_name).upper() in _WRITES:
            await conn.send_command("WAIT", self.min_replicas, WAIT_TIMEOUT_MS)
            acked = int(await self.parse_response(conn, "WAIT"))
            if acked < self.min_replicas:
                raise StoreUnavailable(
                    f"only {acked} of {self.min_replicas} Redis replicas acknowledged the "
                    f"write within {WAIT_TIMEOUT_MS} ms; it is not acknowledged",
                    hint="Check the replicas (INFO replication); retry the operation.",
                )
        return result


# Commands that may write (scripts included): each is followed by WAIT.
_WRITES = frozenset(
    [
        "EVAL",
        "EVALSHA",
        "SET",
        "DEL",
        "HSET",
        "HSETNX",
        "HDEL",
        "HINCRBY",
        "INCR",
        "ZADD",
        "ZREM",
        "ZREMRANGEBYSCORE",
        "SADD",
        "SREM",
        "RPUSH",
        "LPUSH",
        "EXPIRE",
    ]
)
