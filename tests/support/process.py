"""Stopping the third-party processes tests start — ours only, by their PID."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen[bytes] | None, *, grace: float = 10) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; close a piped stderr."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    if proc.stderr is not None:
        proc.stderr.close()
