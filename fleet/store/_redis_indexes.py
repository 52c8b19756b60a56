"""Redis: the index sets of device states and replacement request statuses.

Every script that changes a device's state, a request's status or a device's
good certificates updates these sets in the same script (``INDEX`` in
_redis_lua), so the console's Pending page and the Overview's counts (by state,
expiring within N days) read a set instead of walking every device. A
namespace written before the sets existed gets them built once, when a store
first opens it (``ensure_indexes``): a batch of devices at a time,
each batch one script that reads every state and status it indexes, so a
change racing the build is indexed either by the build or by its own script.
"""

from __future__ import annotations

from redis.asyncio import Redis

from fleet.records import DeviceState, ReplacementStatus
from fleet.store._redis_lua import INDEX

VERSION = "1"
_BATCH = 500

_STATES = ", ".join(f"'{s.value}'" for s in DeviceState)
_STATUSES = ", ".join(f"'{s.value}'" for s in ReplacementStatus)

REINDEX = (
    INDEX
    + f"""
-- KEYS[1] devices zset (its tag names every key), ARGV the device ids of one batch
local tag = string.match(KEYS[1], '^%b{{}}')
local function place(kind, values, id, current)
  for _, v in ipairs(values) do
    local key = tag .. ':' .. kind .. ':' .. v
    if v == current then redis.call('ZADD', key, 0, id) else redis.call('ZREM', key, id) end
  end
end
for _, id in ipairs(ARGV) do
  place('devices:state', {{{_STATES}}}, id, redis.call('HGET', tag .. ':device:' .. id, 'state'))
  place('replacements', {{{_STATUSES}}}, id,
    redis.call('HGET', tag .. ':replacement:' .. id, 'status'))
  refresh_newest(id)
end
return #ARGV
"""
)


async def ensure_indexes(client: Redis, devices_key: str, marker_key: str) -> None:
    """Build the index sets once for a namespace that predates them."""
    if await client.get(marker_key) == VERSION:
        return
    reindex = client.register_script(REINDEX)
    cursor = "-"
    while True:
        ids = await client.zrangebylex(devices_key, cursor, "+", start=0, num=_BATCH)
        if not ids:
            break
        await reindex(keys=[devices_key], args=ids)
        last = ids[-1]
        cursor = "(" + (last.decode() if isinstance(last, bytes) else str(last))
    await client.set(marker_key, VERSION)
