"""The simulator's clock moves server, CLI, broker and devices; the lifetime scenario."""

from __future__ import annotations

import datetime as dt
import io
import subprocess
import sys
from pathlib import Path

import pytest

from device_agent.errors import AgentError
from firmware_sim.bench import Bench, Progress
from firmware_sim.lifetime import SEED
from firmware_sim.report import write_plots
from firmware_sim.runner import LifetimeOptions, run_scenario
from firmware_sim.simclock import ClockDriver
from fleet.kernel.reasons import Reason

FIVE_YEARS = dt.timedelta(days=5 * 365)
FLEET_SIM = [sys.executable, "-c", "from firmware_sim.cli import main; main()"]


def test_a_world_five_years_ahead_enrolls_renews_connects_and_refuses_expired(
    tmp_path: Path,
) -> None:
    start = dt.datetime.now(dt.UTC) + FIVE_YEARS
    driver = ClockDriver(tmp_path / "sim-clock", start)
    bench = Bench(tmp_path / "world", 2, Progress(io.StringIO()), sim_clock=driver.clock)
    try:
        bench.setup()  # fleet init and the factory run at +5 years too
        renewing, lapsing = bench.devices
        for device in bench.devices:
            device.agent.clock = driver.clock
        enrolled = bench.enroll_all(bench.devices)
        assert all(not isinstance(out, BaseException) for _, out, _ in enrolled), enrolled
        for device in bench.devices:
            assert device.identity is not None
            # Issued by the server on simulated time: not valid on the wall clock yet.
            assert device.identity.not_before > dt.datetime.now(dt.UTC) + dt.timedelta(days=4 * 365)
            assert abs(device.identity.not_before - start) < dt.timedelta(hours=1)
        assert not bench.connect_all(bench.devices, timeout=20)  # MqttSession, dates by clock
        assert not bench.broker_sees_issued_serials(bench.devices)

        driver.move_to(25)  # past 2/3 of 30 days: due by the agent's own policy
        old = renewing.serial
        assert renewing.renew().renewed
        assert renewing.serial != old
        assert renewing.reconnect_with_current_identity(10)
        assert not bench.broker_sees_issued_serials([renewing])

        driver.move_to(45)  # the other device's 30-day certificate has expired
        broker = bench.world.broker
        assert broker is not None
        before = broker.refused(Reason.CERTIFICATE_EXPIRED.value)
        lapsing.disconnect()
        lapsing.connect(bench.broker_address, reconnect_min=0.2, reconnect_max=0.5)
        assert lapsing.session is not None
        assert not lapsing.session.wait_connected(2.0)
        assert broker.refused(Reason.CERTIFICATE_EXPIRED.value) > before
        with pytest.raises(AgentError):
            lapsing.renew()  # the server refuses it as expired (then holds the re-bootstrap)
        refusals = bench.store(
            lambda store: store.audit_records(device_id=lapsing.device_id, limit=100)
        )
        assert any(
            r.event.action == "renew" and r.event.reason == Reason.CERTIFICATE_EXPIRED.value
            for r in refusals
        ), [(r.event.action, r.event.outcome, r.event.reason) for r in refusals]
    finally:
        bench.teardown()


def test_lifetime_without_ca_events_passes_every_check(tmp_path: Path) -> None:
    print(f"seed={SEED}")
    progress = io.StringIO()
    report = run_scenario(
        "fifteen-years", 20, tmp_path / "run", Progress(progress),
        lifetime=LifetimeOptions(years=3, ca_events=False),
    )  # fmt: skip
    assert report.ok, report.render()
    assert report.devices == 20
    names = {c.name for c in report.checks}
    assert {"0 devices stranded", "0 admin actions per device",
            "every device ends connected to the broker"} <= names  # fmt: skip
    rows = [k for k in report.figures if k.startswith("year ")]
    assert rows == ["year 01", "year 02", "year 03"]
    assert "enrolled 20" in str(report.figures["year 01"])
    assert all("connected" in str(report.figures[k]) for k in rows)
    assert report.figures["outage_devices"] == 6
    assert report.figures["powered_off_devices"] == 2
    assert report.figures["renewals_per_device_max"] >= 2
    plots = write_plots(report, tmp_path / "plots")
    assert [p.name for p in plots] == ["fifteen-years-certificates-by-issuer.png"]
    assert plots[0].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_fifteen_years_with_rotations_and_a_root_rollover(tmp_path: Path) -> None:
    print(f"seed={SEED}")
    report = run_scenario("fifteen-years", 200, tmp_path / "run", Progress(io.StringIO()))
    print(report.render())
    assert report.ok, report.render()
    assert report.devices >= 200
    assert len([k for k in report.figures if k.startswith("year ")]) == 15
    assert len(write_plots(report, tmp_path / "plots")) == 1


def test_run_cli_prints_the_years_and_draws_certificates_by_issuer(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*FLEET_SIM, "run", "--scenario", "fifteen-years", "--no-rotation", "--years", "1",
         "--devices", "3", "--plots", str(tmp_path / "plots")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fifteen-years: OK" in proc.stdout
    assert "year 01" in proc.stdout
    assert "good certificates by issuer: fleet device issuing CA" in proc.stdout
    png = tmp_path / "plots" / "fifteen-years-certificates-by-issuer.png"
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
