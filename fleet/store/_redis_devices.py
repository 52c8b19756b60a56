"""Redis: the device registry, one hash per device (``{ns}:device:<id>``) listed in
``{ns}:devices`` and in the index sets of fleet.store._redis_indexes.

Listing walks an index (all devices, or those in one state) by id, a page at a
time, reads the page's hashes in one pipeline and, when the filter asks about
certificates, the page's good certificates in one script.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from fleet.kernel.errors import DeviceNotFound, StoreConflict
from fleet.records import (
    AuditEvent,
    Device,
    DeviceFilter,
    DeviceState,
    ManifestEntry,
)
from fleet.store._codec import (
    check_manifest,
    check_target_state,
    device_record,
    epoch_us,
    opt_ts,
    serial_int,
    ts,
)
from fleet.store._redis_audit import RedisAuditLog
from fleet.store._redis_engine import as_hash, as_text, as_texts, mapped_errors
from fleet.store._redis_lua import AUDIT_PRELUDE, INDEX

_SCAN_PAGE = 500

_IMPORT_MANIFEST = (
    INDEX
    + AUDIT_PRELUDE
    + """
-- KEYS[1] devices zset, KEYS[2 .. n+1] the n device hashes, KEYS[n+2 ..] audit
-- ARGV[1..4] audit, ARGV[5] now, then per device: id, bootstrap_sha256, model, batch,
-- manufacturer sha ('' = unchanged), manufacturer name
local n = (#ARGV - 5) / 6
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'zset' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' is ' .. t)
end
for i = 2, n + 1 do
  t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= 'hash' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is ' .. t)
  end
end
if audit_moved(n + 2) then return {'moved'} end
local now = ARGV[5]
local created = 0
for i = 2, n + 1 do
  local a = 6 + (i - 2) * 6
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HSET', KEYS[i], 'bootstrap_sha256', ARGV[a + 1], 'model', ARGV[a + 2],
      'batch', ARGV[a + 3], 'updated_at', now)
  else
    redis.call('HSET', KEYS[i], 'device_id', ARGV[a], 'state', 'registered',
      'created_at', now, 'updated_at', now, 'bootstrap_sha256', ARGV[a + 1],
      'model', ARGV[a + 2], 'batch', ARGV[a + 3], 'state_reason', '')
    redis.call('ZADD', KEYS[1], 0, ARGV[a])
    index_move('devices:state', ARGV[a], false, 'registered')
    created = created + 1
  end
  if ARGV[a + 4] ~= '' then
    redis.call('HSET', KEYS[i], 'manufacturer_sha256', ARGV[a + 4],
      'manufacturer_name', ARGV[a + 5])
  end
end
audit_append(n + 2)
return {'ok', created}
"""
)

_ADD_DEVICE = (
    INDEX
    + AUDIT_PRELUDE
    + """
-- KEYS[1] device hash, KEYS[2] devices zset, KEYS[3..] audit
-- ARGV[1..4] audit, ARGV[5] id, ARGV[6..] field/value pairs
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
if audit_moved(3) then return {'moved'} end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], 0, ARGV[5])
index_move('devices:state', ARGV[5], false, redis.call('HGET', KEYS[1], 'state'))
audit_append(3)
return {'ok'}
"""
)

_SET_STATE = (
    INDEX
    + AUDIT_PRELUDE
    + """
-- KEYS[1] device hash, KEYS[2..] audit
-- ARGV[1..4] audit, ARGV[5] state, ARGV[6] now, ARGV[7] reason, ARGV[8..] expected
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {'missing'} end
local allowed = false
for i = 8, #ARGV do
  if ARGV[i] == cur then allowed = true end
end
if not allowed then return {'conflict', cur} end
if audit_moved(2) then return {'moved'} end
redis.call('HSET', KEYS[1], 'state', ARGV[5], 'updated_at', ARGV[6], 'state_reason', ARGV[7])
index_move('devices:state', redis.call('HGET', KEYS[1], 'device_id'), cur, ARGV[5])
audit_append(2)
return {'ok', redis.call('HGETALL', KEYS[1])}
"""
)

_GOOD_CERTIFICATES = """
-- KEYS: device-certs sets; ARGV[1] cert key prefix
-- Per device: its good certificates as a flat list of serial, issued_at, not_after.
local out = {}
for i, key in ipairs(KEYS) do
  local good = {}
  for _, serial in ipairs(redis.call('SMEMBERS', key)) do
    local c = redis.call('HMGET', ARGV[1] .. serial, 'status', 'issued_at', 'not_after')
    if c[1] == 'good' then
      table.insert(good, serial)
      table.insert(good, c[2])
      table.insert(good, c[3])
    end
  end
  out[i] = good
