"""The manufacturer intermediate pool of the Redis store (see fleet.store.intermediates)."""

from __future__ import annotations

import json
from typing import Any, Protocol

from redis.asyncio import Redis

from fleet.records import AuditEvent, ManufacturerCA
from fleet.store._codec import parse_ts, ts
from fleet.store._redis_engine import mapped_errors
from fleet.store.intermediates import missing_intermediate


class _RedisKeys(Protocol):
    @property
    def tag(self) -> str: ...


class _Redis(Protocol):
    @property
    def _redis(self) -> Redis: ...

    @property
    def _keys(self) -> _RedisKeys: ...

    async def _change(
        self, key: str, op: str, field: str, value: str, audit: AuditEvent | None
    ) -> str: ...


def _pool_key(store: _Redis) -> str:
    # {ns}:mfr-intermediates   hash   fingerprint -> intermediate CA as JSON
    return f"{store._keys.tag}:mfr-intermediates"


def ca_to_json(ca: ManufacturerCA) -> str:
    # The trusted CAs' hash (fleet.store._redis_directory) stores them the same way.
    return json.dumps(
        {"sha256": ca.sha256, "name": ca.name, "pem": ca.pem, "added_at": ts(ca.added_at)}
    )


def ca_from_json(text: Any) -> ManufacturerCA:
    data = json.loads(text)
    return ManufacturerCA(data["sha256"], data["name"], data["pem"], parse_ts(data["added_at"]))


class RedisIntermediates:
    # Changes go through the directory's one audited script (RedisDirectory._change).
    async def add_manufacturer_intermediate(
        self: _Redis, ca: ManufacturerCA, *, audit: AuditEvent | None = None
    ) -> bool:
        return await self._change(_pool_key(self), "add", ca.sha256, ca_to_json(ca), audit) == "ok"

    async def remove_manufacturer_intermediate(
        self: _Redis, sha256: str, *, audit: AuditEvent | None = None
    ) -> None:
        if await self._change(_pool_key(self), "remove", sha256, "", audit) == "missing":
            raise missing_intermediate(sha256)

    async def list_manufacturer_intermediates(self: _Redis) -> list[ManufacturerCA]:
        with mapped_errors():
            raw = await self._redis.hvals(_pool_key(self))
        return sorted((ca_from_json(v) for v in raw), key=lambda ca: (ca.added_at, ca.sha256))
