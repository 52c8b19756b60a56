"""`fleet-sim run`: the scenarios by name, and running one into a report.

Every scenario starts a fresh world (data directory, `fleet serve`, embedded
broker) on a :class:`~firmware_sim.bench.Bench`, runs its devices through one
situation (firmware_sim.scenarios, or its own bench, such as the fifteen-year
lifetime on the simulator's clock), and returns a
:class:`~firmware_sim.report.Report`. The run exits 0 only if every check passed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import resource
import time
from collections.abc import Callable
from pathlib import Path

from firmware_sim.bench import Bench, Progress, describe
from firmware_sim.report import Report
from firmware_sim.scenarios import (
    broker_outage_and_recovery,
    cloned_bootstrap,
    first_boot_storm,
    manual_approval_queue,
    power_loss_during_renewal,
    renewal_wave,
    revoke_while_connected,
    server_outage_and_recovery,
)
from fleet.kernel.clock import SystemClock

# A scenario that builds its own bench (e.g. on the simulator's clock): (count, work dir,
# progress, options) -> its report.
OwnBench = Callable[[int, Path, Progress, "LifetimeOptions"], Report]


@dataclasses.dataclass(frozen=True)
class LifetimeOptions:
    """`fleet-sim run` options only the lifetime scenario reads."""

    years: int | None = None  # None: the scenario's own
    ca_events: bool = True  # False: one issuing CA and one root for the whole run


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Bench, Report], None]
    min_devices: int = 1
    registered_fraction: float = 1.0
    clock: bool = False
    broker_proxy: bool = False
    own_bench: OwnBench | None = None


def _unused(bench: Bench, report: Report) -> None:
    raise AssertionError("a scenario with its own bench is run by own_bench")


def _fifteen_years(
    count: int, work_dir: Path, progress: Progress, options: LifetimeOptions
) -> Report:
    from firmware_sim.lifetime import run_lifetime  # it builds on firmware_sim.bench

    return run_lifetime(count, work_dir, progress, years=options.years,
                        ca_events=options.ca_events)  # fmt: skip


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("first-boot-storm", first_boot_storm),
        Scenario("revoke-while-connected", revoke_while_connected, min_devices=2),
        Scenario("cloned-bootstrap", cloned_bootstrap),
        Scenario("power-loss-during-renewal", power_loss_during_renewal),
        Scenario("server-outage-and-recovery", server_outage_and_recovery, min_devices=2),
        Scenario("broker-outage-and-recovery", broker_outage_and_recovery, broker_proxy=True),
        Scenario("manual-approval-queue", manual_approval_queue, 2, registered_fraction=0.5),
        Scenario("renewal-wave", renewal_wave, clock=True),
        Scenario("fifteen-years", _unused, min_devices=200, own_bench=_fifteen_years),
    )
}


def run_scenario(
    name: str,
    devices: int,
    work_dir: Path,
    progress: Progress | None = None,
    *,
    mqtt: str = "auto",
    latency_ms: int = 0,
    clock_skew: float = 0.0,
    lifetime: LifetimeOptions = LifetimeOptions(),
) -> Report:
    scenario = SCENARIOS[name]
    progress = progress or Progress()
    if scenario.own_bench is not None:
        started = time.monotonic()
        report = scenario.own_bench(devices, work_dir, progress, lifetime)
        report.figures["wall_s"] = time.monotonic() - started
        return report
    count = max(devices, scenario.min_devices)
    report = Report(name, count)
    bench = Bench(
        work_dir,
        count,
        progress,
        registered=max(1, int(count * scenario.registered_fraction)),
        clock=SystemClock(dt.timedelta(seconds=clock_skew))
        if scenario.clock or clock_skew
        else None,
        mqtt=mqtt,
        latency_ms=latency_ms,
        broker_proxy=scenario.broker_proxy,
        clock_skew=clock_skew,
    )
    if latency_ms:
        report.figures["added_latency_ms"] = latency_ms  # to the EST server, each direction
    if clock_skew:
        report.figures["device_clock_skew_s"] = clock_skew  # devices' clocks only, not the server's
    started = time.monotonic()
    try:
        bench.setup()
        scenario.run(bench, report)
        if bench.timeline and "connected_over_time" not in report.series:
            report.series["connected_over_time"] = bench.timeline
    except Exception as exc:
        report.check("scenario ran to the end", False, describe(exc))
    finally:
        bench.teardown()
    report.figures["wall_s"] = time.monotonic() - started
    report.figures["peak_rss_mib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    return report
