"""Redis: the store's directories, each a hash or a few small keys.

Manufacturer trust (``{ns}:mfr-cas``, and the intermediate pool of
fleet.store.intermediates), admin credentials (``{ns}:admins``), one-time
enrollment tokens (``{ns}:token:<id>``), named cursors (``{ns}:cursors``),
CRL number counters (``{ns}:crl:<scope>``) and the newest signed CRLs
(``{ns}:signed-crl:<scope>``): everything but devices,
certificates, replacement requests, the audit log and the revocation feed.
"""

from __future__ import annotations

import base64
import datetime as dt
import json

from redis.asyncio import Redis

from fleet.kernel.errors import (
    AdminNotFound,
    NotFound,
    StoreConflict,
    StoreUnavailable,
    TokenInvalid,
)
from fleet.records import AdminCredential, AdminRole, AuditEvent, EnrollmentToken, ManufacturerCA
from fleet.store._codec import (
    admin_order,
    check_admin_credential,
    check_cursor,
    parse_ts,
    stored_record,
    ts,
)
from fleet.store._redis_audit import RedisAuditLog
from fleet.store._redis_engine import CAS_ATTEMPTS, as_hash, as_text, mapped_errors
from fleet.store._redis_intermediates import RedisIntermediates, ca_from_json, ca_to_json
from fleet.store._redis_lua import AUDIT_PRELUDE
from fleet.store.crl_numbers import CrlCounter, StoredCrl, next_crl_number, replaces

_SPEND_ONE_TIME_CODE = """
-- KEYS[1] token hash; ARGV[1] token sha256, ARGV[2] now
local t = redis.call('HMGET', KEYS[1], 'token_sha256', 'expires_at')
if not t[1] or t[1] ~= ARGV[1] or t[2] <= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# One entry of a directory hash added, removed or (an admin credential) disabled,
# with its audit event chained in the same script.
_CHANGE_ENTRY = (
    AUDIT_PRELUDE
    + """
-- KEYS[1] the hash, KEYS[2..] audit; ARGV[1..4] audit, ARGV[5] 'add' | 'remove' |
-- 'disable', ARGV[6] field, ARGV[7] value (add)
local text = redis.call('HGET', KEYS[1], ARGV[6])
if ARGV[5] == 'add' then
  if text then return {'unchanged'} end
elseif not text then
  return {'missing'}
end
local cred
if ARGV[5] == 'disable' then
  cred = cjson.decode(text)
  if cred['disabled'] then return {'unchanged'} end
end
if audit_moved(2) then return {'moved'} end
if ARGV[5] == 'add' then
  redis.call('HSET', KEYS[1], ARGV[6], ARGV[7])
elseif ARGV[5] == 'remove' then
  redis.call('HDEL', KEYS[1], ARGV[6])
else
  cred['disabled'] = true
  redis.call('HSET', KEYS[1], ARGV[6], cjson.encode(cred))
end
audit_append(2)
return {'ok'}
"""
)

_PUT_TOKEN = (
    AUDIT_PRELUDE
    + """
-- KEYS[1] the device's token hash, KEYS[2..] audit; ARGV[1..4] audit,
-- ARGV[5] token sha256, ARGV[6] created_at, ARGV[7] expires_at
if audit_moved(2) then return {'moved'} end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'token_sha256', ARGV[5], 'created_at', ARGV[6],
  'expires_at', ARGV[7])
