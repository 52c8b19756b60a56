"""Lua shared by the Redis store's scripts: the audit-chain prelude and the feed append."""

from __future__ import annotations

from fleet.store.audit_chain import GENESIS

# Scripts that take an audit event share this prelude. Their ARGV[1..4] are the
# event's chain record as Python computed it: the head sha256 it chains after
# ('' = no event), its seq, its sha256, the record as JSON. Its keys follow the
# script's own keys, from KEYS[k]: the audit zset, the audit head and, when the
# event names a device, that device's audit index. A script calls
# ``audit_moved(k)`` after its own checks and before its first write; Python
# retries on ``moved``.
AUDIT_PRELUDE = (
    """
local GENESIS = '"""
    + GENESIS
    + """'
local function audit_moved(k)
  if ARGV[1] == '' then return false end
  return (redis.call('HGET', KEYS[k + 1], 'sha256') or GENESIS) ~= ARGV[1]
end
local function audit_append(k)
  if ARGV[1] == '' then return end
  redis.call('ZADD', KEYS[k], ARGV[2], ARGV[4])
  redis.call('HSET', KEYS[k + 1], 'seq', ARGV[2], 'sha256', ARGV[3])
  if KEYS[k + 2] then redis.call('ZADD', KEYS[k + 2], ARGV[2], ARGV[2]) end
end
"""
)

FEED_APPEND = """
local function feed_append(feed, feed_seq, channel, kind, device_id, serials, reason, at)
  local seq = redis.call('INCR', feed_seq)
  local event = cjson.encode({seq = seq, kind = kind, device_id = device_id,
    serials = serials, reason = reason, at = at})
  redis.call('RPUSH', feed, event)
  redis.call('PUBLISH', channel, event)
  return event
end
"""


# Revoke the given serials (hex) of a device that are still good; returns those revoked.
REVOKE_GOOD = """
local function revoke_good(cert_prefix, expiry, revoked, device_id, serials, reason, at)
  local done = {}
  for _, serial in ipairs(serials) do
    local key = cert_prefix .. serial
    local c = redis.call('HMGET', key, 'status', 'device_id')
    if c[1] == 'good' and c[2] == device_id then
      redis.call('HSET', key, 'status', 'revoked', 'revoked_at', at, 'revocation_reason', reason)
      redis.call('ZREM', expiry, serial)
      redis.call('SADD', revoked, serial)
      table.insert(done, serial)
    end
  end
  return done
end
"""


# Index sets kept in the same script as the change they index, so listing pending
# devices or counting devices by state never walks the keyspace:
#   {ns}:devices:state:<state>      zset  device ids in that state (score 0: lex paging)
#   {ns}:replacements:<status>      zset  device ids whose replacement request has it
#   {ns}:devices:newest-expiry      zset  device id, score = notAfter (epoch µs) of its
#                                         newest good certificate (latest issued_at, then
#                                         highest serial); absent: it holds none
# Their keys are built from the namespace tag of KEYS[1] (every key shares it, so they
# are in the script's slot).
INDEX = """
local function index_key(kind, value)
  return string.match(KEYS[1], '^%b{}') .. ':' .. kind .. ':' .. value
end
local function index_move(kind, id, from, to)
  if from == to then return end
  if from then redis.call('ZREM', index_key(kind, from), id) end
  if to then redis.call('ZADD', index_key(kind, to), 0, id) end
end
local function refresh_newest(id)
  local tag = string.match(KEYS[1], '^%b{}')
  local best_issued, best_serial, best_score = nil, nil, nil
  for _, serial in ipairs(redis.call('SMEMBERS', tag .. ':device-certs:' .. id)) do
    local score = redis.call('ZSCORE', tag .. ':expiry', serial)  -- present: good
    if score then
      local issued = redis.call('HGET', tag .. ':cert:' .. serial, 'issued_at')
      local newer = best_issued == nil or issued > best_issued
      if issued == best_issued then
        newer = #serial > #best_serial or (#serial == #best_serial and serial > best_serial)
      end
      if newer then best_issued, best_serial, best_score = issued, serial, score end
    end
  end
  local key = tag .. ':devices:newest-expiry'
  if best_score then redis.call('ZADD', key, best_score, id) else redis.call('ZREM', key, id) end
end
"""
