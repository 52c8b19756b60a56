"""One fleet-agent command at a time per state directory.

`fleet-agent run` renews by itself; a `renew` from a cron job or a person at
the same moment would rotate the same key pair twice. An flock on
``agent.lock`` serializes them, and the kernel releases it when the holder
exits, crash or not, so a stale lock cannot brick a device.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from device_agent.errors import ConfigError
from fleet.kernel.files import SECRET_MODE, ensure_private_dir

LOCK_NAME = "agent.lock"


class StateDirBusy(ConfigError):
    """Another fleet-agent process works on this state directory."""


@contextlib.contextmanager
def exclusive(state_dir: Path, *, create: bool = False) -> Iterator[None]:
    """Hold the state directory's lock; StateDirBusy at once if another process does.

    Without ``create``, a missing directory is left to the command to report
    (it says to enroll first).
    """
    if create:
        ensure_private_dir(state_dir)
    elif not state_dir.is_dir():
        yield
        return
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, SECRET_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise StateDirBusy(
                f"another fleet-agent (pid {holder}) is working on {state_dir}",
                hint=f"`fleet-agent run` renews by itself; to renew now: kill -USR1 {holder}. "
                "Otherwise wait for the other command to finish.",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def holder_pid(state_dir: Path) -> int | None:
    """The pid written by the last process that took the lock (it may have exited since)."""
    try:
        text = (state_dir / LOCK_NAME).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def is_running(state_dir: Path, pid: int | None) -> bool:
    """Whether process ``pid`` is alive and was the last to take this state directory's lock.

    Read-only on purpose: `status` must never take the lock, or a `run`
    starting at that instant would find the directory busy.
    """
    if pid is None or holder_pid(state_dir) != pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True
