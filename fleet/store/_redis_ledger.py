"""Redis: the certificate ledger, one hash per certificate (``{ns}:cert:<serial hex>``)
with a set per device, ``{ns}:expiry`` (good ones by notAfter) and ``{ns}:revoked``.

Recording a certificate moves its device to active, may consume an approved
replacement request and supersede older certificates; revoking one certificate
or a whole device appends a revocation feed event. Each is one script that
checks everything before its first write, chaining its audit event (``_audited``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence

from redis.asyncio import Redis

from fleet.kernel.errors import CertificateNotFound, DeviceNotFound, StoreConflict
from fleet.records import (
    AuditEvent,
    CertificateRecord,
    CertificateStatus,
    Device,
    DeviceState,
    Manufacturer,
    RevocationEvent,
    RevocationReason,
)
from fleet.store._codec import (
    certificate_record,
    epoch_us,
    feed_event_from_json,
    serial_hex,
    serial_int,
    ts,
)
from fleet.store._redis_audit import RedisAuditLog
from fleet.store._redis_devices import device_from_reply
from fleet.store._redis_engine import as_hash, as_text, as_texts, mapped_errors
from fleet.store._redis_lua import AUDIT_PRELUDE, FEED_APPEND, INDEX, REVOKE_GOOD

_RECORD_CERTIFICATE = (
    INDEX
    + FEED_APPEND
    + REVOKE_GOOD
    + AUDIT_PRELUDE
    + """
-- KEYS[1] device, KEYS[2] cert, KEYS[3] device-certs, KEYS[4] expiry, KEYS[5] revoked,
-- KEYS[6] feed, KEYS[7] feed:seq, KEYS[8] replacement request, KEYS[9..] audit
-- ARGV[1..4] audit, ARGV[5] now, ARGV[6] bootstrap sha ('' = none), ARGV[7] notAfter
-- score, ARGV[8] m = 2 * number of cert fields, ARGV[9 .. 8+m] cert field/value pairs,
-- ARGV[9+m] approved replacement key ('' = none), ARGV[10+m] channel, ARGV[11+m] cert key
-- prefix, ARGV[12+m] n = number of serials to supersede, ARGV[13+m .. 12+m+n] those
-- serials (hex), ARGV[13+m+n] manufacturer sha ('' = unchanged), ARGV[14+m+n] its name,
-- ARGV[15+m+n] the renewing certificate's serial (hex; '' = none),
-- ARGV[16+m+n ..] expected device states
local m = tonumber(ARGV[8])
local n = tonumber(ARGV[12 + m])
local cert = {}
for i = 9, 8 + m, 2 do cert[ARGV[i]] = ARGV[i + 1] end
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {'missing'} end
if redis.call('EXISTS', KEYS[2]) == 1 then
  local old = redis.call('HMGET', KEYS[2], 'device_id', 'pem')
  if old[1] == cert['device_id'] and old[2] == cert['pem'] then
    -- A replay of a call that succeeded (its audit event was chained then).
    return {'ok', redis.call('HGETALL', KEYS[1])}
  end
  return {'duplicate'}
end
local allowed = false
for i = 16 + m + n, #ARGV do
  if ARGV[i] == cur then allowed = true end
end
if not allowed then return {'conflict', cur} end
local renewing = ARGV[15 + m + n]
if renewing ~= '' and redis.call('HGET', ARGV[11 + m] .. renewing, 'status') ~= 'good' then
  return {'renewing_revoked', renewing}
end
local replacement = ARGV[9 + m]
if replacement ~= '' then
  local r = redis.call('HMGET', KEYS[8], 'status', 'key_sha256')
  if r[1] ~= 'approved' or r[2] ~= replacement then return {'conflict', cur} end
end
if audit_moved(9) then return {'moved'} end
if replacement ~= '' then
  redis.call('DEL', KEYS[8])
  index_move('replacements', cert['device_id'], 'approved', false)
end
redis.call('HSET', KEYS[2], unpack(ARGV, 9, 8 + m))
redis.call('SADD', KEYS[3], cert['serial'])
if cert['status'] == 'good' then
  redis.call('ZADD', KEYS[4], ARGV[7], cert['serial'])
else
  redis.call('SADD', KEYS[5], cert['serial'])
end
redis.call('HSET', KEYS[1], 'state', 'active', 'updated_at', ARGV[5])
index_move('devices:state', cert['device_id'], cur, 'active')
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'enrolled_bootstrap_sha256', ARGV[6], 'enrolled_at', ARGV[5])
end
if ARGV[13 + m + n] ~= '' then
  redis.call('HSET', KEYS[1], 'manufacturer_sha256', ARGV[13 + m + n],
    'manufacturer_name', ARGV[14 + m + n])
