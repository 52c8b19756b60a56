"""Redis: the audit log, a hash chain in a zset (``{ns}:audit``, head ``{ns}:audit:head``).

SHA-256 is not available in Redis Lua, so Python computes each record and a script
appends it only if the chain head is still the one it chained after (a
compare-and-set, retried on a lost race). Changes of the other roles that take an
``audit`` event chain it the same way inside their own script (``_audited``, with
``AUDIT_PRELUDE`` of fleet.store._redis_lua), so every role that writes one builds
on this class.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from fleet.kernel.errors import StoreConflict
from fleet.records import AuditEvent, AuditPage, AuditQuery, AuditRecord
from fleet.store._codec import stored_record
from fleet.store._redis_engine import (
    CAS_ATTEMPTS,
    RedisEngine,
    as_hash,
    as_text,
    as_texts,
    mapped_errors,
    script_reply,
)
from fleet.store.audit_chain import GENESIS, chain_after, event_to_json, stored_event

_APPEND_AUDIT = """
-- KEYS[1] audit zset, KEYS[2] audit head, KEYS[3] (optional) device index
-- ARGV[1] expected head sha, ARGV[2] new seq, ARGV[3] new sha, ARGV[4] record JSON,
-- ARGV[5] genesis
local head = redis.call('HGET', KEYS[2], 'sha256') or ARGV[5]
if head == ARGV[3] then return 1 end  -- a retried call whose first attempt landed
if head ~= ARGV[1] then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('HSET', KEYS[2], 'seq', ARGV[2], 'sha256', ARGV[3])
if KEYS[3] then redis.call('ZADD', KEYS[3], ARGV[2], ARGV[2]) end
return 1
"""

_AUDIT_OF_DEVICE = """
-- KEYS[1] audit zset, KEYS[2] device index; ARGV[1] after seq, ARGV[2] limit
local out = {}
local seqs = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'LIMIT', 0, ARGV[2])
for _, seq in ipairs(seqs) do
  for _, record in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], seq, seq)) do
    table.insert(out, record)
  end
end
return out
"""


# A budgeted walk, newest first, of the audit zset (or of one device's index): at
# most ARGV[4] records are looked at per call, so a search never blocks Redis long.
_SEARCH_AUDIT = """
-- KEYS[1] audit zset, KEYS[2] (optional) a device's audit index
-- ARGV[1] after seq, ARGV[2] before bound ('+inf' or '(N'), ARGV[3] limit, ARGV[4] budget,
-- ARGV[5..8] actor, action, outcome, reason ('' = any)
local src = KEYS[2] or KEYS[1]
local walk = redis.call('ZREVRANGEBYSCORE', src, ARGV[2], '(' .. ARGV[1],
  'WITHSCORES', 'LIMIT', 0, ARGV[4])
local want = {actor = ARGV[5], action = ARGV[6], outcome = ARGV[7], reason = ARGV[8]}
local limit = tonumber(ARGV[3])
local out = {0}
local last = 0
for i = 1, #walk, 2 do
  last = tonumber(walk[i + 1])
  local record = walk[i]
  if KEYS[2] then record = redis.call('ZRANGEBYSCORE', KEYS[1], last, last)[1] end
  if record then
    local event = cjson.decode(record)['event']
    local ok = true
    for field, value in pairs(want) do
      if value ~= '' and event[field] ~= value then ok = false end
    end
    if ok then
      table.insert(out, record)
      if #out - 1 == limit then
        out[1] = last
        return out
      end
    end
  end
end
if #walk / 2 == tonumber(ARGV[4]) then out[1] = last end
return out
"""
AUDIT_SEARCH_BUDGET = 2000  # records a search looks at per call

# Counts by group over a sequence range, AUDIT_SEARCH_BUDGET records per call.
_COUNT_AUDIT = """
-- KEYS[1] audit zset; ARGV[1] after seq, ARGV[2] before bound ('+inf' or '(N'),
-- ARGV[3] budget, ARGV[4..7] actor, action, outcome, reason ('' = any), ARGV[8..] group by
local walk = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], ARGV[2],
  'WITHSCORES', 'LIMIT', 0, ARGV[3])
local want = {actor = ARGV[4], action = ARGV[5], outcome = ARGV[6], reason = ARGV[7]}
local counts = {}
local last = 0
for i = 1, #walk, 2 do
  last = tonumber(walk[i + 1])
  local event = cjson.decode(walk[i])['event']
  local ok = true
  for field, value in pairs(want) do
    if value ~= '' and event[field] ~= value then ok = false end
  end
  if ok then
    local parts = {}
    for j = 8, #ARGV do table.insert(parts, tostring(event[ARGV[j]])) end
    local key = table.concat(parts, '\\n')
    counts[key] = (counts[key] or 0) + 1
  end
