"""Injected time: everything that computes validity takes a Clock.

Tests and the simulator move time with :class:`ManualClock`; production uses
:class:`SystemClock`. Times are always timezone-aware UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    """The UTC wall clock, optionally shifted by ``offset`` (a device clock may be wrong)."""

    def __init__(self, offset: dt.timedelta = dt.timedelta(0)) -> None:
        self.offset = offset

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start time")
        self._now = start

    def now(self) -> dt.datetime:
        return self._now

    def advance(self, delta: dt.timedelta) -> None:
        self._now += delta

    def set(self, when: dt.datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("ManualClock needs timezone-aware times")
        self._now = when