end
return out
"""


def _device_fields(device: Device) -> dict[str, str]:
    fields = {
        "device_id": device.device_id,
        "state": device.state.value,
        "created_at": ts(device.created_at),
        "updated_at": ts(device.updated_at),
        "model": device.model,
        "batch": device.batch,
        "state_reason": device.state_reason,
    }
    optional = {
        "bootstrap_sha256": device.bootstrap_sha256,
        "enrolled_bootstrap_sha256": device.enrolled_bootstrap_sha256,
        "enrolled_at": opt_ts(device.enrolled_at),
        "manufacturer_sha256": device.manufacturer.sha256 if device.manufacturer else None,
    }
    fields.update({k: v for k, v in optional.items() if v is not None})
    if device.manufacturer is not None:
        fields["manufacturer_name"] = device.manufacturer.name
    return fields


# What a device's hash leaves out while unset (the SQL columns' NULLs and defaults).
_UNSET_DEVICE_FIELDS: dict[str, str | None] = {
    "bootstrap_sha256": None, "model": "", "batch": "", "enrolled_bootstrap_sha256": None,
    "enrolled_at": None, "state_reason": "", "manufacturer_sha256": None, "manufacturer_name": "",
}  # fmt: skip


def _device(fields: Mapping[str, str]) -> Device:
    """Decoded by the rule both backends share."""
    return device_record({**_UNSET_DEVICE_FIELDS, **fields})


@dataclasses.dataclass(frozen=True, slots=True)
class _GoodCert:
    """What device filters need of a good certificate (times as stored: text order)."""

    serial: int
    issued_at: str
    not_after: str


def _good_certs(value: Any) -> list[_GoodCert]:
    flat = as_texts(value)
    return [
        _GoodCert(serial_int(flat[i]), flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)
    ]


def device_from_reply(device_id: str, reply: tuple[str, Any]) -> Device:
    """The device a script answers with, or the error its status names."""
    status, payload = reply
    if status == "missing":
        raise DeviceNotFound(f"no device {device_id!r}")
    if status == "conflict":
        raise StoreConflict(f"device {device_id!r} is {as_text(payload)}, not in an expected state")
    if status == "duplicate":
        raise StoreConflict("a different certificate with this serial is already recorded")
    return _device(as_hash(payload))


class RedisDeviceRegistry(RedisAuditLog):
    """Devices: the manifest, pending devices, state changes, fleet-wide queries."""

    def __init__(self, client: Redis, namespace: str) -> None:
        super().__init__(client, namespace)
        self._import_manifest = client.register_script(_IMPORT_MANIFEST)
        self._add_device = client.register_script(_ADD_DEVICE)
        self._set_state = client.register_script(_SET_STATE)
        self._good_certificates = client.register_script(_GOOD_CERTIFICATES)

    async def import_manifest(
        self,
        entries: Sequence[ManifestEntry],
        now: dt.datetime,
        *,
        audit: AuditEvent | None = None,
    ) -> int:
        check_manifest(entries)
        keys = [self._keys.devices, *(self._keys.device(e.device_id) for e in entries)]
        args: list[str | int] = [ts(now)]
        for e in entries:
            maker = e.manufacturer
            args += [e.device_id, e.bootstrap_sha256, e.model, e.batch]
            args += [maker.sha256, maker.name] if maker else ["", ""]
        _, created = await self._audited(self._import_manifest, keys, args, audit)
        return int(created)

    async def _device_hash(self, device_id: str) -> dict[str, str]:
        with mapped_errors():
            return as_hash(await self._redis.hgetall(self._keys.device(device_id)))

    async def get_device(self, device_id: str) -> Device:
        fields = await self._device_hash(device_id)
        if not fields:
            raise DeviceNotFound(f"no device {device_id!r}")
        return _device(fields)

    async def add_pending_device(
        self, device: Device, *, audit: AuditEvent | None = None
    ) -> Device:
        fields = _device_fields(device)
        args = [device.device_id, *(x for pair in fields.items() for x in pair)]
        keys = [self._keys.device(device.device_id), self._keys.devices]
        status, _ = await self._audited(self._add_device, keys, args, audit)
        if status == "exists":
            raise StoreConflict(f"device {device.device_id!r} already exists")
        return _device(fields)

    async def set_device_state(
        self,
        device_id: str,
        state: DeviceState,
        *,
        expected: Collection[DeviceState],
        now: dt.datetime,
        reason: str = "",
        audit: AuditEvent | None = None,
    ) -> Device:
        check_target_state(state)
        args = [state.value, ts(now), reason, *(s.value for s in expected)]
        reply = await self._audited(self._set_state, [self._keys.device(device_id)], args, audit)
        return device_from_reply(device_id, reply)

    async def list_devices(
        self, device_filter: DeviceFilter, *, after: str | None = None, limit: int = 100
    ) -> list[Device]:
        found: list[Device] = []
        cursor: str | None = "-" if after is None else f"({after}"
        # When the index walked answers the whole filter (none, or a state), every id read
        # is listed: read no more than asked (each hash costs a reply to parse).
        indexed = dataclasses.replace(device_filter, state=None) == DeviceFilter()
        size = min(_SCAN_PAGE, limit) if indexed else _SCAN_PAGE
        while cursor is not None and len(found) < limit:
            page, cursor = await self._device_page(
                device_filter, cursor, with_certs=False, size=size
            )
            found += (device for device, _ in page)
        return found[:limit]

    async def count_devices_by_state(self) -> dict[DeviceState, int]:
        with mapped_errors():
            async with self._redis.pipeline(transaction=True) as pipe:
                for state in DeviceState:
                    pipe.zcard(self._keys.state_index(state))
                counts = await pipe.execute()
        return {state: int(n) for state, n in zip(DeviceState, counts, strict=True)}

    async def count_expiring_devices(self, before: dt.datetime) -> int:
        with mapped_errors():
            return int(
                await self._redis.zcount(self._keys.newest_expiry, "-inf", f"({epoch_us(before)}")
            )

    async def count_blast_radius(self, device_filter: DeviceFilter) -> tuple[int, int]:
        devices = certificates = 0
        cursor: str | None = "-"
        while cursor is not None:
            page, cursor = await self._device_page(device_filter, cursor, with_certs=True)
            devices += len(page)
            certificates += sum(len(good) for _, good in page)
        return devices, certificates

    async def _device_page(
        self, device_filter: DeviceFilter, cursor: str, *, with_certs: bool, size: int = _SCAN_PAGE
    ) -> tuple[list[tuple[Device, list[_GoodCert]]], str | None]:
        """One page of the device index from ``cursor`` (a ZRANGEBYLEX bound): the
        matching devices with their good certificates (read only when the filter
        or ``with_certs`` needs them), and the next cursor (None at the end)."""
        issued_before = opt_ts(device_filter.issued_before)
        expiring_before = opt_ts(device_filter.expiring_before)
        need_certs = with_certs or issued_before is not None or expiring_before is not None
        k = self._keys
        # A state names its index: only the devices in that state are walked.
        source = k.devices if device_filter.state is None else k.state_index(device_filter.state)
        with mapped_errors():
            ids = as_texts(await self._redis.zrangebylex(source, cursor, "+", start=0, num=size))
            if not ids:
                return [], None
            async with self._redis.pipeline(transaction=False) as pipe:
                for device_id in ids:
                    pipe.hgetall(k.device(device_id))
                hashes = await pipe.execute()
            candidates = [
                device
                for device in (_device(f) for f in map(as_hash, hashes) if f)
                if _matches(device, device_filter)
            ]
            certs: list[list[_GoodCert]] = [[] for _ in candidates]
            if need_certs and candidates:
                raw = await self._good_certificates(
                    keys=[k.device_certs(d.device_id) for d in candidates], args=[k.cert_prefix]
                )
                certs = [_good_certs(r) for r in raw]
        page = [
            (device, good)
            for device, good in zip(candidates, certs, strict=True)
            if _certs_match(good, issued_before=issued_before, expiring_before=expiring_before)
        ]
        return page, f"({ids[-1]}"


def _matches(device: Device, device_filter: DeviceFilter) -> bool:
    """The filter's device fields (its certificate fields: ``_certs_match``)."""
    return (
        (device_filter.state is None or device.state is device_filter.state)
        and (device_filter.batch is None or device.batch == device_filter.batch)
        and (device_filter.model is None or device.model == device_filter.model)
        and (
            device_filter.manufacturer_sha256 is None
            or (
                device.manufacturer is not None
                and device.manufacturer.sha256 == device_filter.manufacturer_sha256
            )
        )
    )


def _certs_match(
    good: Sequence[_GoodCert], *, issued_before: str | None, expiring_before: str | None
) -> bool:
    """The filter's certificate fields, on a device's good certificates; times are
    stored text (fixed width, so text order is time order, as SQLite compares them)."""
    if issued_before is not None and not any(c.issued_at < issued_before for c in good):
        return False
    if expiring_before is not None:
        if not good:
            return False
        newest = max(good, key=lambda c: (c.issued_at, c.serial))
        if not newest.not_after < expiring_before:
            return False
    return True
