"""`fleet-sim demo` end to end, as a user runs it: a subprocess, its output and exit code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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


def test_demo_on_an_unavailable_broker_says_so() -> None:
    proc = _run("demo", "--broker", "mosquitto", "--devices", "3")
    assert proc.returncode == 3
    assert "not available in this build" in proc.stderr
