"""The EST benchmark still runs end to end (a handful of requests; its figures are not judged)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.binaries import need_binary

REPO = Path(__file__).resolve().parents[2]


def test_est_benchmark_runs_every_scenario(tmp_path: Path) -> None:
    need_binary("nginx")
    figures = tmp_path / "est.json"
    command = [sys.executable, str(REPO / "bench/est_enroll.py"), "--requests", "20"]
    command += ["--warmup", "5", "--concurrency", "2", "--json", str(figures)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads(figures.read_text())
    scenarios = {s["key"]: s for s in data["scenarios"]}
    assert set(scenarios) == {
        "nginx-static",
        "fleet-direct",
        "nginx+fleet-proxy",
        "fleet-direct-2w",
        "naive",
        "fleet-direct:probe",  # the same connections with a GET: where fleet and naive differ
        "naive:probe",
    }
    for scenario in scenarios.values():
        assert scenario["ok"] == 20, scenario
        assert scenario["tls"].startswith("TLSv1.3"), scenario
    # Each target is judged on the fleet process alone, and says so.
    assert {t["process"] for t in data["targets"].values()} == {"fleet"}
    assert "nginx" in scenarios["nginx+fleet-proxy"]["server_cpu_ms_per_request_by_process"]
    assert "target: fleet direct" in run.stdout
    split = data["fleet_vs_naive_ms"]
    assert set(split) == {"connection", "enrollment_work"}
    # Twenty connections may cost less than a few 10 ms clock ticks: shape, not size.
    assert set(split["connection"]) == set(split["enrollment_work"]) == {"fleet", "naive"}
    assert "where: the connection" in run.stdout


def test_store_benchmark_runs(tmp_path: Path) -> None:
    # SQLite (the baseline) and PostgreSQL only: the Redis scenario is the same code
    # path with another URL, and every scenario starts a server (suite time).
    figures = tmp_path / "stores.json"
    command = [sys.executable, str(REPO / "bench/store_enroll.py"), "--requests", "10"]
    command += ["--warmup", "2", "--concurrency", "2", "--stores", "sqlite,postgres"]
    command += ["--json", str(figures)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads(figures.read_text())
    assert set(data) == {"sqlite", "postgres"}
    for name, store in data.items():
        assert store["ok"] == 10, (name, store)
    # The store server's CPU is counted (the key is there), but ten enrollments may
    # cost a PostgreSQL backend less than one 10 ms clock tick: > 0 failed in CI.
    assert data["postgres"]["store_cpu_ms_per_enrollment"] >= 0
    assert "store server" in run.stdout
    assert "postgres vs sqlite" in run.stdout


def test_enrollment_work_benchmark_runs() -> None:
    command = [sys.executable, str(REPO / "bench/est_work.py"), "--devices", "20", "--rounds", "2"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for line in ("fleet (no tickets)", "naive prototype, all of it", "chain check", "after two"):
        assert line in run.stdout, run.stdout
