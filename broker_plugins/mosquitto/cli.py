"""`fleet-broker mosquitto ...`: build the plugin, print the config, run the sidecar."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from broker_plugins.logs import configure_json_logging
from broker_plugins.mosquitto.build import build_plugin
from broker_plugins.mosquitto.config import (
    DEFAULT_SIDECAR_CN,
    MosquittoSettings,
    load_settings,
)
from broker_plugins.mosquitto.generated_conf import mosquitto_conf
from broker_plugins.mosquitto.identity import issue_sidecar_certificate
from broker_plugins.mosquitto.init import DEFAULT_LISTEN, init_broker_dir
from broker_plugins.mosquitto.sync import Sidecar
from fleet.kernel.errors import FleetError
from fleet.store.factory import open_store
from fleet.store.redis_durability import FEED_READER

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("fleet.broker.mosquitto")

settings_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: os.environ.get("FLEET_BROKER_CONFIG", "broker.toml"),
    show_default="$FLEET_BROKER_CONFIG or ./broker.toml",
    help="The broker settings file (TOML; see broker_plugins/mosquitto/config.py).",
)


def _fail(exc: FleetError) -> NoReturn:
    click.echo(f"error: {exc.message}", err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)
    sys.exit(1)


@click.group()
def mosquitto() -> None:
    """Mosquitto 2.0: the fleet plugin, its config and its sync sidecar."""


@mosquitto.command()
@click.option(
    "--fleet-data", type=click.Path(file_okay=False, exists=True, path_type=Path), required=True,
    help="The fleet data directory (`fleet init --dir`): its ca/*.pem, and the CA keys to sign "
    "the broker's certificates (not with --csr-only). An encrypted key reads "
    "FLEET_CA_KEY_PASSPHRASE.",
)  # fmt: skip
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
    help="The broker directory to write (broker.toml, mosquitto.conf, certificates, plugin, "
    "systemd units).",
)  # fmt: skip
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, help="HOST:PORT for devices.")
@click.option(
    "--store-url", help="The fleet store to follow (default: the data directory's [store] url)."
)
@click.option(
    "--server-name", "server_names", multiple=True, metavar="NAME",
    help="DNS name or IP address devices dial (repeatable; the broker certificate's SANs). "
    "Default: localhost and 127.0.0.1.",
)  # fmt: skip
@click.option(
    "--csr-only", is_flag=True,
    help="No CA keys here: write the keys and CSRs; sign them with `fleet broker-cert sign`.",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Replace files that exist in --out.")
def init(
    fleet_data: Path,
    out_dir: Path,
    listen: str,
    store_url: str | None,
    server_names: tuple[str, ...],
    csr_only: bool,
    force: bool,
) -> None:
    """Write an enforcing Mosquitto node: settings, TLS and sidecar certificates, plugin,
    mosquitto.conf and systemd units. Then start the sidecar and mosquitto (printed)."""
    passphrase = os.environ.get("FLEET_CA_KEY_PASSPHRASE")
    try:
        result = init_broker_dir(
            fleet_data, out_dir, now=dt.datetime.now(dt.UTC), listen=listen,
            store_url=store_url, server_names=server_names, csr_only=csr_only, force=force,
            passphrase=passphrase.encode() if passphrase else None,
        )  # fmt: skip
    except FleetError as exc:
        _fail(exc)
    d = result.broker_dir
    click.echo(f"Wrote the Mosquitto node {d} ({len(result.written)} files)")
    click.echo(f"  user {result.user}: {result.user_note}")
    click.echo(f"  TLS certificate SANs: {', '.join(result.server_names)}")
    if result.csr_only:
        click.echo(
            "Next, on the CA host (the keys stay here; copy only the .csr files):\n"
            f"  fleet broker-cert sign --csr broker.csr --kind server --out broker.pem\n"
            f"  fleet broker-cert sign --csr sidecar.csr --kind sidecar --out sidecar.pem\n"
            f"then copy them back to {d / 'tls/broker.pem'} and {d / 'sidecar.pem'}, and:\n"
            f"  fleet-broker mosquitto config --config {d / 'broker.toml'} > {d / 'mosquitto.conf'}"
        )
    click.echo(
        "Run it (or install the units in systemd/):\n"
        f"  fleet-broker mosquitto sync --config {d / 'broker.toml'} --once\n"
        f"  mosquitto -c {d / 'mosquitto.conf'} 2>> {d / 'mosquitto.log'} &\n"
        f"  fleet-broker mosquitto sync --config {d / 'broker.toml'} 2>> {d / 'sidecar.log'} &"
    )


@mosquitto.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory to write fleet_plugin.so to.",
)
def build(out_dir: Path) -> None:
    """Compile the plugin with the system compiler (gcc -Wall -Wextra -Werror ... -lcrypto).

    Needs: apt-get install -y gcc mosquitto-dev libmosquitto-dev libssl-dev
    """
    try:
        path = build_plugin(out_dir)
    except FleetError as exc:
        _fail(exc)
    click.echo(str(path))


@mosquitto.command()
@settings_option
def config(config_path: Path) -> None:
    """Print a mosquitto.conf for the fleet TLS listener, the plugin and the sidecar."""
    try:
        settings = load_settings(config_path)
        pin = settings.sidecar_sha256() if settings.pin_sidecar else None
    except FleetError as exc:
        _fail(exc)
    click.echo(mosquitto_conf(settings, sidecar_sha256=pin), nl=False)
    click.echo(
        "\n# Run the sidecar beside the broker (it must be running for live revocation):\n"
        f"#   fleet-broker mosquitto sync --config {config_path.resolve()} --once\n"
        f"#   mosquitto -c <this file> &\n"
        f"#   fleet-broker mosquitto sync --config {config_path.resolve()}\n"
    )


@mosquitto.command("sidecar-cert")
@click.option(
    "--issuing-cert", type=click.Path(dir_okay=False, path_type=Path), required=True,
    help="The fleet issuing CA certificate (ca/issuing.pem of the fleet data directory).",
)  # fmt: skip
@click.option(
    "--issuing-key", type=click.Path(dir_okay=False, path_type=Path), required=True,
    help="Its key (ca/issuing.key). An encrypted key reads FLEET_CA_KEY_PASSPHRASE.",
)  # fmt: skip
@click.option("--cn", default=DEFAULT_SIDECAR_CN, show_default=True, help="The sidecar's CN.")
@click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True)
@click.option("--out-cert", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--out-key", type=click.Path(dir_okay=False, path_type=Path), required=True)
def sidecar_cert(
    issuing_cert: Path, issuing_key: Path, cn: str, days: int, out_cert: Path, out_key: Path
) -> None:
    """Mint the sidecar's client certificate with the fleet issuing CA key.

    Run it where the issuing key lives and copy both files to the broker host.
    """
    passphrase = os.environ.get("FLEET_CA_KEY_PASSPHRASE")
    try:
        cert = issue_sidecar_certificate(
            issuing_cert=issuing_cert,
            issuing_key=issuing_key,
            passphrase=passphrase.encode() if passphrase else None,
            common_name=cn,
            out_cert=out_cert,
            out_key=out_key,
            now=dt.datetime.now(dt.UTC),
            validity=dt.timedelta(days=days),
        )
    except FleetError as exc:
        _fail(exc)
    click.echo(f"Wrote {out_cert} (CN={cn}, serial {cert.serial_number:x}) and {out_key}")


@mosquitto.command()
@settings_option
@click.option(
    "--once", is_flag=True,
    help="Write cafile, revocation snapshot and crlfile, then exit (run before mosquitto).",
)  # fmt: skip
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def sync(config_path: Path, once: bool, log_level: str) -> None:
    """The sidecar: revocation feed -> plugin ($CONTROL/fleet/v1), crlfile, snapshot.

    Logs one JSON object per line on stderr, like `fleet serve` and `fleet-broker amqtt`.
    """
    configure_json_logging(logging.getLevelName(log_level.upper()))
    try:
        settings = load_settings(config_path)
        _run(_sync(settings, once=once))
    except FleetError as exc:
        _fail(exc)


async def _sync(settings: MosquittoSettings, *, once: bool) -> None:
    store = await open_store(settings.store_url, redis=FEED_READER)
    try:
        sidecar = Sidecar(settings, store)
        if once:
            await sidecar.once()
        else:
            await sidecar.run()
    finally:
        await store.close()
        if not once:
            log.info("sidecar stopped", extra={"fields": {"event": "stopped"}})


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run until done, SIGTERM or SIGINT (then cancel cleanly, exit 0)."""

    async def wrapper() -> None:
        task = asyncio.ensure_future(main)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(wrapper())
