"""Each `fleet-sim run` scenario with a few devices against a real server and broker."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_sim.scenarios import SCENARIOS, Progress, run_scenario

FLEET_SIM = [sys.executable, "-c", "from firmware_sim.cli import main; main()"]


@pytest.mark.parametrize("name", list(SCENARIOS))
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


def test_run_cli_refuses_an_unknown_scenario() -> None:
    proc = subprocess.run(
        [*FLEET_SIM, "run", "--scenario", "meteor-strike"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unknown scenario" in proc.stderr
