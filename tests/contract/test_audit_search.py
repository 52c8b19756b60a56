"""The Store contract for searching the audit log: every filter, newest first, paged with
a cursor over the whole log (a short page with a cursor means: search on from there)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

import pytest

from fleet.records import AuditEvent, AuditQuery, AuditRecord
from fleet.store import _redis_audit
from fleet.store.protocol import Store

ACTORS = ("admin:ann", "admin:bob", "device:d1", "system")
ACTIONS = ("enroll", "renew", "revoke", "console_sign_in")
OUTCOMES = ("allowed", "refused")
REASONS = ("manifest_pinned", "unknown_issuer", "keyCompromise")
DEVICES = (None, "d1", "d2")


async def search_all(store: Store, query: AuditQuery, limit: int) -> list[AuditRecord]:
    found: list[AuditRecord] = []
    while True:
        page = await store.search_audit(query, limit=limit)
        assert len(page.records) <= limit
        found += page.records
        if not page.next_before:
            return found
        query = dataclasses.replace(query, before_seq=page.next_before)


@pytest.fixture
def small_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Redis walk stops after this many records per call: short pages happen."""
    monkeypatch.setattr(_redis_audit, "AUDIT_SEARCH_BUDGET", 7)


@pytest.mark.usefixtures("small_budget")
async def test_every_filter_pages_through_the_whole_log(store: Store, now: dt.datetime) -> None:
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    for n in range(240):
        await store.append_audit(
            AuditEvent(
                at=now + dt.timedelta(seconds=n), actor=rng.choice(ACTORS),
                action=rng.choice(ACTIONS), outcome=rng.choice(OUTCOMES),
                reason=rng.choice(REASONS), device_id=rng.choice(DEVICES),
            )
        )  # fmt: skip
    everything = await store.audit_records(limit=1000)
    queries = [
        AuditQuery(),
        AuditQuery(actor="admin:ann"),
        AuditQuery(action="revoke", outcome="refused"),
        AuditQuery(reason="unknown_issuer", device_id="d2"),
        AuditQuery(device_id="d1", after_seq=50, before_seq=200),
        AuditQuery(actor="nobody"),
    ]
    for query in queries:
        expected = [
            r for r in reversed(everything)
            if query.after_seq < r.seq < (query.before_seq or 10**9)
            and all(
                getattr(query, f) in (None, getattr(r.event, f))
                for f in ("actor", "action", "outcome", "reason", "device_id")
            )
        ]  # fmt: skip
        for limit in (1, 10, 500):
            assert await search_all(store, query, limit) == expected, (query, limit)


@pytest.mark.usefixtures("small_budget")
async def test_counts_by_group_over_a_sequence_range(store: Store, now: dt.datetime) -> None:
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    for n in range(120):
        await store.append_audit(
            AuditEvent(
                at=now + dt.timedelta(seconds=n), actor=rng.choice(ACTORS),
                action=rng.choice(ACTIONS), outcome=rng.choice(OUTCOMES),
                reason=rng.choice(REASONS),
            )
        )  # fmt: skip
    everything = await store.audit_records(limit=1000)
    for query, by in [
        (AuditQuery(), ("action", "outcome", "reason")),
        (AuditQuery(after_seq=10, before_seq=100), ("reason",)),
        (AuditQuery(action="renew"), ("actor", "outcome")),
        (AuditQuery(after_seq=200), ("reason",)),
    ]:
        expected: dict[tuple[str, ...], int] = {}
        for r in everything:
            if query.after_seq < r.seq < (query.before_seq or 10**9) and query.action in (
                None, r.event.action,
            ):  # fmt: skip
                key = tuple(getattr(r.event, f) for f in by)
                expected[key] = expected.get(key, 0) + 1
        assert await store.count_audit(query, by=by) == expected, (query, by)
