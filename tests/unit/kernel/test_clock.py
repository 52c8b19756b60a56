"""The simulator's clock: one file moves every process, and it cannot be slipped in."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from device_agent.testhooks import clock_from_env
from fleet.kernel.clock import (
    SIM_CLOCK_ENV,
    ShiftedClock,
    SimulatedClock,
    SystemClock,
    clock_from_environ,
    parse_sim_clock,
    sim_clock_text,
)
from fleet.kernel.errors import ConfigError
from fleet.kernel.files import write_atomic

FIVE_YEARS = dt.timedelta(days=5 * 365)


def clock_file(tmp_path: Path, offset: dt.timedelta = FIVE_YEARS) -> Path:
    path = tmp_path / "sim-clock"
    write_atomic(path, sim_clock_text(offset).encode())
    return path


def close_to(a: dt.datetime, b: dt.datetime) -> bool:
    return abs(a - b) < dt.timedelta(seconds=5)


def test_without_the_variable_it_is_the_system_clock() -> None:
    assert isinstance(clock_from_environ({}), SystemClock)
    assert isinstance(clock_from_environ({SIM_CLOCK_ENV: ""}), SystemClock)


def test_the_file_moves_now_and_a_rewrite_is_seen(tmp_path: Path) -> None:
    path = clock_file(tmp_path)
    clock = clock_from_environ({SIM_CLOCK_ENV: str(path)})
    assert isinstance(clock, SimulatedClock)
    assert close_to(clock.now(), dt.datetime.now(dt.UTC) + FIVE_YEARS)
    write_atomic(path, sim_clock_text(FIVE_YEARS * 2).encode())
    assert close_to(clock.now(), dt.datetime.now(dt.UTC) + FIVE_YEARS * 2)


def test_agent_offset_adds_to_the_simulated_clock(tmp_path: Path) -> None:
    path = clock_file(tmp_path)
    env = {SIM_CLOCK_ENV: str(path), "FLEET_AGENT_CLOCK_OFFSET": "3600"}
    clock = clock_from_env(env)
    assert isinstance(clock, ShiftedClock)
    expected = dt.datetime.now(dt.UTC) + FIVE_YEARS + dt.timedelta(hours=1)
    assert close_to(clock.now(), expected)


def test_relative_path_is_refused() -> None:
    with pytest.raises(ConfigError, match="absolute"):
        clock_from_environ({SIM_CLOCK_ENV: "sim-clock"})


def test_missing_file_is_an_error_not_the_wall_clock(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        clock_from_environ({SIM_CLOCK_ENV: str(tmp_path / "absent")})


def test_a_file_others_may_write_is_refused(tmp_path: Path) -> None:
    path = clock_file(tmp_path)
    os.chmod(path, 0o664)
    with pytest.raises(ConfigError, match="writable by nobody else"):
        SimulatedClock(path)


def test_a_file_that_becomes_writable_stops_the_clock(tmp_path: Path) -> None:
    path = clock_file(tmp_path)
    clock = SimulatedClock(path)
    path.write_text(sim_clock_text(FIVE_YEARS * 3))  # new content, then opened up
    os.chmod(path, 0o660)
    with pytest.raises(ConfigError, match="writable by nobody else"):
        clock.now()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "offset_seconds = 10\n",  # no magic line
        "fleet-simulated-clock v1\n",
        "fleet-simulated-clock v1\noffset_seconds = ten\n",
        "fleet-simulated-clock v1\noffset_seconds = nan\n",
        "fleet-simulated-clock v1\noffset_seconds = inf\n",
        "fleet-simulated-clock v1\noffset_seconds = 1e12\n",  # beyond 100 years
        "fleet-simulated-clock v1\noffset = 10\n",
        "fleet-simulated-clock v1\noffset_seconds = 10\nextra\n",
        "fleet-simulated-clock v2\noffset_seconds = 10\n",
    ],
)
def test_anything_but_the_exact_format_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="not a simulated clock file"):
        parse_sim_clock(text, where="test")


def test_written_text_parses_back() -> None:
    offset = dt.timedelta(days=5478, seconds=12.5)
    assert parse_sim_clock(sim_clock_text(offset), where="test") == offset
    assert parse_sim_clock(sim_clock_text(-offset), where="test") == -offset


def test_shifted_clock_follows_its_base(tmp_path: Path) -> None:
    base = SimulatedClock(clock_file(tmp_path))
    device = ShiftedClock(base, dt.timedelta(minutes=-10))
    assert close_to(device.now(), base.now() - dt.timedelta(minutes=10))
