"""Suite-wide fixtures."""

from __future__ import annotations

import datetime as dt

import pytest

from fleet.kernel.clock import ManualClock


@pytest.fixture
def now() -> dt.datetime:
    """A fixed instant, so validity arithmetic in tests is exact."""
    return dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture
def clock(now: dt.datetime) -> ManualClock:
    return ManualClock(now)
