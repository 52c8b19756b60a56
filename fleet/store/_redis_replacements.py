"""Redis: replacement requests, one hash per device (``{ns}:replacement:<id>``).

Each change is one Lua script that checks everything before its first write
(Lua does not roll back), like the rest of the Redis store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from redis.asyncio import Redis

from fleet.kernel.errors import DeviceNotFound, StoreConflict
from fleet.records import (
    AuditEvent,
    ReplacementRequest,
    ReplacementStatus,
    RevocationEvent,
    RevocationReason,
)
from fleet.store._codec import feed_event_from_json, replacement_request, ts
from fleet.store._redis_audit import RedisAuditLog
from fleet.store._redis_engine import as_hash, as_text, as_texts, mapped_errors
from fleet.store._redis_lua import AUDIT_PRELUDE, FEED_APPEND, INDEX, REVOKE_GOOD

NOTE_ATTEMPT = (
    INDEX
    + AUDIT_PRELUDE
    + """
-- KEYS[1] device, KEYS[2] replacement request, KEYS[3..] audit
-- ARGV[1..4] audit, ARGV[5] device id, ARGV[6] bootstrap sha, ARGV[7] key sha,
-- ARGV[8] source, ARGV[9] now
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
if state ~= 'active' then return {'conflict', state} end
local r = redis.call('HMGET', KEYS[2], 'status', 'key_sha256')
if r[1] and r[1] ~= 'pending' then return {'conflict', r[1]} end
if audit_moved(3) then return {'moved'} end
if not r[1] then
  redis.call('HSET', KEYS[2], 'device_id', ARGV[5], 'bootstrap_sha256', ARGV[6],
    'key_sha256', ARGV[7], 'first_seen', ARGV[9], 'last_seen', ARGV[9], 'attempts', 1,
    'keys_seen', 1, 'source', ARGV[8], 'status', 'pending', 'decided_by', '')
  index_move('replacements', ARGV[5], false, 'pending')
else
  if r[2] ~= ARGV[7] then redis.call('HINCRBY', KEYS[2], 'keys_seen', 1) end
  redis.call('HINCRBY', KEYS[2], 'attempts', 1)
  redis.call('HSET', KEYS[2], 'bootstrap_sha256', ARGV[6], 'key_sha256', ARGV[7],
    'last_seen', ARGV[9], 'source', ARGV[8])
end
audit_append(3)
return {'ok', redis.call('HGETALL', KEYS[2])}
"""
)

DECIDE = (
    INDEX
    + FEED_APPEND
    + REVOKE_GOOD
    + AUDIT_PRELUDE
    + """
-- KEYS[1] device, KEYS[2] replacement request, KEYS[3] device-certs, KEYS[4] expiry,
-- KEYS[5] revoked, KEYS[6] feed, KEYS[7] feed:seq, KEYS[8..] audit
-- ARGV[1..4] audit, ARGV[5] device id, ARGV[6] status, ARGV[7] now, ARGV[8] actor,
-- ARGV[9] revocation reason ('' = none), ARGV[10] channel, ARGV[11] cert key prefix,
-- ARGV[12] the key the request must still name ('' = any)
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local status = redis.call('HGET', KEYS[2], 'status')
if status ~= 'pending' then return {'conflict', status or 'none'} end
local key = redis.call('HGET', KEYS[2], 'key_sha256')
if ARGV[12] ~= '' and key ~= ARGV[12] then return {'key_changed', key} end
if audit_moved(8) then return {'moved'} end
redis.call('HSET', KEYS[2], 'status', ARGV[6], 'decided_at', ARGV[7], 'decided_by', ARGV[8])
index_move('replacements', ARGV[5], 'pending', ARGV[6])
local event = false
if ARGV[9] ~= '' then
  local done = revoke_good(ARGV[11], KEYS[4], KEYS[5], ARGV[5], redis.call('SMEMBERS', KEYS[3]),
    ARGV[9], ARGV[7])
  refresh_newest(ARGV[5])
  if #done > 0 then
    event = feed_append(KEYS[6], KEYS[7], ARGV[10], 'certificate', ARGV[5], done, ARGV[9],
      ARGV[7])
  end
