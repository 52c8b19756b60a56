"""`fleet-sim demo` end to end, as a user runs it: a subprocess, its output and exit code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.binaries import strict

FLEET_SIM = [sys.executable, "-c", "from firmware_sim.cli import main; main()"]


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLEET_SIM, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_verifies_every_step_and_cleans_up() -> None:
    proc = _run("demo", "--devices", "5")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for line in (
        "✓ 5 devices sensor-0001 … sensor-0005, manifest.csv written",
        "✓ 5 devices registered",
        "5/5 enrolled in",
        "✓ the broker admitted 5/5, each with the serial it was issued",
        "✓ the observer received 5/5 readings",
        "the broker now sees",
        "kicked live",
        "its reconnect was refused (revoked)",
        "flagged possible_clone",
        "demo OK: all 12 steps verified",
    ):
        assert line in out, f"missing {line!r} in:\n{out}"
    assert "✗" not in out
    # The renewal changed the serial, and the broker saw the new one.
    renewed = re.search(r"serial (\w+)… → (\w+)…; the broker now sees (\w+)…", out)
    assert renewed is not None
    assert renewed[1] != renewed[2] == renewed[3]
    # Everything it started is gone: the server process and the temporary directory.
    work = re.search(r"^work directory: (.+)$", out, re.MULTILINE)
    pid = re.search(r"\(pid (\d+)\)", out)
    assert work is not None
    assert pid is not None
    assert not Path(work[1]).exists()
    assert not _pid_alive(int(pid[1]))


def test_demo_keep_leaves_the_work_directory(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = _run("demo", "--devices", "3", "--work-dir", str(work))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (work / "fleet-data" / "fleet.toml").is_file()
    assert (work / "factory" / "manifest.csv").is_file()
    assert (work / "demo.log").is_file()
    pid = re.search(r"\(pid (\d+)\)", proc.stdout)
    assert pid is not None
    assert not _pid_alive(int(pid[1]))


def test_demo_on_mosquitto_verifies_every_step_and_cleans_up() -> None:
    from firmware_sim.mosquitto import missing_requirements

    missing = missing_requirements()
    if missing:
        message = f"mosquitto demo needs {', '.join(missing)}"
        if strict():
            pytest.fail(f"FLEET_STRICT=1: {message}")
        pytest.skip(message)
    proc = _run("demo", "--devices", "3", "--broker", "mosquitto")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for line in (
        "Mosquitto + fleet plugin",
        "No monitoring subscriber here",
        "✓ the plugin accepted 3/3 (fleet_mosquitto_connects_accepted 0 → 3",
        "✓ the broker received 3/3 readings",
        "the plugin accepted its reconnect with the new certificate",
        "kicked live",
        "its reconnect was refused (revoked)",
        "flagged possible_clone",
        "demo OK: all 12 steps verified",
    ):
        assert line in out, f"missing {line!r} in:\n{out}"
    assert "✗" not in out
    # The revoked device's reconnect raised the plugin's refusals of a revoked credential.
    refused = re.search(r'refused\{reason=~"…_revoked"\} (\d+) → (\d+)', out)
    assert refused is not None
    assert int(refused[2]) > int(refused[1])
    work = re.search(r"^work directory: (.+)$", out, re.MULTILINE)
    assert work is not None
    assert not Path(work[1]).exists()
    # Everything it started is gone: fleet serve, mosquitto and the sidecar.
    found = re.findall(r"\(pid (\d+)\)|mosquitto pid (\d+)|sidecar pid (\d+)", out)
    pids = [int(group) for groups in found for group in groups if group]
    assert len(pids) == 3
    assert not any(_pid_alive(pid) for pid in pids)
