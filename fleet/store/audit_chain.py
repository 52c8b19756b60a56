"""The audit log's hash chain (pure).

Each record's ``sha256`` is SHA-256 over the previous record's hash and a
canonical JSON encoding of its own sequence number and event. Editing,
inserting or deleting a row breaks the chain at that row, which
:func:`verify_chain` reports. The first record chains to ``GENESIS``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from fleet.kernel.reasons import Reason
from fleet.records import AuditEvent, AuditRecord

GENESIS = "0" * 64


def event_to_json(event: AuditEvent) -> dict[str, Any]:
    """The event as plain JSON values (also how backends persist it)."""
    return {
        "at": event.at.astimezone(dt.UTC).isoformat(),
        "actor": event.actor,
        "action": event.action,
        "outcome": event.outcome,
        "reason": event.reason,
        "device_id": event.device_id,
        "detail": dict(sorted(event.detail.items())),
    }


def event_from_json(data: dict[str, Any]) -> AuditEvent:
    return AuditEvent(
        at=dt.datetime.fromisoformat(data["at"]),
        actor=data["actor"],
        action=data["action"],
        outcome=data["outcome"],
        reason=data["reason"],
        device_id=data["device_id"],
        detail={str(k): str(v) for k, v in data["detail"].items()},
    )


def stored_event(text: str | dict[str, Any]) -> AuditEvent:
    """The event a store holds (JSON text, or already parsed), or, when it does not
    decode (a record edited by hand), an event that says so: it hashes to nothing
    stored, so `fleet audit verify` reports the record as edited, and every other
    record still reads (an audit page, `why`) instead of all of them failing."""
    try:
        data = json.loads(text) if isinstance(text, str) else text
        event = event_from_json(data)
        if event.at.tzinfo is None:
            raise ValueError("a time without a timezone")
        return event
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        return AuditEvent(
            at=UNREADABLE_AT,
            actor="",
            action="unreadable",
            outcome="unreadable",
            reason=Reason.STORE_RECORD_INVALID,
            device_id=None,
            detail={"error": f"{type(exc).__name__}: {exc}"[:200]},
        )


UNREADABLE_AT = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def canonical_bytes(seq: int, event: AuditEvent) -> bytes:
    body = {"seq": seq, "event": event_to_json(event)}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def chain_hash(prev_sha256: str, seq: int, event: AuditEvent) -> str:
    digest = hashlib.sha256()
    digest.update(bytes.fromhex(prev_sha256))
    digest.update(canonical_bytes(seq, event))
    return digest.hexdigest()


def chain_next(prev: AuditRecord | None, event: AuditEvent) -> AuditRecord:
    """The record that appends ``event`` after ``prev`` (None: the first)."""
    return (
        chain_after(0, GENESIS, event)
        if prev is None
        else chain_after(prev.seq, prev.sha256, event)
    )


def chain_after(prev_seq: int, prev_sha256: str, event: AuditEvent) -> AuditRecord:
    """The record that appends ``event`` after the record ``prev_seq`` whose hash is
    ``prev_sha256`` (0 and GENESIS: the first). Only these two of the previous
    record matter, so stores need not read (and decode) all of it."""
    seq = prev_seq + 1
    return AuditRecord(
        seq=seq, event=event, prev_sha256=prev_sha256, sha256=chain_hash(prev_sha256, seq, event)
    )


@dataclasses.dataclass(frozen=True, slots=True)
class ChainProblem:
    seq: int
    problem: str  # "edited", "inserted_or_deleted", "sequence_gap", "bad_link"

    def __str__(self) -> str:
        return f"audit record {self.seq}: {self.problem.replace('_', ' ')}"


def verify_chain(records: Iterable[AuditRecord]) -> list[ChainProblem]:
    """Every break in the chain, first to last; empty means intact."""
    problems: list[ChainProblem] = []
    expected_seq = 1
    prev_sha = GENESIS
    for record in records:
        if record.seq != expected_seq:
            problems.append(ChainProblem(record.seq, "sequence_gap"))
        if record.prev_sha256 != prev_sha:
            problems.append(ChainProblem(record.seq, "inserted_or_deleted"))
        if chain_hash(record.prev_sha256, record.seq, record.event) != record.sha256:
            problems.append(ChainProblem(record.seq, "edited"))
        expected_seq = record.seq + 1
        prev_sha = record.sha256
    return problems