audit_append(2)
return {'ok'}
"""
)

_SET_CRL_COUNTER = """
-- KEYS[1] crl hash; ARGV: expected number, expected seq ('' = none), new number, new seq.
-- A compare-and-set: Python decided the new counter (fleet.store.crl_numbers).
local cur = redis.call('HMGET', KEYS[1], 'number', 'content_seq')
if (cur[1] or '') ~= ARGV[1] or (cur[2] or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'number', ARGV[3], 'content_seq', ARGV[4])
return 1
"""

_KEEP_SIGNED_CRL = """
-- KEYS[1] signed-crl hash; ARGV: expected number ('' = none), number, content seq, DER (base64).
-- A compare-and-set: Python decided it replaces the kept one (fleet.store.crl_numbers).
if (redis.call('HGET', KEYS[1], 'number') or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'number', ARGV[2], 'content_seq', ARGV[3], 'der', ARGV[4])
return 1
"""


def _admin_to_json(cred: AdminCredential) -> str:
    return json.dumps(
        {
            "name": cred.name,
            "role": cred.role.value,
            "kind": cred.kind,
            "sha256": cred.sha256,
            "created_at": ts(cred.created_at),
            "disabled": cred.disabled,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def _admin_from_json(text: str) -> AdminCredential:
    with stored_record("admin credential"):
        return _decode_admin_from_json(text)


def _decode_admin_from_json(text: str) -> AdminCredential:
    data = json.loads(text)
    return AdminCredential(
        name=str(data["name"]),
        role=AdminRole(data["role"]),
        kind=str(data["kind"]),
        sha256=str(data["sha256"]),
        created_at=parse_ts(str(data["created_at"])),
        disabled=data["disabled"] is True,
    )


class RedisDirectory(RedisAuditLog, RedisIntermediates):
    """Manufacturer trust, admin credentials, enrollment tokens, cursors, CRL numbers."""

    def __init__(self, client: Redis, namespace: str) -> None:
        super().__init__(client, namespace)
        self._consume_token = client.register_script(_SPEND_ONE_TIME_CODE)
        self._change_entry = client.register_script(_CHANGE_ENTRY)
        self._put_token = client.register_script(_PUT_TOKEN)
        self._set_crl_counter = client.register_script(_SET_CRL_COUNTER)
        self._keep_signed_crl = client.register_script(_KEEP_SIGNED_CRL)

    # -- manufacturer trust ------------------------------------------------
    async def _change(
        self, key: str, op: str, field: str, value: str, audit: AuditEvent | None
    ) -> str:
        status, _ = await self._audited(self._change_entry, [key], [op, field, value], audit)
        return status

    async def add_manufacturer_ca(
        self, ca: ManufacturerCA, *, audit: AuditEvent | None = None
    ) -> bool:
        status = await self._change(self._keys.mfr_cas, "add", ca.sha256, ca_to_json(ca), audit)
        return status == "ok"

    async def remove_manufacturer_ca(self, sha256: str, *, audit: AuditEvent | None = None) -> None:
        if await self._change(self._keys.mfr_cas, "remove", sha256, "", audit) == "missing":
            raise NotFound(f"no trusted manufacturer CA with fingerprint {sha256}")

    async def list_manufacturer_cas(self) -> list[ManufacturerCA]:
        with mapped_errors():
            raw = as_hash(await self._redis.hgetall(self._keys.mfr_cas))
        cas = [ca_from_json(v) for v in raw.values()]
        return sorted(cas, key=lambda ca: (ca.added_at, ca.sha256))

    # -- admin credentials -------------------------------------------------------
    async def put_admin_credential(
        self, cred: AdminCredential, *, audit: AuditEvent | None = None
    ) -> None:
        check_admin_credential(cred)
        text = _admin_to_json(cred)
        if await self._change(self._keys.admins, "add", cred.sha256, text, audit) != "ok":
            raise StoreConflict(f"an admin credential with sha256 {cred.sha256} exists")

    async def find_admin_credential(self, sha256: str) -> AdminCredential:
        with mapped_errors():
            text = await self._redis.hget(self._keys.admins, sha256)
        if text is None:
            raise AdminNotFound(f"no admin credential with sha256 {sha256}")
        return _admin_from_json(as_text(text))

    async def list_admin_credentials(self) -> list[AdminCredential]:
        with mapped_errors():
            raw = as_hash(await self._redis.hgetall(self._keys.admins))
        return sorted(map(_admin_from_json, raw.values()), key=admin_order)

    async def disable_admin_credential(
        self, sha256: str, *, audit: AuditEvent | None = None
    ) -> bool:
        status = await self._change(self._keys.admins, "disable", sha256, "", audit)
        if status == "missing":
            raise AdminNotFound(f"no admin credential with sha256 {sha256}")
        return status == "ok"

    # -- one-time enrollment tokens -----------------------------------------
    async def put_enrollment_token(
        self, token: EnrollmentToken, *, audit: AuditEvent | None = None
    ) -> None:
        args = [token.token_sha256, ts(token.created_at), ts(token.expires_at)]
        await self._audited(self._put_token, [self._keys.token(token.device_id)], args, audit)

    async def consume_enrollment_token(
        self, device_id: str, token_sha256: str, now: dt.datetime
    ) -> None:
        keys = [self._keys.token(device_id)]
        with mapped_errors():
            used = await self._consume_token(keys=keys, args=[token_sha256, ts(now)])
        if not used:
            # One message for every cause, so a caller cannot probe which it was.
            raise TokenInvalid(f"no valid enrollment token for device {device_id!r}")

    # -- cursors -----------------------------------------------------------------
    async def get_cursor(self, name: str) -> int:
        with mapped_errors():
            value = await self._redis.hget(self._keys.cursors, name)
        return 0 if value is None else int(as_text(value))

    async def set_cursor(self, name: str, value: int) -> None:
        check_cursor(name, value)
        with mapped_errors():
            await self._redis.hset(self._keys.cursors, name, str(value))

    async def list_cursors(self, prefix: str) -> dict[str, int]:
        # The hash holds a few cursors per broker and notifier: read whole.
        with mapped_errors():
            raw = as_hash(await self._redis.hgetall(self._keys.cursors))
        return {name: int(value) for name, value in raw.items() if name.startswith(prefix)}

    # -- CRL numbers -------------------------------------------------------------
    async def latest_crl_number(self, scope: str) -> int:
        with mapped_errors():
            number = await self._redis.hget(self._keys.crl(scope), "number")
        return 0 if number is None else int(number)

    async def allocate_crl_number(self, scope: str, content_seq: int, floor: int) -> int | None:
        for _ in range(CAS_ATTEMPTS):
            with mapped_errors():
                number, seq = await self._redis.hmget(
                    self._keys.crl(scope), ["number", "content_seq"]
                )
            last = None if number is None else CrlCounter(int(number), int(seq or 0))
            counter = next_crl_number(last, content_seq, floor)
            if counter is None:
                return None
            expected = ("", "") if last is None else (str(last.number), str(last.content_seq))
            args = [*expected, str(counter.number), str(counter.content_seq)]
            with mapped_errors():
                if await self._set_crl_counter(keys=[self._keys.crl(scope)], args=args):
                    return counter.number
        raise StoreUnavailable("the CRL number counter kept moving; retry")

    async def keep_signed_crl(self, scope: str, crl: StoredCrl) -> bool:
        key = self._keys.signed_crl(scope)
        # Base64: the client decodes every reply as text, and DER is not.
        der = base64.b64encode(crl.der).decode()
        for _ in range(CAS_ATTEMPTS):
            with mapped_errors():
                kept = await self._redis.hget(key, "number")
            if not replaces(None if kept is None else int(kept), crl):
                return False
            args = ["" if kept is None else as_text(kept), str(crl.number), str(crl.content_seq)]
            with mapped_errors():
                if await self._keep_signed_crl(keys=[key], args=[*args, der]):
                    return True
        raise StoreUnavailable("the kept CRL kept changing; retry")

    async def newest_signed_crl(self, scope: str) -> StoredCrl | None:
        with mapped_errors():
            number, seq, der = await self._redis.hmget(
                self._keys.signed_crl(scope), ["number", "content_seq", "der"]
            )
        if number is None:
            return None
        try:
            der_bytes = base64.b64decode(as_text(der), validate=True)
            return StoredCrl(int(number), int(as_text(seq)), der_bytes)
        except ValueError as exc:  # binascii.Error is one
            raise StoreUnavailable(f"the stored CRL of {scope} is damaged: {exc}") from exc
