"""Each `fleet-sim run` scenario with a few devices against a real server and broker."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware_sim.bench import Bench, Progress
from firmware_sim.report import Report
from firmware_sim.runner import SCENARIOS, run_scenario
from firmware_sim.scenarios import _revoke

FLEET_SIM = [sys.executable, "-c", "from firmware_sim.cli import main; main()"]


@pytest.mark.parametrize(
    "name",
    [n for n, s in SCENARIOS.items() if s.own_bench is None],  # those: tests/.../test_lifetime.py
)
def test_scenario_passes_every_check(name: str, tmp_path: Path) -> None:
    progress = io.StringIO()
    report = run_scenario(name, 4, tmp_path, Progress(progress))
    assert report.ok, report.render()
    assert len(report.checks) >= 4
    assert report.figures["wall_s"] > 0
    assert "[" in progress.getvalue() or "setting up" in progress.getvalue()
    data = report.to_json()
    assert data["ok"] is True
    assert json.loads(json.dumps(data))["scenario"] == name


def test_run_cli_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [*FLEET_SIM, "run", "--scenario", "first-boot-storm", "--devices", "3",
         "--json", str(out), "--plots", str(tmp_path / "plots")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "first-boot-storm: OK" in proc.stdout
    assert "enroll_p95_s" in proc.stdout
    assert "first boot (EST)" in proc.stderr  # the progress line
    report = json.loads(out.read_text())
    assert report["ok"] is True
    assert report["devices"] == 3
    assert len(report["series"]["enroll_latency_s"]) == 3
    plots = sorted((tmp_path / "plots").glob("*.png"))
    assert [p.name for p in plots] == [
        "first-boot-storm-connected-devices.png",
        "first-boot-storm-enrollment-latency.png",
    ]
    assert f"plots: {tmp_path / 'plots'}" in proc.stdout
    for path in plots:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), path
        assert len(data) > 10_000, f"{path}: {len(data)} bytes"


def test_revoke_scenario_plots_all_three(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*FLEET_SIM, "run", "--scenario", "revoke-while-connected", "--devices", "4",
         "--plots", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == [
        "revoke-while-connected-connected-devices.png",
        "revoke-while-connected-enrollment-latency.png",
        "revoke-while-connected-revoke-to-disconnect.png",
    ]
    for name in names:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert len(data) > 10_000


def test_run_without_matplotlib_still_works_and_says_plots_were_skipped(tmp_path: Path) -> None:
    no_matplotlib = (
        "import sys; sys.modules['matplotlib'] = None; from firmware_sim.cli import main; main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", no_matplotlib, "run", "--scenario", "first-boot-storm",
         "--devices", "1", "--plots", str(tmp_path / "plots")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "first-boot-storm: OK" in proc.stdout
    assert "plots skipped: matplotlib is not installed" in proc.stdout
    assert not (tmp_path / "plots").exists()


def test_run_cli_refuses_an_unknown_scenario() -> None:
    proc = subprocess.run(
        [*FLEET_SIM, "run", "--scenario", "meteor-strike"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unknown scenario" in proc.stderr


def test_first_boot_storm_with_light_sessions_holds_them_all_open(tmp_path: Path) -> None:
    """The scale path (`--mqtt light`, the default above 200 devices) with a few devices."""
    report = run_scenario("first-boot-storm", 6, tmp_path, Progress(io.StringIO()), mqtt="light")
    assert report.ok, report.render()
    assert report.figures["connect_mode"] == "light asyncio MQTT client"
    assert report.figures["connected_at_once"] == 6
    assert report.figures["connect_waves"] == 1
    assert report.figures["peak_rss_mib"] > 0
    assert max(n for _, n in report.series["connected_over_time"]) == 6
    assert report.series["connected_over_time"][-1][1] == 0  # all closed at the end
    assert "6/6 connected (light sessions; 6 held open at once" in report.render()


def test_light_session_of_a_revoked_device_is_not_admitted(tmp_path: Path) -> None:
    bench = Bench(tmp_path, 2, Progress(io.StringIO()), mqtt="light")
    try:
        bench.setup()
        for device in bench.devices:
            device.enroll(max_wait=10)
        revoked, good = bench.devices
        bench.store(lambda s: _revoke(s, revoked.device_id))
        deadline = time.monotonic() + 10
        while True:  # the broker applies the revocation feed within milliseconds
            report = Report("light", 2)
            missing = bench.connect_all_light(bench.devices, report)
            if missing == [revoked.device_id] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert missing == [revoked.device_id]
        assert report.figures["connected_at_once"] == 1
        assert good.device_id not in missing
    finally:
        bench.teardown()


def test_added_latency_to_the_est_server_shows_in_enrollment_latency(tmp_path: Path) -> None:
    """`--latency-ms`: a loopback proxy delays the EST server; devices still enroll, slower."""
    report = run_scenario("first-boot-storm", 2, tmp_path, Progress(io.StringIO()), latency_ms=200)
    assert report.ok, report.render()
    assert report.figures["added_latency_ms"] == 200
    # TLS handshake + request: at least one round trip, i.e. 2 x 200 ms more
    assert float(report.figures["enroll_p50_s"]) >= 0.4
    assert "added_latency_ms" in report.render()


def test_broker_outage_devices_back_off_then_all_return(tmp_path: Path) -> None:
    """The broker is unreachable (proxy drops and refuses) for a while, then reachable again."""
    report = run_scenario("broker-outage-and-recovery", 3, tmp_path, Progress(io.StringIO()))
    assert report.ok, report.render()
    names = [c.name for c in report.checks]
    assert "no reconnect tight loop" in names
    assert "every device reconnected after the outage" in names
    assert int(report.figures["reconnect_attempts_during_outage"]) >= 3  # each one tried
    assert float(report.figures["broker_outage_s"]) >= 3.0


def test_max_reconnect_attempts_follows_the_backoff() -> None:
    from firmware_sim.scenarios import max_reconnect_attempts

    assert max_reconnect_attempts(0.4, 1.0, 30.0) == 1  # the first, at once
    assert max_reconnect_attempts(3.0, 1.0, 30.0) == 3  # at 0, >= 0.5, >= 1.5
    assert max_reconnect_attempts(100.0, 1.0, 2.0) == 101  # capped: at 0, 0.5, then one per >= 1 s


@pytest.mark.parametrize("skew", [-600, 600])
def test_first_boot_storm_with_device_clock_skew(skew: int, tmp_path: Path) -> None:
    """`--clock-skew`: the devices' clocks are ten minutes off; all still enroll and connect."""
    proc = subprocess.run(
        [*FLEET_SIM, "run", "--scenario", "first-boot-storm", "--devices", "3",
         "--clock-skew", str(skew), "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "device_clock_skew_s" in proc.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["figures"]["device_clock_skew_s"] == skew
    assert {c["name"]: c["passed"] for c in report["checks"]} == {
        "all enrolled": True,
        "all connected over mTLS": True,
        "broker sees issued serials": True,
        "server lists all active": True,
    }
