"""`fleet-broker`: broker-side commands (a click group; `amqtt` here, `mosquitto` beside it)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import click

from fleet.kernel.clock import clock_from_environ
from fleet.kernel.errors import FleetError

EXIT_CONFIG = 2


@click.group(name="fleet-broker", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fleet-enroll", prog_name="fleet-broker")
def cli() -> None:
    """Make MQTT brokers enforce fleet device certificates and live revocation."""


@cli.command(name="amqtt")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="broker.toml (flags override it).",
)
@click.option("--listen", help="HOST:PORT of the mTLS MQTT listener.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="Server certificate PEM.")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Server key PEM.")
@click.option(
    "--fleet-ca", type=click.Path(dir_okay=False), help="Fleet issuing CA(s) + root, PEM."
)
@click.option(
    "--store-url",
    help="Store whose revocation feed to follow (sqlite:/postgresql:/redis://).",
)
@click.option("--max-staleness", type=float, help="Seconds without feed contact tolerated.")
@click.option(
    "--fail-open/--fail-closed",
    default=None,
    help="When the feed is stale: keep admitting on the last data, or refuse all (default).",
)
@click.option(
    "--topic-template",
    "topic_templates",
    multiple=True,
    help="Device topic filter template (repeatable; default devices/{device_id}/#).",
)
@click.option("--metrics-listen", help="HOST:PORT for a Prometheus /metrics endpoint.")
@click.option(
    "--snapshot-file",
    type=click.Path(dir_okay=False),
    help="Where revocations survive restarts (default: revocations.snapshot beside the config).",
)
def amqtt_command(
    config_path: Path | None,
    listen: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    fleet_ca: str | None,
    store_url: str | None,
    max_staleness: float | None,
    fail_open: bool | None,
    topic_templates: tuple[str, ...],
    metrics_listen: str | None,
    snapshot_file: str | None,
) -> None:
    """Run the embedded MQTT broker (amqtt, hardened) with fleet authentication."""
    # Imported here so that other subcommands do not need amqtt installed.
    from broker_plugins.amqtt.runner import EmbeddedBroker
    from broker_plugins.amqtt.settings import load_settings
    from broker_plugins.logs import configure_json_logging

    configure_json_logging()
    try:
        settings = load_settings(
            config_path,
            {
                "listen": listen,
                "tls_cert": tls_cert,
                "tls_key": tls_key,
                "fleet_ca": fleet_ca,
                "store_url": store_url,
                "max_staleness": max_staleness,
                "fail_open": fail_open,
                "topic_templates": topic_templates or None,
                "metrics_listen": metrics_listen,
                "snapshot_file": snapshot_file,
            },
        )
        asyncio.run(
            EmbeddedBroker(settings, clock=clock_from_environ(os.environ)).serve_until_signalled()
        )
    except FleetError as exc:
        click.echo(exc.diagnostics(), err=True)
        sys.exit(EXIT_CONFIG)


from broker_plugins.mosquitto.cli import mosquitto  # noqa: E402  (the Mosquitto subgroup)

cli.add_command(mosquitto)


def main() -> None:
    cli(prog_name="fleet-broker")
