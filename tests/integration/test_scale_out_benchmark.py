"""bench/scale_out.py still runs end to end, tiny (its figures are not judged).

In a file of its own, beside test_benchmarks.py: it needs root and network
namespaces (the multi-host cluster), and skips with the reason without them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_scale_out_benchmark_runs_tiny(tmp_path: Path) -> None:
    """One engine (Redis), 20 devices over 2 broker nodes."""
    figures = tmp_path / "scale.json"
    command = [sys.executable, str(REPO / "bench/scale_out.py"), "--engines", "redis"]
    command += ["--enrollments", "8", "--threads", "4", "--devices", "20", "--revocations", "6"]
    command += ["--json", str(figures)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if run.returncode == 2 and "cannot run" in run.stderr:
        pytest.skip(run.stderr.strip())  # not root, no `ip netns`: the reason is printed
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (redis,) = json.loads(figures.read_text())
    assert redis["engine"] == "redis"
    assert not redis["skipped"]
    assert [(row["nodes"], row["enrolled"]) for row in redis["enroll"]] == [(1, 8), (2, 8)]
    assert all(row["fleet_cpu"] > 0 for row in redis["enroll"]), redis["enroll"]
    kick = redis["kick"]
    assert (kick["connected"], kick["failed"], kick["bystanders_dropped"]) == (20, 0, 0)
    # Both broker nodes held devices and kicked some of the revoked ones.
    assert {node: len(ms) for node, ms in kick["latencies"].items()} == {
        "broker-a": 3,
        "broker-b": 3,
    }
    assert "target: revoke -> kick p99 <= 100 ms with 20 devices over 2 broker nodes" in run.stdout
