"""Renewal timing, backoff and the expired-offline decision (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from device_agent.renewal import (
    Action,
    Phase,
    RenewalPolicy,
    assess,
    backoff_delay,
    plan_after_expiry,
    renewal_time,
)

T0 = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@pytest.mark.parametrize(("rand", "expected_days"), [(0.0, 20.0), (0.999999, 17.0)])
def test_renewal_at_two_thirds_with_early_only_jitter(rand: float, expected_days: float) -> None:
    when = renewal_time(T0, T0 + 30 * DAY, RenewalPolicy(), lambda: rand)
    assert abs((when - T0) / DAY - expected_days) < 0.001


def test_renewal_fraction_and_jitter_are_configurable() -> None:
    policy = RenewalPolicy(fraction=0.5, jitter=0.0)
    assert renewal_time(T0, T0 + 10 * DAY, policy, lambda: 0.7) == T0 + 5 * DAY


def test_short_lifetime_still_renews_before_the_skewed_end() -> None:
    policy = RenewalPolicy(fraction=0.9, jitter=0.0, skew=dt.timedelta(minutes=15))
    end = T0 + dt.timedelta(minutes=40)
    assert renewal_time(T0, end, policy, lambda: 0) == end - dt.timedelta(minutes=30)
    tiny = T0 + dt.timedelta(minutes=10)
    assert renewal_time(T0, tiny, policy, lambda: 0) == T0


@pytest.mark.parametrize("rand", [0.0, 0.5, 0.999])
def test_backoff_grows_is_capped_and_never_below_the_floor(rand: float) -> None:
    policy = RenewalPolicy(backoff_floor=5, backoff_base=10, backoff_cap=600)
    delays = [backoff_delay(n, policy, lambda: rand) for n in range(1, 40)]
    assert all(5 <= d <= 600 for d in delays)
    assert delays[0] <= 10
    assert delays[-1] >= 300  # equal jitter: at least half the cap
    assert delays == sorted(delays)


def test_backoff_never_zero_even_with_zero_random() -> None:
    policy = RenewalPolicy(backoff_floor=1, backoff_base=0.001)
    assert backoff_delay(1, policy, lambda: 0.0) == 1


def test_backoff_honours_retry_after_up_to_a_cap() -> None:
    policy = RenewalPolicy(backoff_base=10, max_retry_after=120)
    assert backoff_delay(1, policy, lambda: 0, retry_after=90) == 90
    assert backoff_delay(1, policy, lambda: 0, retry_after=10_000) == 120
    assert backoff_delay(1, policy, lambda: 0, retry_after=0) == 5  # the floor


def test_skew_allowance_for_expiry() -> None:
    policy = RenewalPolicy(skew=dt.timedelta(minutes=15))
    end = T0 + 30 * DAY
    renew_at = T0 + 20 * DAY
    assert assess(end, renew_at, T0 + DAY, policy) is Phase.FRESH
    assert assess(end, renew_at, renew_at, policy) is Phase.DUE
    # A clock 10 minutes fast just after expiry: not "expired" yet, but due.
    assert assess(end, renew_at, end + dt.timedelta(minutes=10), policy) is Phase.DUE
    assert assess(end, renew_at, end + dt.timedelta(minutes=16), policy) is Phase.EXPIRED
    # Renew early rather than cut it close with a clock that may be slow.
    assert assess(end, end, end - dt.timedelta(minutes=14), policy) is Phase.DUE


def test_expired_offline_rebootstraps_when_possible() -> None:
    plan = plan_after_expiry(has_bootstrap=True, rebootstrap_refused=False, failures=0)
    assert plan.action is Action.REBOOTSTRAP
    assert plan.delay == 0


@pytest.mark.parametrize(("bootstrap", "refused"), [(False, False), (True, True)])
def test_expired_without_a_way_back_retries_slowly_and_says_so(
    bootstrap: bool, refused: bool
) -> None:
    plan = plan_after_expiry(
        has_bootstrap=bootstrap, rebootstrap_refused=refused, failures=3, rand=lambda: 0.5
    )
    assert plan.action is Action.RETRY_SLOWLY
    assert plan.delay >= 3600
    assert "expired" in plan.explanation
    assert "token" in plan.explanation


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="fraction"):
        RenewalPolicy(fraction=1.5)
    with pytest.raises(ValueError, match="floor"):
        RenewalPolicy(backoff_floor=0)
