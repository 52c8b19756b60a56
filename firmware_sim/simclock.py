"""The simulator's clock, driven: one file that every process of a simulated fleet reads.

``fleet.kernel.clock.SimulatedClock`` (with its guards) reads it; the simulator writes it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from fleet.kernel.clock import SimulatedClock, sim_clock_text
from fleet.kernel.files import write_atomic

DAY = dt.timedelta(days=1)


class ClockDriver:
    """Writes the clock file so that simulated time is ``start + day`` (for every process)."""

    def __init__(self, path: Path, start: dt.datetime) -> None:
        self.path = path
        self.start = start
        self.day = 0
        write_atomic(path, sim_clock_text(start - dt.datetime.now(dt.UTC)).encode())
        self.clock = SimulatedClock(path)

    def at(self, day: int) -> dt.datetime:
        return self.start + day * DAY

    def move_to(self, day: int) -> None:
        if day == self.day:
            return
        offset = self.at(day) - dt.datetime.now(dt.UTC)
        write_atomic(self.path, sim_clock_text(offset).encode())
        self.day = day