end
local supersede = {}
for i = 13 + m, 12 + m + n do table.insert(supersede, ARGV[i]) end
local done = revoke_good(ARGV[11 + m], KEYS[4], KEYS[5], cert['device_id'], supersede,
  'superseded', ARGV[5])
refresh_newest(cert['device_id'])
audit_append(9)
local device = redis.call('HGETALL', KEYS[1])
if #done == 0 then return {'ok', device} end
return {'ok', device, feed_append(KEYS[6], KEYS[7], ARGV[10 + m], 'certificate',
  cert['device_id'], done, 'superseded', ARGV[5])}
"""
)

_REVOKE_CERTIFICATE = (
    INDEX
    + FEED_APPEND
    + AUDIT_PRELUDE
    + """
-- KEYS[1] cert, KEYS[2] expiry, KEYS[3] revoked, KEYS[4] feed, KEYS[5] feed:seq,
-- KEYS[6..] audit
-- ARGV[1..4] audit, ARGV[5] serial hex, ARGV[6] reason, ARGV[7] now, ARGV[8] channel
local cert = redis.call('HMGET', KEYS[1], 'status', 'device_id')
if not cert[1] then return {'missing'} end
if cert[1] == 'revoked' then return {'already'} end
if audit_moved(6) then return {'moved'} end
redis.call('HSET', KEYS[1], 'status', 'revoked', 'revoked_at', ARGV[7],
  'revocation_reason', ARGV[6])
redis.call('ZREM', KEYS[2], ARGV[5])
redis.call('SADD', KEYS[3], ARGV[5])
refresh_newest(cert[2])
audit_append(6)
return {'ok', feed_append(KEYS[4], KEYS[5], ARGV[8], 'certificate', cert[2], {ARGV[5]},
  ARGV[6], ARGV[7])}
"""
)

_REVOKE_DEVICE = (
    INDEX
    + FEED_APPEND
    + AUDIT_PRELUDE
    + """
-- KEYS[1] device, KEYS[2] device-certs, KEYS[3] expiry, KEYS[4] revoked,
-- KEYS[5] revoked-devices, KEYS[6] feed, KEYS[7] feed:seq, KEYS[8..] audit
-- ARGV[1..4] audit, ARGV[5] device id, ARGV[6] reason, ARGV[7] now, ARGV[8] channel,
-- ARGV[9] cert key prefix
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
if state == 'revoked' then return {'already'} end
if audit_moved(8) then return {'moved'} end
-- Certificate keys are only known here; the shared hash tag keeps them in this slot.
local serials = {}
for _, serial in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local key = ARGV[9] .. serial
  if redis.call('HGET', key, 'status') == 'good' then
    redis.call('HSET', key, 'status', 'revoked', 'revoked_at', ARGV[7],
      'revocation_reason', ARGV[6])
    redis.call('ZREM', KEYS[3], serial)
    redis.call('SADD', KEYS[4], serial)
    table.insert(serials, serial)
  end
end
redis.call('HSET', KEYS[1], 'state', 'revoked', 'updated_at', ARGV[7], 'state_reason', ARGV[6])
index_move('devices:state', ARGV[5], state, 'revoked')
refresh_newest(ARGV[5])
redis.call('SADD', KEYS[5], ARGV[5])
audit_append(8)
return {'ok', feed_append(KEYS[6], KEYS[7], ARGV[8], 'device', ARGV[5], serials, ARGV[6],
  ARGV[7])}
