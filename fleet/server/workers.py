"""`--workers N`: N server processes sharing one port (SO_REUSEPORT) and the store.

The supervisor starts the workers, forwards SIGTERM/SIGINT (stop) and SIGHUP
(re-read the issuing CAs, ``fleet.server.issuer_watch``), and restarts a
worker that dies — unless workers keep dying right after start, which means
a configuration or environment problem that restarting will not fix.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

log = logging.getLogger("fleet.server.workers")

_EARLY_DEATH_SECONDS = 5.0
_MAX_EARLY_DEATHS = 5


def supervise(worker_argv: Sequence[str], count: int) -> int:
    """Run ``count`` workers until signalled; return the exit code."""
    metrics_dir = tempfile.mkdtemp(prefix="fleet-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    stopping = False

    def start() -> tuple[subprocess.Popen[bytes], float]:
        return subprocess.Popen([sys.executable, *worker_argv], env=env), time.monotonic()

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc, _ in workers:
            if proc.poll() is None:
                proc.send_signal(signum)

    def forward_hup(signum: int, _frame: object) -> None:
        for proc, _ in workers:
            if proc.poll() is None:
                proc.send_signal(signum)

    workers = [start() for _ in range(count)]
    signal.signal(signal.SIGHUP, forward_hup)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    early_deaths = 0
    exit_code = 0
    try:
        while workers:
            time.sleep(0.2)
            for entry in list(workers):
                proc, started = entry
                code = proc.poll()
                if code is None:
                    continue
                workers.remove(entry)
                if stopping:
                    continue
                early = time.monotonic() - started < _EARLY_DEATH_SECONDS
                early_deaths = early_deaths + 1 if early else 0
                if early_deaths >= _MAX_EARLY_DEATHS:
                    log.error("workers keep exiting right after start (code %s); giving up", code)
                    exit_code = 1
                    on_signal(signal.SIGTERM, None)
                    continue
                log.warning("worker %d exited with %s; restarting it", proc.pid, code)
                workers.append(start())
    finally:
        for proc, _ in workers:
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return exit_code
