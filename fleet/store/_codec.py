"""Encodings both store backends share, so their data reads the same way.

Times are stored as fixed-width ISO 8601 UTC text (``2026-06-01T12:00:00.000000Z``):
equal width means text order is time order, so SQLite indexes and Lua string
comparisons work on them directly, and a person reading the database sees dates.
Serials are lowercase hex without leading zeros (records.py); JSON carries them as
text because 159-bit integers do not survive JSON numbers or Lua doubles.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from fleet.kernel.errors import StoreRecordInvalid
from fleet.records import (
    ADMIN_CREDENTIAL_KINDS,
    AdminCredential,
    CertificateRecord,
    CertificateStatus,
    Device,
    DeviceState,
    ManifestEntry,
    Manufacturer,
    ReplacementRequest,
    ReplacementStatus,
    RevocationEvent,
    RevocationKind,
    RevocationReason,
)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_SERIAL_HEX = re.compile(r"[1-9a-f][0-9a-f]*")  # what serial_hex writes
_CURSOR_MIN, _CURSOR_MAX = -(1 << 63), (1 << 63) - 1  # SQLite INTEGER; Redis HSET text


def ts(when: dt.datetime) -> str:
    if when.tzinfo is None:
        raise ValueError(f"naive datetime {when!r}: the store keeps timezone-aware UTC times")
    return when.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


def opt_ts(when: dt.datetime | None) -> str | None:
    return None if when is None else ts(when)


def opt_parse_ts(text: str | None) -> dt.datetime | None:
    return None if text is None else parse_ts(text)


def epoch_us(when: dt.datetime) -> int:
    """Microseconds since the epoch: exact as a double up to year 2255 (Redis scores)."""
    return (when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def serial_hex(serial: int) -> str:
    if serial <= 0:
        raise ValueError(f"certificate serial must be positive, got {serial}")
    return format(serial, "x")


def serial_int(text: str) -> int:
    return int(text, 16)


def feed_event_to_json(event: RevocationEvent) -> str:
    return json.dumps(
        {
            "seq": event.seq,
            "kind": event.kind.value,
            "device_id": event.device_id,
            "serials": [serial_hex(s) for s in event.serials],
            "reason": event.reason.value,
            "at": ts(event.at),
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def feed_event_from_json(text: str, *, seq: int | None = None) -> RevocationEvent:
    """The feed event stored as ``text`` (at sequence ``seq``, when the caller knows it).

    Anything else (a row written by hand or by another version) is StoreRecordInvalid,
    never a guess: brokers then rebuild their state from a snapshot instead of
    following an event they cannot read (broker_plugins.revocation_cache).
    """
    try:
        data: dict[str, Any] = json.loads(text)
        raw_serials = data["serials"]
        # Lua's cjson encodes an empty table as ``{}``: a device revoked with no
        # good certificate arrives from Redis that way.
        serials = [] if raw_serials == {} else list(raw_serials)
        if not isinstance(data["seq"], int) or not all(
            isinstance(s, str) and _SERIAL_HEX.fullmatch(s) for s in serials
        ):
            raise TypeError("seq must be an integer and serials lowercase hex")
        event = RevocationEvent(
            seq=data["seq"],
            kind=RevocationKind(data["kind"]),
            device_id=_text(data["device_id"]),
            serials=tuple(sorted(serial_int(s) for s in serials)),
            reason=RevocationReason(data["reason"]),
            at=parse_ts(_text(data["at"])),
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        where = "" if seq is None else f" at sequence {seq}"
        raise StoreRecordInvalid(f"the revocation feed event{where} cannot be read: {exc}") from exc
    if seq is not None and event.seq != seq:
        raise StoreRecordInvalid(
            f"the revocation feed event at sequence {seq} says it is sequence {event.seq}"
        )
    return event


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


@contextlib.contextmanager
def stored_record(what: str) -> Iterator[None]:
    """Decode the stored record ``what`` (``device 'd1'``): a field that does not
    decode (a row edited by hand or written by another version) is StoreRecordInvalid
    naming the record, a clear refusal instead of a traceback, and never a guess."""
    try:
        yield
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreRecordInvalid(f"the stored {what} cannot be read: {exc!r}") from exc


class StoredFields(Protocol):
    """A stored record's fields by name: an SQL row, or a Redis hash completed with
    the fields it leaves out (None, or the SQL column's default)."""

    def __getitem__(self, name: str, /) -> Any: ...


def _named(fields: StoredFields, key: str) -> str:
    """The stored record's id for an error message, even from a record that lacks it."""
    try:
        return repr(fields[key])
    except (KeyError, IndexError, TypeError):
        return "(no id)"


def device_record(fields: StoredFields) -> Device:
    """A device as both backends store it (no manufacturer: its fingerprint is None);
    StoreRecordInvalid naming it when a field does not decode."""
    with stored_record(f"device {_named(fields, 'device_id')}"):
        return Device(
            device_id=fields["device_id"],
            state=DeviceState(fields["state"]),
            created_at=parse_ts(fields["created_at"]),
            updated_at=parse_ts(fields["updated_at"]),
            bootstrap_sha256=fields["bootstrap_sha256"],
            model=fields["model"],
            batch=fields["batch"],
            enrolled_bootstrap_sha256=fields["enrolled_bootstrap_sha256"],
            enrolled_at=opt_parse_ts(fields["enrolled_at"]),
            state_reason=fields["state_reason"],
            manufacturer=(
                None
                if fields["manufacturer_sha256"] is None
                else Manufacturer(fields["manufacturer_sha256"], fields["manufacturer_name"])
            ),
        )


def certificate_record(fields: StoredFields) -> CertificateRecord:
    """A certificate as both backends store it (hex serial, text times, enum values);
    StoreRecordInvalid naming it when a field does not decode."""
    with stored_record(f"certificate {_named(fields, 'serial')}"):
        reason = fields["revocation_reason"]
        return CertificateRecord(
            serial=serial_int(fields["serial"]),
            device_id=fields["device_id"],
            not_before=parse_ts(fields["not_before"]),
            not_after=parse_ts(fields["not_after"]),
            issued_at=parse_ts(fields["issued_at"]),
            pem=fields["pem"],
            status=CertificateStatus(fields["status"]),
            revoked_at=opt_parse_ts(fields["revoked_at"]),
            revocation_reason=None if reason is None else RevocationReason(reason),
        )


def replacement_request(fields: StoredFields) -> ReplacementRequest:
    """A replacement request as both backends store it (counts are text in Redis);
    StoreRecordInvalid naming it when a field does not decode."""
    with stored_record(f"replacement request of {_named(fields, 'device_id')}"):
        return ReplacementRequest(
            device_id=fields["device_id"],
            bootstrap_sha256=fields["bootstrap_sha256"],
            key_sha256=fields["key_sha256"],
            first_seen=parse_ts(fields["first_seen"]),
            last_seen=parse_ts(fields["last_seen"]),
            attempts=int(fields["attempts"]),
            keys_seen=int(fields["keys_seen"]),
            source=fields["source"],
            status=ReplacementStatus(fields["status"]),
            decided_at=opt_parse_ts(fields["decided_at"]),
            decided_by=fields["decided_by"],
        )


def check_manifest(entries: Sequence[ManifestEntry]) -> None:
    """Refuse a manifest the store cannot import as a whole, before writing anything.

    The manifest parser reports these with line numbers; this is the store's own
    guard, so a bad batch never gets half imported.
    """
    seen: set[str] = set()
    for entry in entries:
        if not entry.device_id:
            raise ValueError("manifest entry with an empty device id")
        if entry.device_id in seen:
            raise ValueError(f"manifest lists device {entry.device_id!r} more than once")
        seen.add(entry.device_id)
        if not _SHA256_HEX.fullmatch(entry.bootstrap_sha256):
            raise ValueError(
                f"manifest entry {entry.device_id!r}: bootstrap_sha256 must be 64 lowercase hex"
            )


def check_target_state(state: DeviceState) -> None:
    if state is DeviceState.REVOKED:
        raise ValueError("set_device_state cannot revoke: use revoke_device")


def check_admin_credential(cred: AdminCredential) -> None:
    if not cred.name:
        raise ValueError("admin credential with an empty name")
    if cred.kind not in ADMIN_CREDENTIAL_KINDS:
        raise ValueError(
            f"admin credential kind must be one of {sorted(ADMIN_CREDENTIAL_KINDS)}, "
            f"got {cred.kind!r}"
        )
    if not _SHA256_HEX.fullmatch(cred.sha256):
        raise ValueError("admin credential sha256 must be 64 lowercase hex")


def admin_order(cred: AdminCredential) -> tuple[str, dt.datetime, str]:
    """How ``list_admin_credentials`` sorts: by name, then creation, then fingerprint."""
    return (cred.name, cred.created_at, cred.sha256)


def check_cursor(name: str, value: int) -> None:
    if not name:
        raise ValueError("cursor with an empty name")
    if not _CURSOR_MIN <= value <= _CURSOR_MAX:
        raise ValueError(f"cursor {name!r}: {value} does not fit a signed 64-bit integer")