"""
)


def _cert_fields(cert: CertificateRecord) -> dict[str, str]:
    fields = {
        "serial": serial_hex(cert.serial),
        "device_id": cert.device_id,
        "not_before": ts(cert.not_before),
        "not_after": ts(cert.not_after),
        "issued_at": ts(cert.issued_at),
        "pem": cert.pem,
        "status": cert.status.value,
    }
    if cert.revoked_at is not None:
        fields["revoked_at"] = ts(cert.revoked_at)
    if cert.revocation_reason is not None:
        fields["revocation_reason"] = cert.revocation_reason.value
    return fields


# A certificate's hash leaves out the revocation fields until it is revoked.
_UNREVOKED_FIELDS: dict[str, str | None] = {"revoked_at": None, "revocation_reason": None}


def _certificate(fields: Mapping[str, str]) -> CertificateRecord:
    """Decoded by the rule both backends share."""
    return certificate_record({**_UNREVOKED_FIELDS, **fields})


class RedisCertificateLedger(RedisAuditLog):
    """Certificates: recorded before they are returned, listed, revoked (one or a device's)."""

    def __init__(self, client: Redis, namespace: str) -> None:
        super().__init__(client, namespace)
        self._record_certificate = client.register_script(_RECORD_CERTIFICATE)
        self._revoke_certificate = client.register_script(_REVOKE_CERTIFICATE)
        self._revoke_device = client.register_script(_REVOKE_DEVICE)

    async def record_certificate(
        self,
        certificate: CertificateRecord,
        *,
        expected: Collection[DeviceState],
        now: dt.datetime,
        bootstrap_sha256: str | None = None,
        audit: AuditEvent | None = None,
        supersede: Collection[int] = (),
        replacement_key: str | None = None,
        manufacturer: Manufacturer | None = None,
        renewing: int | None = None,
    ) -> Device:
        c = certificate
        k = self._keys
        fields = _cert_fields(c)
        pairs = [x for pair in fields.items() for x in pair]
        keys = [
            k.device(c.device_id),
            k.cert(c.serial),
            k.device_certs(c.device_id),
            k.expiry,
            k.revoked,
            k.feed,
            k.feed_seq,
            k.replacement(c.device_id),
        ]
        args: list[str | int] = [
            ts(now),
            bootstrap_sha256 or "",
            epoch_us(c.not_after),
            len(pairs),
            *pairs,
            replacement_key or "",
            k.channel,
            k.cert_prefix,
            len(supersede),
            *(serial_hex(s) for s in supersede),
            manufacturer.sha256 if manufacturer else "",
            manufacturer.name if manufacturer else "",
            "" if renewing is None else serial_hex(renewing),
            *(s.value for s in expected),
        ]
        reply = await self._audited(self._record_certificate, keys, args, audit)
        if reply[0] == "renewing_revoked":
            raise StoreConflict(
                f"certificate {as_text(reply[1])} that authenticated the renewal is no longer good"
            )
        return device_from_reply(c.device_id, reply)

    async def _certificates(self, serials: Sequence[str]) -> list[CertificateRecord]:
        with mapped_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for serial in serials:
                    pipe.hgetall(self._keys.cert(serial_int(serial)))
                hashes = await pipe.execute()
        return [_certificate(f) for f in map(as_hash, hashes) if f]

    async def get_certificate(self, serial: int) -> CertificateRecord:
        with mapped_errors():
            fields = as_hash(await self._redis.hgetall(self._keys.cert(serial)))
        if not fields:
            raise CertificateNotFound(f"no certificate with serial {serial:x}")
        return _certificate(fields)

    async def list_certificates(self, device_id: str) -> list[CertificateRecord]:
        with mapped_errors():
            serials = as_texts(await self._redis.smembers(self._keys.device_certs(device_id)))
        certs = await self._certificates(serials)
        return sorted(certs, key=lambda c: (c.issued_at, c.serial), reverse=True)

    async def list_expiring(
        self, before: dt.datetime, *, limit: int = 1000
    ) -> list[CertificateRecord]:
        with mapped_errors():
            serials = as_texts(
                await self._redis.zrangebyscore(
                    self._keys.expiry, "-inf", f"({epoch_us(before)}", start=0, num=limit
                )
            )
        certs = await self._certificates(serials)
        # A revocation between the two reads leaves a revoked record here.
        good = [c for c in certs if c.status is CertificateStatus.GOOD]
        return sorted(good, key=lambda c: (c.not_after, c.serial))

    async def list_revoked(self) -> list[CertificateRecord]:
        with mapped_errors():
            serials = as_texts(await self._redis.smembers(self._keys.revoked))
        return sorted(await self._certificates(serials), key=lambda c: c.serial)

    async def revoke_certificate(
        self,
        serial: int,
        reason: RevocationReason,
        now: dt.datetime,
        *,
        audit: AuditEvent | None = None,
    ) -> RevocationEvent | None:
        k = self._keys
        keys = [k.cert(serial), k.expiry, k.revoked, k.feed, k.feed_seq]
        args = [serial_hex(serial), reason.value, ts(now), k.channel]
        status, payload = await self._audited(self._revoke_certificate, keys, args, audit)
        if status == "missing":
            raise CertificateNotFound(f"no certificate with serial {serial:x}")
        if status == "already":
            return None
        return feed_event_from_json(as_text(payload))

    async def revoke_device(
        self,
        device_id: str,
        reason: RevocationReason,
        now: dt.datetime,
        *,
        audit: AuditEvent | None = None,
    ) -> RevocationEvent | None:
        k = self._keys
        keys = [
            k.device(device_id),
            k.device_certs(device_id),
            k.expiry,
            k.revoked,
            k.revoked_devices,
            k.feed,
            k.feed_seq,
        ]
        args = [device_id, reason.value, ts(now), k.channel, k.cert_prefix]
        status, payload = await self._audited(self._revoke_device, keys, args, audit)
        if status == "missing":
            raise DeviceNotFound(f"no device {device_id!r}")
        if status == "already":
            return None
        return feed_event_from_json(as_text(payload))