end
audit_append(8)
return {'ok', {redis.call('HGETALL', KEYS[2]), event}}
"""
)


# The SQL columns' defaults, for the fields a request's hash leaves out.
_UNSET_REQUEST_FIELDS: dict[str, str | None] = {"source": "", "decided_at": None, "decided_by": ""}


def request_from_fields(fields: Mapping[str, str]) -> ReplacementRequest:
    """Decoded by the rule both backends share; a hash leaves out what is unset."""
    return replacement_request({**_UNSET_REQUEST_FIELDS, **fields})


class RedisReplacementQueue(RedisAuditLog):
    """Replacement requests: noted on a bootstrap replay, decided by an admin."""

    def __init__(self, client: Redis, namespace: str) -> None:
        super().__init__(client, namespace)
        self._note_replacement = client.register_script(NOTE_ATTEMPT)
        self._decide_replacement = client.register_script(DECIDE)

    async def get_replacement_request(self, device_id: str) -> ReplacementRequest | None:
        with mapped_errors():
            fields = as_hash(await self._redis.hgetall(self._keys.replacement(device_id)))
        return request_from_fields(fields) if fields else None

    async def list_replacement_requests(
        self, status: ReplacementStatus, *, after: str | None = None, limit: int = 100
    ) -> list[ReplacementRequest]:
        start = "-" if after is None else f"({after}"
        index = self._keys.replacement_index(status)
        with mapped_errors():
            ids = as_texts(await self._redis.zrangebylex(index, start, "+", start=0, num=limit))
            async with self._redis.pipeline(transaction=False) as pipe:
                for device_id in ids:
                    pipe.hgetall(self._keys.replacement(device_id))
                hashes = await pipe.execute()
        found = [request_from_fields(f) for f in map(as_hash, hashes) if f]
        # A request decided between the two reads has left this status: not listed.
        return [r for r in found if r.status is status]

    async def note_replacement_attempt(
        self,
        device_id: str,
        *,
        bootstrap_sha256: str,
        key_sha256: str,
        source: str,
        now: dt.datetime,
        audit: AuditEvent | None = None,
    ) -> ReplacementRequest:
        keys = [self._keys.device(device_id), self._keys.replacement(device_id)]
        args = [device_id, bootstrap_sha256, key_sha256, source, ts(now)]
        status, payload = await self._audited(self._note_replacement, keys, args, audit)
        if status == "missing":
            raise DeviceNotFound(f"no device {device_id!r}")
        if status == "conflict":
            raise StoreConflict(
                f"device {device_id!r}: {as_text(payload)}; no replacement request is noted"
            )
        return request_from_fields(as_hash(payload))

    async def decide_replacement_request(
        self,
        device_id: str,
        status: ReplacementStatus,
        *,
        now: dt.datetime,
        actor: str,
        revoke: RevocationReason | None = None,
        audit: AuditEvent | None = None,
        key_sha256: str | None = None,
    ) -> tuple[ReplacementRequest, RevocationEvent | None]:
        if status is ReplacementStatus.PENDING:
            raise ValueError("a replacement request is answered approved or rejected")
        k = self._keys
        keys = [
            k.device(device_id),
            k.replacement(device_id),
            k.device_certs(device_id),
            k.expiry,
            k.revoked,
            k.feed,
            k.feed_seq,
        ]
        args = [
            device_id, status.value, ts(now), actor,
            "" if revoke is None else revoke.value, k.channel, k.cert_prefix, key_sha256 or "",
        ]  # fmt: skip
        status_, payload = await self._audited(self._decide_replacement, keys, args, audit)
        if status_ == "missing":
            raise DeviceNotFound(f"no device {device_id!r}")
        if status_ == "conflict":
            raise StoreConflict(
                f"device {device_id!r} has no pending replacement request ({as_text(payload)})"
            )
        if status_ == "key_changed":
            raise StoreConflict(
                f"the replacement request of device {device_id!r} now names another key "
                f"({as_text(payload)[:16]}…): a new key was presented meanwhile"
            )
        fields, event = list(payload)
        request = request_from_fields(as_hash(fields))
        return request, None if event is None else feed_event_from_json(as_text(event))
