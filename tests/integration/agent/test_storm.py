"""A 503 storm: an overloaded server (a TLS stand-in answering 503 + Retry-After in front
of the real `fleet serve`) for a while; enroll and renew ride it out without hammering."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.agent.conftest import AgentWorld
from tests.support.agent import AgentRun, StormProxy, fleet_agent, verify_identity

pytestmark = pytest.mark.needs_binary("openssl")

# The device clock runs 25 days ahead: the 30-day certificate is due for renewal
# (at 2/3 of its lifetime), not expired.
DUE = {"FLEET_AGENT_CLOCK_OFFSET": str(25 * 86400)}


@pytest.fixture
def proxy(world: AgentWorld) -> Iterator[StormProxy]:
    server = world.fleet.server
    tls = server.data_dir / "tls"
    with StormProxy(server.port, tls / "server.pem", tls / "server.key") as running:
        yield running


def _gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def test_enroll_rides_out_a_503_storm(world: AgentWorld, proxy: StormProxy, tmp_path: Path) -> None:
    state = tmp_path / "state"
    proxy.start_storm(4)
    run = world.enroll(world.fleet.new_device(), state, server=proxy.url)
    assert run.returncode == 0, run
    # One request per attempt (the first step, GET /cacerts, got the 503), then the
    # enrollment went through once the storm was over.
    assert len(proxy.refused_at) == 4, run.stderr
    assert proxy.forwarded >= 3  # cacerts (unverified, pinned), simpleenroll, proof
    attempts = [*proxy.refused_at, proxy.forwarded_at[0]]
    gaps = _gaps(attempts)
    # Retry-After: 1 is honoured (the backoff alone would start at 0.25-0.5 s) ...
    assert min(gaps) >= 0.95, gaps
    # ... and the backoff grows: the 4th failure waits 2-4 s (base 0.5 s x 2^3, jittered).
    assert gaps[-1] >= 1.9, gaps
    delays = [float(d) for d in re.findall(r"retrying in ([\d.]+) s", run.stderr)]
    assert len(delays) == 4, run.stderr
    assert delays[:2] == [1.0, 1.0]
    assert 1.0 <= delays[2] <= 2.0
    assert 2.0 <= delays[3] <= 4.0
    assert "503" in run.stderr
    assert verify_identity(state)["state"] == "ok"


def _renew_until_renewed(state: Path, *, deadline: float) -> list[AgentRun]:
    """Call `fleet-agent renew` as often as a careless timer would (every 50 ms)."""
    runs = []
    while time.monotonic() < deadline:
        run = fleet_agent(
            "renew", "--state-dir", state, env={**DUE, "FLEET_AGENT_MAX_RETRY_AFTER": "1.5"}
        )
        runs.append(run)
        if run.returncode == 0:
            return runs
        time.sleep(0.05)
    raise AssertionError(f"not renewed in time: {runs[-1]}")


def test_renew_rides_out_a_503_storm_with_capped_retry_after(
    world: AgentWorld, proxy: StormProxy, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    enrolled = world.enroll(world.fleet.new_device(), state, server=proxy.url)
    assert enrolled.returncode == 0, enrolled
    before = verify_identity(state)
    # The storm says "come back in an hour"; this agent caps Retry-After at 1.5 s.
    proxy.retry_after = "3600"
    proxy.start_storm(3)
    started = time.monotonic()
    runs = _renew_until_renewed(state, deadline=started + 12)
    assert "renewed" in runs[-1].stdout, runs[-1]
    assert len(proxy.refused_at) == 3
    gaps = _gaps(proxy.refused_at)
    assert all(1.45 <= gap < 5 for gap in gaps), gaps  # capped, not an hour; never sooner
    failed = runs[:-1]
    assert all(run.returncode == 4 for run in failed), failed  # transient, retry later
    # Most calls sent nothing: the recorded backoff stopped them before any request.
    backing_off = [run for run in failed if "backing off" in run.stderr]
    assert len(backing_off) == len(failed) - 3, [run.stderr for run in failed]
    assert all("next attempt at" in run.stderr for run in backing_off)
    after = verify_identity(state)
    assert after["serial"] != before["serial"]
    assert after["failures"] == 0
