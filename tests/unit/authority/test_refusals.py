"""The refusal budget: unauthenticated refusals are written within it, the rest counted."""

from __future__ import annotations

import collections
import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.authority.refusals import RefusalAudit, RefusalBudget
from fleet.records import AuditEvent

T0 = dt.datetime(2026, 12, 6, 5, 0, 0, tzinfo=dt.UTC)


def test_one_key_gets_per_key_records_a_minute_then_the_next_says_how_many_were_left_out() -> None:
    budget = RefusalBudget(per_key=3, overall=100)
    answers = [budget.admit("a", T0 + dt.timedelta(seconds=i)) for i in range(10)]
    assert answers == [0, 0, 0, None, None, None, None, None, None, None]
    assert budget.admit("b", T0) == 0  # another key has its own share
    assert budget.admit("a", T0 + dt.timedelta(minutes=1)) == 7  # next minute: the count


def test_the_overall_cap_holds_whatever_the_keys() -> None:
    budget = RefusalBudget(per_key=3, overall=5)
    written = [budget.admit(f"k{i}", T0) for i in range(20)]
    assert sum(answer is not None for answer in written) == 5


def test_suppressed_counts_are_kept_for_a_bounded_number_of_keys() -> None:
    budget = RefusalBudget(per_key=1, overall=1, max_keys=10)
    for i in range(1000):
        budget.admit(f"k{i}", T0)
    assert len(budget._suppressed) == 10


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcde"), st.integers(min_value=0, max_value=300)),
        max_size=300,
    ),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=12),
)
def test_no_window_ever_writes_more_than_the_budget_and_nothing_is_lost_unsaid(
    calls: list[tuple[str, int]], per_key: int, overall: int
) -> None:
    budget = RefusalBudget(per_key=per_key, overall=overall)
    per_window: collections.Counter[tuple[int, str]] = collections.Counter()
    total: collections.Counter[int] = collections.Counter()
    said: collections.Counter[str] = collections.Counter()
    written: collections.Counter[str] = collections.Counter()
    for key, second in sorted(calls, key=lambda call: call[1]):
        answer = budget.admit(key, T0 + dt.timedelta(seconds=second))
        if answer is not None:
            per_window[(second // 60, key)] += 1
            total[second // 60] += 1
            said[key] += answer
            written[key] += 1
    assert all(n <= per_key for n in per_window.values())
    assert all(n <= overall for n in total.values())
    for key in "abcde":
        sent = sum(1 for k, _ in calls if k == key)
        pending = budget._suppressed.get(key, 0)
        assert written[key] + said[key] + pending == sent


class _Log:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def append_audit(self, event: AuditEvent) -> None:
        self.events.append(event)


async def test_the_record_written_after_a_flood_carries_the_count() -> None:
    log = _Log()
    audit = RefusalAudit(log, RefusalBudget(per_key=2, overall=100))  # type: ignore[arg-type]
    for i in range(5):
        event = AuditEvent(T0 + dt.timedelta(seconds=i), "unauthenticated", "enroll",
                           "refused", "unknown_issuer", device_id="dev-1")  # fmt: skip
        await audit.record(event, "192.0.2.7")
    late = AuditEvent(T0 + dt.timedelta(minutes=1), "unauthenticated", "enroll", "refused",
                      "unknown_issuer", device_id="dev-1")  # fmt: skip
    await audit.record(late, "192.0.2.7")
    assert [e.detail.get("suppressed") for e in log.events] == [None, None, "3"]
