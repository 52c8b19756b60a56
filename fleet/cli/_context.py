"""What the admin commands share: finding fleet.toml, opening the store, who acts."""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import json
import os
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from fleet.config import CONFIG_FILENAME, FleetConfig, load_config
from fleet.kernel.clock import Clock, clock_from_environ
from fleet.kernel.errors import ConfigError
from fleet.kernel.files import write_new_secret
from fleet.records import (
    ReplacementRequest,
    ReplacementStatus,
)
from fleet.store.factory import open_store
from fleet.store.protocol import Store

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])
_META_KEY = "fleet.config_path"


def _remember_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    # Given on a group and on its command, the command's (later, more specific) wins.
    if value is not None:
        ctx.meta[_META_KEY] = value


def config_option(function: _F) -> _F:
    """``--config PATH``, accepted on a command group and on each of its commands."""
    option = click.option(
        "--config",
        type=click.Path(dir_okay=False, path_type=Path),
        expose_value=False,
        is_eager=True,
        callback=_remember_config,
        help=f"fleet.toml to use [default: $FLEET_CONFIG, else ./{CONFIG_FILENAME}].",
    )
    return option(function)


def json_option(function: _F) -> _F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(
        function
    )


def config_path() -> Path:
    ctx = click.get_current_context()
    given = ctx.meta.get(_META_KEY)
    if isinstance(given, Path):
        return given
    from_env = os.environ.get("FLEET_CONFIG")
    return Path(from_env) if from_env else Path(CONFIG_FILENAME)


def load() -> FleetConfig:
    return load_config(config_path())


def with_store(config: FleetConfig, use: Callable[[Store], Awaitable[_T]]) -> _T:
    """Open the configured store, run ``use`` with it, always close it."""

    async def run() -> _T:
        store = await open_store(config.store_url, redis=config.store_redis)
        try:
            return await use(store)
        finally:
            await store.close()

    return run_async(run())


def run_async(coroutine: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coroutine)


def secret_out_option(function: _F) -> _F:
    """``--out FILE``: write the secret there (0600, a new file) instead of printing it."""
    option = click.option(
        "--out",
        "out_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Write the secret to this new file (mode 0600; an existing file is refused) "
        "instead of printing it.",
    )
    return option(function)


def refuse_existing_secret_file(path: Path | None) -> None:
    """Refuse an --out that exists before anything is created (the secret would be lost)."""
    if path is not None and (path.exists() or path.is_symlink()):
        raise ConfigError(
            f"--out {path}: the file exists; it may hold the only copy of another secret",
            hint="Name a new file, or remove the old one if it is no longer needed.",
        )


def save_secret(path: Path, secret: str) -> None:
    try:
        write_new_secret(path, f"{secret}\n".encode())
    except FileExistsError as exc:
        raise ConfigError(
            f"--out {path}: the file appeared while the secret was being made; "
            "the secret was not written",
            hint="Make a new secret with another --out file (the unwritten one is unusable).",
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot write {path}: {exc.strerror}; the secret was not written",
            hint="Make a new secret with a writable --out file.",
        ) from exc


def clock() -> Clock:
    """The CLI's clock: the system clock, or the simulator's when FLEET_SIM_CLOCK_FILE names one."""
    return clock_from_environ(os.environ)


def now() -> dt.datetime:
    return clock().now()


def local_actor() -> str:
    """Who acts, for the audit log: the local user running the CLI."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (containers)
        user = f"uid{os.getuid()}"
    return f"admin:{user}@local"


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def when(value: dt.datetime | None) -> str:
    """A time as people and JSON read it: ISO 8601 UTC to the second."""
    if value is None:
        return ""
    return value.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def echo_replacement(request: ReplacementRequest | None) -> None:
    """The replacement request as `show` and `why` print it, with what to do about it."""
    if request is None:
        return
    device_id = request.device_id
    click.echo(f"Replacement request ({request.status.value}): its bootstrap certificate was")
    click.echo("presented again while the device is active: a factory reset, or a clone.")
    click.echo(f"  bootstrap_sha256  {request.bootstrap_sha256}")
    click.echo(f"  new key sha256    {request.key_sha256}")
    click.echo(f"  attempts          {request.attempts} (different keys: {request.keys_seen})")
    click.echo(f"  first seen        {when(request.first_seen)}")
    click.echo(f"  last seen         {when(request.last_seen)}")
    click.echo(f"  source            {request.source or '-'}")
    if request.decided_at is not None:
        click.echo(f"  decided           {when(request.decided_at)} by {request.decided_by}")
    if request.status is ReplacementStatus.PENDING:
        click.echo("  The device keeps working meanwhile. Decide:")
        click.echo(f"    factory reset: fleet device approve {device_id} --replace")
        click.echo(f"    clone:         fleet device reject {device_id} [--revoke]")


def details(detail: dict[str, str], width: int = 72) -> str:
    """An audit event's details on one line (k=v, ...), shortened for a table."""
    text = ", ".join(f"{k}={v}" for k, v in sorted(detail.items()))
    return text if len(text) <= width else text[: width - 3] + "..."


def table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A plain, left-aligned text table."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in (headers, *rows):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