end
local out = {#walk / 2 == tonumber(ARGV[3]) and last or 0}
for key, n in pairs(counts) do
  table.insert(out, key)
  table.insert(out, n)
end
return out
"""


def _audit_to_json(record: AuditRecord) -> str:
    return json.dumps(
        {
            "seq": record.seq,
            "event": event_to_json(record.event),
            "prev_sha256": record.prev_sha256,
            "sha256": record.sha256,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def _audit_from_json(text: str) -> AuditRecord:
    with stored_record("audit record"):
        data = json.loads(text)
        return AuditRecord(
            seq=int(data["seq"]),
            event=stored_event(data["event"]),
            prev_sha256=str(data["prev_sha256"]),
            sha256=str(data["sha256"]),
        )


class RedisAuditLog(RedisEngine):
    """The audit log, and the chaining of other roles' audit events into it."""

    def __init__(self, client: Redis, namespace: str) -> None:
        super().__init__(client, namespace)
        self._append_audit = client.register_script(_APPEND_AUDIT)
        self._audit_of_device = client.register_script(_AUDIT_OF_DEVICE)
        self._search_audit = client.register_script(_SEARCH_AUDIT)
        self._count_audit = client.register_script(_COUNT_AUDIT)

    def _audit_keys(self, event: AuditEvent) -> list[str]:
        k = self._keys
        keys = [k.audit, k.audit_head]
        if event.device_id is not None:
            keys.append(k.audit_device(event.device_id))
        return keys

    async def _next_audit_record(self, event: AuditEvent) -> AuditRecord:
        """The record that chains ``event`` after the current head (a script checks
        the head is still that one when it appends)."""
        with mapped_errors():
            head = as_hash(await self._redis.hgetall(self._keys.audit_head))
        if not head:
            return chain_after(0, GENESIS, event)
        return chain_after(int(head["seq"]), head["sha256"], event)

    async def _audited(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        args: Sequence[str | int],
        audit: AuditEvent | None,
    ) -> tuple[str, Any]:
        """Run a script of the audit prelude (see ``AUDIT_PRELUDE``) with ``audit``
        chained in, retrying while other writers move the audit head."""
        if audit is None:
            with mapped_errors():
                return script_reply(await script(keys=keys, args=["", 0, "", "", *args]))
        audit_keys = self._audit_keys(audit)
        for attempt in range(CAS_ATTEMPTS):
            record = await self._next_audit_record(audit)
            audit_args: list[str | int] = [
                record.prev_sha256,
                record.seq,
                record.sha256,
                _audit_to_json(record),
            ]
            with mapped_errors():
                reply = script_reply(
                    await script(keys=[*keys, *audit_keys], args=[*audit_args, *args])
                )
            if reply[0] != "moved":
                return reply
            # Another writer appended first: nothing was written; chain after its record.
            await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # noqa: S311 -- jitter
        raise StoreConflict("the audit log is too busy to append; retry")

    async def append_audit(self, event: AuditEvent) -> AuditRecord:
        keys = self._audit_keys(event)
        for attempt in range(CAS_ATTEMPTS):
            record = await self._next_audit_record(event)
            args: list[str | int] = [
                record.prev_sha256,
                record.seq,
                record.sha256,
                _audit_to_json(record),
                GENESIS,
            ]
            with mapped_errors():
                if await self._append_audit(keys=keys, args=args):
                    return record
            # Another writer appended first: chain after its record instead.
            await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # noqa: S311 -- jitter
        raise StoreConflict("the audit log is too busy to append; retry")

    async def audit_records(
        self, *, device_id: str | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[AuditRecord]:
        with mapped_errors():
            if device_id is None:
                raw = await self._redis.zrangebyscore(
                    self._keys.audit, f"({after_seq}", "+inf", start=0, num=limit
                )
            else:
                raw = await self._audit_of_device(
                    keys=[self._keys.audit, self._keys.audit_device(device_id)],
                    args=[after_seq, limit],
                )
        return [_audit_from_json(text) for text in as_texts(raw)]

    async def search_audit(self, query: AuditQuery, *, limit: int = 100) -> AuditPage:
        keys = [self._keys.audit]
        if query.device_id is not None:
            keys.append(self._keys.audit_device(query.device_id))
        before = "+inf" if query.before_seq is None else f"({query.before_seq}"
        wanted = (query.actor, query.action, query.outcome, query.reason)
        args: list[str | int] = [query.after_seq, before, limit, AUDIT_SEARCH_BUDGET]
        args += [value or "" for value in wanted]
        with mapped_errors():
            reply = await self._search_audit(keys=keys, args=args)
        return AuditPage([_audit_from_json(as_text(r)) for r in reply[1:]], int(reply[0]))

    async def count_audit(
        self, query: AuditQuery, *, by: tuple[str, ...]
    ) -> dict[tuple[str, ...], int]:
        if not by or any(f not in ("actor", "action", "outcome", "reason") for f in by):
            raise ValueError(f"count_audit groups by actor, action, outcome or reason, not {by}")
        if query.device_id is not None:
            raise ValueError("count_audit counts the whole log, not one device's")
        before = "+inf" if query.before_seq is None else f"({query.before_seq}"
        wanted = (query.actor, query.action, query.outcome, query.reason)
        counts: dict[tuple[str, ...], int] = {}
        after = query.after_seq
        while True:
            args: list[str | int] = [after, before, AUDIT_SEARCH_BUDGET]
            args += [value or "" for value in wanted]
            args += list(by)
            with mapped_errors():
                reply = await self._count_audit(keys=[self._keys.audit], args=args)
            for i in range(1, len(reply), 2):
                key = tuple(as_text(reply[i]).split("\n"))
                counts[key] = counts.get(key, 0) + int(reply[i + 1])
            if not int(reply[0]):
                return counts
            after = int(reply[0])
