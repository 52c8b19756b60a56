"""The lifetime scenario's plan (pure): who is away when, and what the CA operator does."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

import pytest

from firmware_sim.ca_operator import CaAction
from firmware_sim.lifetime import YEAR_DAYS, assign_absences, full_plan, quiet_plan

SEED = 1513


def test_full_plan_has_the_issue_13_events() -> None:
    plan = full_plan()
    actions = [e.action for e in plan.ca_events]
    assert plan.years == 15
    assert actions.count(CaAction.ROTATE_ISSUING) >= 2
    assert actions.count(CaAction.ROTATE_ROOT) == 1
    assert [e.day for e in plan.ca_events] == sorted(e.day for e in plan.ca_events)
    assert all(0 < e.day < plan.days for e in plan.ca_events)
    # The 30-day outage of 30% spans the first promotion.
    first_promote = next(e.day for e in plan.ca_events if e.action is CaAction.PROMOTE)
    assert plan.outage.start < first_promote < plan.outage.end
    assert (plan.outage.days, plan.outage.fraction) == (30, 0.3)
    assert (plan.powered_off.days, plan.powered_off.fraction) == (2 * YEAR_DAYS, 0.1)
    plan.check()


def test_every_promotion_follows_a_rotation_and_every_retirement_a_promotion() -> None:
    pending: list[CaAction] = []
    for event in full_plan().ca_events:
        if event.action is CaAction.PROMOTE:
            assert pending[-1:] == [CaAction.ROTATE_ISSUING]
        if event.action is CaAction.RETIRE:
            assert CaAction.PROMOTE in pending
            pending.clear()
            continue
        pending.append(event.action)


def test_a_shelf_longer_than_the_certificates_is_refused() -> None:
    plan = quiet_plan(3)
    longer = dataclasses.replace(plan, device_validity=dt.timedelta(days=plan.powered_off.end))
    with pytest.raises(ValueError, match="valid longer"):
        longer.check()
    plan.check()


def test_absences_are_disjoint_shares_of_the_fleet() -> None:
    print(f"seed={SEED}")
    ids = [f"d{i:03d}" for i in range(200)]
    plan = full_plan()
    away = assign_absences(ids, plan, random.Random(SEED))
    off = {i for i, a in away.items() if plan.powered_off in a}
    out = {i for i, a in away.items() if plan.outage in a}
    assert (len(off), len(out)) == (20, 60)
    assert not off & out
    assert away == assign_absences(ids, plan, random.Random(SEED))
