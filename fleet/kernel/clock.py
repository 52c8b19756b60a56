"""Injected time: everything that computes validity takes a Clock.

Tests move time with :class:`ManualClock`; production uses :class:`SystemClock`;
the simulator moves every process of a fleet together with :class:`SimulatedClock`
(see the guards beside it). Times are always timezone-aware UTC.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from fleet.kernel.errors import ConfigError


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


class ShiftedClock:
    """Another clock, ``offset`` ahead (negative: behind): a device whose clock is wrong."""

    def __init__(self, base: Clock, offset: dt.timedelta) -> None:
        self.base = base
        self.offset = offset

    def now(self) -> dt.datetime:
        return self.base.now() + self.offset


# -- the simulator's clock -------------------------------------------------------------------
#
# ``fleet serve``, the ``fleet`` CLI, the agent and the embedded broker are separate processes
# (or threads) that the simulator must move through years together. They share one small file
# holding "how far simulated time is ahead of the wall clock"; each reads it again only when
# its stat changes (one stat per ``now()``). Guards, so that production can never be moved:
# it is used only when FLEET_SIM_CLOCK_FILE names it (nobody sets that by accident, and
# whoever can set a server's environment can already do worse), the file must start with
# SIM_CLOCK_MAGIC, be owned by the user running the process and be writable by nobody else,
# and any problem with it is an error rather than a silent fall back to another time.
# `fleet serve` logs a warning when it runs on this clock.

SIM_CLOCK_ENV = "FLEET_SIM_CLOCK_FILE"
SIM_CLOCK_MAGIC = "fleet-simulated-clock v1"


def sim_clock_text(offset: dt.timedelta) -> str:
    """The clock file's content for ``offset`` (what the simulator writes, atomically)."""
    return f"{SIM_CLOCK_MAGIC}\noffset_seconds = {offset.total_seconds()!r}\n"


class SimulatedClock:
    """The wall clock plus the offset held in a simulator's clock file (simulation only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._offset = dt.timedelta(0)
        self._refresh()

    @property
    def offset(self) -> dt.timedelta:
        self._refresh()
        return self._offset

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def _refresh(self) -> None:
        try:
            info = os.stat(self.path)
        except OSError as exc:
            raise ConfigError(
                f"{SIM_CLOCK_ENV}={self.path}: cannot read the simulated clock: {exc.strerror}"
            ) from exc
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return
        if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigError(
                f"{SIM_CLOCK_ENV}={self.path}: refused: the clock file must belong to this "
                "user and be writable by nobody else"
            )
        try:
            text = self.path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{SIM_CLOCK_ENV}={self.path}: cannot read it: {exc}") from exc
        self._offset = parse_sim_clock(text, where=f"{SIM_CLOCK_ENV}={self.path}")
        self._stamp = stamp


def parse_sim_clock(text: str, *, where: str) -> dt.timedelta:
    """The offset in a clock file's ``text``; ConfigError unless it is exactly that."""
    lines = text.splitlines()
    key, _, value = (lines[1] if len(lines) == 2 else "").partition("=")
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if (
        lines[:1] != [SIM_CLOCK_MAGIC]
        or key.strip() != "offset_seconds"
        or not (math.isfinite(seconds) and abs(seconds) <= MAX_SIM_OFFSET.total_seconds())
    ):
        raise ConfigError(
            f"{where}: not a simulated clock file",
            hint=f"It holds two lines: {SIM_CLOCK_MAGIC!r} and 'offset_seconds = N' "
            f"(|N| at most {MAX_SIM_OFFSET.days} days).",
        )
    return dt.timedelta(seconds=seconds)


MAX_SIM_OFFSET = dt.timedelta(days=100 * 366)


def clock_from_environ(environ: Mapping[str, str]) -> Clock:
    """The clock a process runs on: the system clock, or the simulator's when it names one."""
    raw = environ.get(SIM_CLOCK_ENV, "")
    if not raw:
        return SystemClock()
    path = Path(raw)
    if not path.is_absolute():
        raise ConfigError(f"{SIM_CLOCK_ENV}={raw!r} must be an absolute path")
    return SimulatedClock(path)
