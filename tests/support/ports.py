"""Free loopback ports for servers the tests start, and waiting for them to listen."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_listening(
    proc: subprocess.Popen[bytes],
    port: int,
    what: str,
    *,
    timeout: float,
    stop: Callable[[], None],
    diagnose: Callable[[], str] = lambda: "",
) -> None:
    """Wait until ``proc`` listens on ``port``; RuntimeError (with ``diagnose()``) if it
    exits first, or (after ``stop()``) if the deadline passes."""
    deadline = time.monotonic() + timeout
    while not listening(port):
        if proc.poll() is not None:
            error = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"{what} exited: {error}{diagnose()}")
        if time.monotonic() > deadline:
            stop()
            raise RuntimeError(f"{what} did not start listening")
        time.sleep(0.05)
