"""Crash-safe files: a reader sees the old content or the new, never half of it.

One implementation for the server, the agent and the broker sidecar. Write to
a temporary file in the same directory, created with its final mode (so a key
is never readable by others, even for an instant), fsync it, rename it over
the target, and fsync the directory so that the rename itself survives a
power cut. Temporary names start with ``.`` and end with ``.tmp`` so that a
write cut off by a crash leaves something :func:`remove_stale_temporaries`
recognises.

The default mode is 0600: a caller that forgets to choose gets the safe one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
PRIVATE_DIR_MODE = 0o700
TMP_SUFFIX = ".tmp"


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if missing and make it 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    os.chmod(path, PRIVATE_DIR_MODE)


def write_atomic(path: Path, data: bytes, *, mode: int = SECRET_MODE) -> None:
    """Replace ``path`` with ``data`` atomically and durably, with permissions ``mode``."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    _create(tmp, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_new_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file ``path``, mode 0600, durably; never replace one.

    For secrets shown only once (tokens): overwriting a file would destroy the
    only copy of an earlier secret, so an existing ``path`` is an error
    (FileExistsError), checked atomically by the kernel (O_EXCL).
    """
    _create(path, data, SECRET_MODE)
    fsync_dir(path.parent)


def _create(path: Path, data: bytes, mode: int) -> None:
    """A new file (O_EXCL) with ``mode`` whatever the umask, fsynced; removed if cut short."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed or widened it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise


def remove_durably(*paths: Path) -> None:
    """Delete ``paths`` (missing ones are fine) and fsync their directories."""
    parents = set()
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        parents.add(path.parent)
    for parent in parents:
        fsync_dir(parent)


def remove_stale_temporaries(directory: Path) -> None:
    """Temporary files left by a write that was cut off (they were never renamed)."""
    for tmp in directory.glob(f".*{TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
