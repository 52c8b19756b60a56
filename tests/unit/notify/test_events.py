"""Which audit records notify, and the exact body they become."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from fleet.notify.events import RULES, Rule, notification_for, notification_type
from fleet.records import AuditEvent, AuditRecord

AT = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)


def record(
    action: str, outcome: str, *, seq: int = 7, reason: str = "r", **detail: str
) -> AuditRecord:
    event = AuditEvent(
        at=AT,
        actor="admin:alice",
        action=action,
        outcome=outcome,
        reason=reason,
        device_id="dev-1",
        detail=detail,
    )
    return AuditRecord(seq=seq, event=event, prev_sha256="0" * 64, sha256="1" * 64)


@pytest.mark.parametrize(
    ("action", "outcome", "expected"),
    [
        ("revoke", "done", "device.revoked"),
        ("revoke_certificate", "done", "certificate.revoked"),
        ("suspend", "done", "device.suspended"),
        ("enroll", "held", "enrollment.held"),
        ("renew", "held", "enrollment.held"),
        # Not notifying: routine, refused, or not compromise-relevant.
        ("revoke", "refused", None),
        ("suspend", "refused", None),
        ("enroll", "allowed", None),
        ("enroll", "refused", None),
        ("renew", "allowed", None),
        ("resume", "done", None),
        ("approve", "done", None),
        ("reject", "done", None),
        ("trust_add", "done", None),
        ("manifest_import", "done", None),
        ("token_issue", "done", None),
    ],
)
def test_selection_table(action: str, outcome: str, expected: str | None) -> None:
    assert notification_type(record(action, outcome).event) == expected


def test_first_matching_rule_wins_and_table_extends() -> None:
    rules = (Rule("device.resumed", action="resume", outcome="done"), *RULES)
    assert notification_type(record("resume", "done").event, rules) == "device.resumed"
    assert notification_type(record("revoke", "done").event, rules) == "device.revoked"
    assert notification_type(record("anything", "held").event, (Rule("x"),)) == "x"


def test_non_notifying_record_gives_none() -> None:
    assert notification_for(record("enroll", "allowed")) is None


def test_body_of_a_revocation() -> None:
    n = notification_for(record("revoke", "done", seq=42, reason="keyCompromise", serials="1f"))
    assert n is not None
    assert (n.id, n.seq, n.type, n.device_id) == ("42", 42, "device.revoked", "dev-1")
    assert json.loads(n.body) == {
        "id": "42",
        "type": "device.revoked",
        "at": "2026-06-01T12:00:00+00:00",
        "device_id": "dev-1",
        "reason": "keyCompromise",
        "actor": "admin:alice",
        "detail": {"serials": "1f"},
    }


def test_body_of_a_held_possible_clone_keeps_the_flag() -> None:
    n = notification_for(record("enroll", "held", reason="bootstrap_reused", flag="possible_clone"))
    assert n is not None
    body = json.loads(n.body)
    assert body["type"] == "enrollment.held"
    assert body["reason"] == "bootstrap_reused"
    assert body["detail"] == {"flag": "possible_clone"}


def test_body_is_compact_sorted_utf8_and_time_in_utc() -> None:
    event = AuditEvent(
        at=dt.datetime(2026, 6, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        actor="admin:zoë",
        action="suspend",
        outcome="done",
        reason="r",
        device_id=None,
    )
    n = notification_for(AuditRecord(seq=1, event=event, prev_sha256="", sha256=""))
    assert n is not None
    assert n.body.startswith(b'{"actor":"admin:zo\xc3\xab","at":"2026-06-01T12:00:00+00:00",')
    assert b" " not in n.body
    assert json.loads(n.body)["device_id"] is None
