"""What the overview shows, read from the store through its protocol.

The audit log is read by sequence only (the Store offers no time index), so
the newest record and the first record of each of the last 24 hours are found
by searching on the sequence: O(log n) one-record reads instead of a scan; the
store then counts each hour's records where they are (``count_audit``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter

from fleet.records import AuditQuery
from fleet.store.broker_positions import BrokerPosition
from fleet.store.protocol import Store

HOURS = 24
ENROLL_ACTIONS = frozenset({"enroll", "renew"})
TOP_REASONS = 5


async def audit_head(store: Store) -> int:
    """Sequence of the newest audit record (0: empty log)."""
    high = 1
    while await store.audit_records(after_seq=high - 1, limit=1):
        high *= 2
    low = high // 2  # record `low` exists (or low == 0); record `high` does not
    while high - low > 1:
        mid = (low + high) // 2
        if await store.audit_records(after_seq=mid - 1, limit=1):
            low = mid
        else:
            high = mid
    return low


async def first_seq_since(store: Store, since: dt.datetime, head: int) -> int:
    """The first sequence whose record is at or after ``since`` (head + 1: none).
    Assumes records are appended in time order, as every writer does."""
    low, high = 1, head + 1
    while low < high:
        mid = (low + high) // 2
        page = await store.audit_records(after_seq=mid - 1, limit=1)
        if page and page[0].event.at < since:
            low = mid + 1
        else:
            high = mid
    return low


@dataclasses.dataclass(frozen=True, slots=True)
class HourBar:
    start: dt.datetime
    enrolled: int
    refused: dict[str, int]  # reason -> count (top reasons, the rest as "other")

    @property
    def total(self) -> int:
        return self.enrolled + sum(self.refused.values())


@dataclasses.dataclass(frozen=True, slots=True)
class Activity:
    bars: list[HourBar]
    reasons: list[str]  # refusal reasons in legend order


async def hourly_activity(store: Store, now: dt.datetime) -> Activity:
    """Enrollments and renewals allowed, and refusals by reason, per hour, last 24 hours:
    each hour is a sequence range (found by binary search) the store counts in place."""
    end = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    start = end - dt.timedelta(hours=HOURS)
    head = await audit_head(store)
    bounds = [
        await first_seq_since(store, start + dt.timedelta(hours=h), head) for h in range(HOURS + 1)
    ]
    enrolled: Counter[int] = Counter()
    refused: dict[int, Counter[str]] = {}
    reason_totals: Counter[str] = Counter()
    for hour in range(HOURS):
        if bounds[hour] == bounds[hour + 1]:
            continue  # no record in that hour
        hour_range = AuditQuery(after_seq=bounds[hour] - 1, before_seq=bounds[hour + 1])
        counts = await store.count_audit(hour_range, by=("action", "outcome", "reason"))
        for (action, outcome, reason), n in counts.items():
            if action not in ENROLL_ACTIONS:
                continue  # an admin's refused sign-in or role is no enrollment
            if outcome == "allowed":
                enrolled[hour] += n
            elif outcome == "refused":
                refused.setdefault(hour, Counter())[reason] += n
                reason_totals[reason] += n
    top = [reason for reason, _ in reason_totals.most_common(TOP_REASONS)]
    reasons = top + (["other"] if len(reason_totals) > len(top) else [])
    bars = []
    for hour in range(HOURS):
        per_reason: dict[str, int] = {}
        for reason, count in refused.get(hour, Counter()).items():
            key = reason if reason in top else "other"
            per_reason[key] = per_reason.get(key, 0) + count
        bars.append(HourBar(start + dt.timedelta(hours=hour), enrolled[hour], per_reason))
    return Activity(bars, reasons)


@dataclasses.dataclass(frozen=True, slots=True)
class ChartRect:
    x: float
    y: float
    width: float
    height: float
    series: int  # 0: enrolled; 1..n: refusal reasons in legend order
    title: str


def chart_rects(activity: Activity, *, width: int = 720, height: int = 180) -> list[ChartRect]:
    """Bars of the activity chart in SVG user units: per hour, enrolled on the left and
    refusals stacked on the right; all scaled to the busiest hour."""
    peak = max([max(b.enrolled, sum(b.refused.values())) for b in activity.bars] + [1])
    slot = width / HOURS
    bar = slot * 0.4
    rects = []
    for i, b in enumerate(activity.bars):
        label = b.start.strftime("%H:00")
        x = i * slot + slot * 0.1
        if b.enrolled:
            h = height * b.enrolled / peak
            rects.append(
                ChartRect(x, height - h, bar, h, 0, f"{label}: {b.enrolled} enrolled or renewed")
            )
        top = float(height)
        for series, reason in enumerate(activity.reasons, start=1):
            count = b.refused.get(reason, 0)
            if count:
                h = height * count / peak
                top -= h
                rects.append(
                    ChartRect(x + bar, top, bar, h, series, f"{label}: {count} refused ({reason})")
                )
    return rects


# A broker reports at least every 10 s while alive (CacheSettings.report_every).
BROKER_STALE_AFTER = dt.timedelta(seconds=60)


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerLag:
    name: str
    lag: int  # feed head - the broker's position (events it has not applied)
    age: dt.timedelta  # since its last report
    stale: bool  # no report for BROKER_STALE_AFTER: whatever it said may be old

    @property
    def age_text(self) -> str:
        seconds = max(0, int(self.age.total_seconds()))
        if seconds < 120:
            return f"{seconds} s"
        if seconds < 7200:
            return f"{seconds // 60} min"
        return f"{seconds // 3600} h"


def broker_lags(positions: list[BrokerPosition], head: int, now: dt.datetime) -> list[BrokerLag]:
    """Each broker's lag behind the feed head and the age of its report; stale first."""
    lags = [
        BrokerLag(p.name, max(0, head - p.seq), now - p.reported_at,
                  now - p.reported_at > BROKER_STALE_AFTER)
        for p in positions
    ]  # fmt: skip
    return sorted(lags, key=lambda b: (not b.stale, b.name))


async def devices_by_state(store: Store) -> dict[str, int]:
    return {state.value: n for state, n in (await store.count_devices_by_state()).items()}


async def devices_expiring(store: Store, now: dt.datetime, days: int) -> int:
    """Devices whose newest good certificate expires within ``days``."""
    return await store.count_expiring_devices(now + dt.timedelta(days=days))
