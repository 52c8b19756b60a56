"""Choosing the mode: --server (or FLEET_SERVER) means remote, otherwise the local store.

The one place that knows both implementations of :class:`fleet.cli.ops.AdminOps`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from fleet.cli._context import config_option, load
from fleet.cli.local import LocalOps
from fleet.cli.ops import AdminOps

_F = TypeVar("_F", bound=Callable[..., Any])

_REMOTE_OPTIONS = {
    "server": "Admin API of a running fleet server, e.g. https://fleet.example.com:8443 "
    "[env: FLEET_SERVER]. Without it, the local store of fleet.toml is used.",
    "ca_file": "CA certificate(s) that verify the server (for a fleet server: the fleet "
    "root, DATA/ca/root.pem) [default: the system's trust store].",
    "admin_cert": "Admin client certificate (from `fleet admin create`), with --admin-key.",
    "admin_key": "Key of --admin-cert (mode 0600).",
    "token_file": "File (mode 0600) holding an admin bearer token (from `fleet admin token`); "
    "FLEET_ADMIN_TOKEN works too. Never put a token on the command line.",
}
_META = "fleet_remote_"


def _remember(ctx: click.Context, param: click.Parameter, value: object) -> None:
    # Given on a group and on its command, the command's (later, more specific) wins.
    if value is not None and param.name is not None:
        ctx.meta[param.name] = value


def admin_options(function: _F) -> _F:
    """``--config`` and the remote-mode options, accepted on a group and on each command."""
    for name in reversed(_REMOTE_OPTIONS):
        is_path = name != "server"
        function = click.option(
            "--" + name.replace("_", "-"),
            _META + name,  # a parameter name no command uses for its own arguments
            metavar="URL" if name == "server" else "FILE",
            type=click.Path(dir_okay=False, path_type=Path) if is_path else str,
            expose_value=False,
            callback=_remember,
            help=_REMOTE_OPTIONS[name],
        )(function)
    return config_option(function)


def _given(name: str) -> Any:
    return click.get_current_context().meta.get(_META + name)


def require_local(command: str) -> None:
    """Refuse remote mode for a command that acts on the data directory itself."""
    if _given("server") or os.environ.get("FLEET_SERVER"):
        raise click.UsageError(
            f"{command} works on the local data directory (fleet.toml) only; "
            "run it on the server without --server / FLEET_SERVER"
        )


def admin_ops() -> AdminOps:
    """Remote operations if a server is named, otherwise the local store."""
    server: str | None = _given("server") or os.environ.get("FLEET_SERVER") or None
    if server is None:
        stray = [n for n in _REMOTE_OPTIONS if n != "server" and _given(n) is not None]
        if stray:
            option = "--" + stray[0].replace("_", "-")
            raise click.UsageError(f"{option} is for remote mode; add --server URL")
        return LocalOps(load())
    from fleet.cli.remote import RemoteOps, connect  # only remote mode pays for it

    return RemoteOps(
        connect(
            server,
            ca_file=_given("ca_file"),
            admin_cert=_given("admin_cert"),
            admin_key=_given("admin_key"),
            token_file=_given("token_file"),
        )
    )
