"""Exponential backoff with jitter: bounded, doubling, capped."""

from __future__ import annotations

from fleet.notify.webhooks import Backoff


def test_doubles_from_base_with_jitter_between_half_and_full() -> None:
    backoff = Backoff(base=0.5, cap=60.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (8, 60.0)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered, so receivers are not hit in lockstep


def test_capped_even_for_huge_attempt_numbers() -> None:
    assert Backoff(base=0.5, cap=60.0).delay(10_000) <= 60.0
