"""The overview's numbers and the device search cursor, on a real SQLite store."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.records import AuditEvent
from fleet.store.factory import open_store
from fleet.store.protocol import Store
from fleet.ui import stats
from fleet.ui.pages import before_prefix

ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
ids = st.text(alphabet=ID_CHARS, min_size=1, max_size=12)


@given(st.lists(ids, max_size=40, unique=True), ids)
def test_the_prefix_cursor_starts_exactly_at_the_first_id_with_that_prefix(
    existing: list[str], prefix: str
) -> None:
    cursor = before_prefix(prefix)
    after = sorted(i for i in existing if i > cursor)
    with_prefix = sorted(i for i in existing if i.startswith(prefix))
    assert after[: len(with_prefix)] == with_prefix


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(f"sqlite:///{tmp_path / 'fleet.db'}")
    yield opened
    await opened.close()


def event(at: dt.datetime, action: str, outcome: str, reason: str) -> AuditEvent:
    return AuditEvent(at=at, actor="device:d1", action=action, outcome=outcome, reason=reason)


async def test_audit_head_and_the_first_record_of_a_time(store: Store, now: dt.datetime) -> None:
    assert await stats.audit_head(store) == 0
    for minutes in range(0, 300, 10):  # 30 records, 10 minutes apart
        await store.append_audit(event(now + dt.timedelta(minutes=minutes), "enroll", "ok", "x"))
    assert await stats.audit_head(store) == 30
    assert await stats.first_seq_since(store, now, 30) == 1
    assert await stats.first_seq_since(store, now + dt.timedelta(minutes=55), 30) == 7
    assert await stats.first_seq_since(store, now + dt.timedelta(days=1), 30) == 31


async def test_hourly_activity_counts_enrollments_and_refusals_by_reason(
    store: Store, now: dt.datetime
) -> None:
    old = now - dt.timedelta(days=2)
    await store.append_audit(event(old, "enroll", "refused", "unknown_issuer"))  # too old
    for reason in ("bootstrap_pin_mismatch", "bootstrap_pin_mismatch", "unknown_issuer"):
        await store.append_audit(event(now - dt.timedelta(hours=2), "enroll", "refused", reason))
    for _ in range(3):
        await store.append_audit(event(now, "enroll", "allowed", "bootstrap_pinned"))
    await store.append_audit(event(now, "renew", "allowed", "renewal"))
    # An admin's refused console sign-in is not a device's refusal.
    await store.append_audit(event(now, "console_sign_in", "refused", "admin_unknown"))
    activity = await stats.hourly_activity(store, now)
    assert len(activity.bars) == stats.HOURS
    assert activity.bars[-1].enrolled == 4
    assert activity.bars[-3].refused == {"bootstrap_pin_mismatch": 2, "unknown_issuer": 1}
    assert activity.reasons == ["bootstrap_pin_mismatch", "unknown_issuer"]
    assert sum(b.total for b in activity.bars) == 7
    rects = stats.chart_rects(activity)
    assert {r.series for r in rects} == {0, 1, 2}
    tallest = max(rects, key=lambda r: r.height)
    assert tallest.height == 180  # the busiest hour fills the chart
    assert tallest.title.endswith("4 enrolled or renewed")
