"""Redis: replacement requests, one hash per device (``{ns}:replacement:<id>``).

Each change is one Lua script that checks everything before its first write
(Lua does not roll back), like the rest of the Redis store.
"""

from __future__ import annotations

from collections.abc import Mapping

from fleet.records import ReplacementRequest, ReplacementStatus
from fleet.store._codec import opt_parse_ts, parse_ts
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


def request_from_fields(fields: Mapping[str, str]) -> ReplacementRequest:
    return ReplacementRequest(
        device_id=fields["device_id"],
        bootstrap_sha256=fields["bootstrap_sha256"],
        key_sha256=fields["key_sha256"],
        first_seen=parse_ts(fields["first_seen"]),
        last_seen=parse_ts(fields["last_seen"]),
        attempts=int(fields["attempts"]),
        keys_seen=int(fields["keys_seen"]),
        source=fields.get("source", ""),
        status=ReplacementStatus(fields["status"]),
        decided_at=opt_parse_ts(fields.get("decided_at")),
        decided_by=fields.get("decided_by", ""),
    )
