"""What every fleet CLI shares: error reporting, exit codes, secrets from files."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from fleet.kernel.errors import ConfigError, FleetError, RequestInvalid

# Documented exit codes (README, --help).
EXIT_OK = 0
EXIT_ERROR = 1  # a FleetError: the diagnostics say what to do
EXIT_USAGE = 2  # click's own code for bad arguments
EXIT_NOT_BUILT = 3  # the feature does not exist yet


class FleetGroup(click.Group):
    """A click group that turns FleetError into diagnostics and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FleetError as exc:
            click.echo(f"error: {exc.diagnostics()}", err=True)
            ctx.exit(EXIT_ERROR)


def not_built(what: str, issue: int) -> NoReturn:
    """Say plainly that a feature is missing, and exit non-zero."""
    click.echo(f"{what} is not built yet (tracked in issue {issue}); nothing was done.", err=True)
    sys.exit(EXIT_NOT_BUILT)


def read_secret_file(path: Path) -> bytes:
    """A secret from a file, refusing files other users can read."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise FleetError(f"cannot read secret file {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise FleetError(
            f"secret file {path} is readable by other users",
            hint=f"chmod 600 {path}",
        )
    secret = data.strip()
    if not secret:
        raise FleetError(f"secret file {path} is empty")
    return secret


def read_input_file(
    path: Path, limit: int, what: str, reason: str, *, path_hint: str | None = None
) -> bytes:
    """An input file an admin names (manifest, CA bundle), read at most ``limit`` bytes:
    a wrong path (/dev/zero, a disk image) is refused instead of read until memory ends."""
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}",
            hint=path_hint or f"Check the path of the {what}.",
        ) from exc
    if len(data) > limit:
        size = f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"
        raise RequestInvalid(
            f"{path} is larger than {size}, the most a {what} may be",
            reason=reason,
            hint=f"Check the file name; give the {what} itself.",
        )
    return data


def secret_from_env(name: str) -> bytes | None:
    value = os.environ.get(name)
    return value.encode() if value else None
