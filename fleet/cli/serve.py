"""`fleet serve`: run the EST enrollment server."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from pathlib import Path

import click
import uvloop

from fleet.cli.common import read_secret_file, secret_from_env
from fleet.config import FleetConfig, load_config
from fleet.kernel.clock import clock_from_environ
from fleet.kernel.errors import ConfigError
from fleet.kernel.files import SECRET_MODE, ensure_private_dir, write_atomic
from fleet.notify.secret import webhook_secret
from fleet.pki.ca import load_certificates_pem
from fleet.pki.keystore import (
    CaKeySecrets,
    KeyRole,
    certificate_path,
    key_locations,
    key_uri,
    load_ca_key,
)
from fleet.server.app import parse_listen
from fleet.server.app import serve as serve_forever
from fleet.server.logs import configure_logging
from fleet.server.workers import supervise


def console_session_key(config: FleetConfig) -> bytes:
    """The console's cookie signing key, made on first use; read by every worker."""
    path = config.ui.session_key_file
    if not path.exists():
        ensure_private_dir(path.parent)
        write_atomic(path, secrets.token_hex(32).encode() + b"\n", mode=SECRET_MODE)
    return read_secret_file(path)


def ca_key_passphrase(config: FleetConfig) -> bytes | None:
    if config.ca.key_passphrase_file is not None:
        return read_secret_file(config.ca.key_passphrase_file)
    return secret_from_env("FLEET_CA_KEY_PASSPHRASE")


def pkcs11_pin(config: FleetConfig) -> bytes | None:
    """The token's user PIN: [ca] pkcs11_pin_file (0600/0400) or FLEET_PKCS11_PIN; None if no
    CA key is in a token (so a file-only fleet never reads either)."""
    if all(location.store == "file" for location in key_locations(config)):
        return None
    if config.ca.pkcs11_pin_file is not None:
        if os.environ.get("FLEET_PKCS11_PIN"):
            # Both set: the file wins. Said, so that a PIN changed in one place only is found.
            click.echo(
                f"warning: FLEET_PKCS11_PIN is ignored: [ca] pkcs11_pin_file "
                f"({config.ca.pkcs11_pin_file}) is set and wins",
                err=True,
            )
        return read_secret_file(config.ca.pkcs11_pin_file)
    return secret_from_env("FLEET_PKCS11_PIN")


def check_token_keys(config: FleetConfig, pin: bytes | None) -> None:
    """Refuse to start unless every CA key configured in a token is there, unlocked by
    the PIN, and the key its certificate certifies (ConfigError with the reason)."""
    for role in KeyRole:
        if key_uri(config, role) is None:
            continue
        path = certificate_path(config, role)
        try:
            certificate = load_certificates_pem(path.read_bytes())[0]
        except OSError as exc:
            raise ConfigError(f"cannot read the {role.value} CA certificate {path}") from exc
        load_ca_key(config, role, certificate, CaKeySecrets(pkcs11_pin=pin))


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: os.environ.get("FLEET_CONFIG", "fleet.toml"),
    show_default="$FLEET_CONFIG or ./fleet.toml",
    help="fleet.toml written by `fleet init`.",
)
@click.option("--listen", metavar="HOST:PORT", help="Address to listen on [default: from config].")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help="Worker processes sharing the port and the store [default: from config].",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option("--worker", "is_worker", is_flag=True, hidden=True)
def serve(
    config_path: Path, listen: str | None, workers: int | None, log_level: str, is_worker: bool
) -> None:
    """Run the EST enrollment server (HTTPS, JSON logs on stderr).

    Endpoints: /.well-known/est/{cacerts,csrattrs,simpleenroll,simplereenroll,
    serverkeygen} (also under /.well-known/est/LABEL/); the admin API under
    /api/v1 (described at /api/v1/openapi.json); the admin console at /ui/
    ([ui] enabled, session_minutes, session_key_file in fleet.toml); /crl and
    /ocsp; /metrics, /healthz, /readyz. Stops cleanly on SIGTERM or SIGINT.
    """
    configure_logging(log_level)
    config = load_config(config_path)
    listen = listen or config.server.listen
    parse_listen(listen)  # refuse a bad address before starting anything
    # Read before any worker starts: URLs without a secret refuse to start.
    secret = webhook_secret(config.webhooks, os.environ) if config.webhooks.urls else None
    count = workers or config.server.workers
    # Made before any worker starts, so that every worker signs with the same key.
    console_key = console_session_key(config) if config.ui.enabled else None
    pin = pkcs11_pin(config)
    if not is_worker:
        # Once, before any worker starts: a missing token key or a wrong PIN is one
        # clear refusal, not workers dying one after another.
        check_token_keys(config, pin)
    if count > 1 and not is_worker:
        argv = ["-m", "fleet", "serve", "--config", str(config_path), "--listen", listen]
        argv += ["--workers", str(count), "--log-level", log_level, "--worker"]
        sys.exit(supervise(argv, count))
    passphrase = ca_key_passphrase(config)
    clock = clock_from_environ(os.environ)  # the simulator's, when FLEET_SIM_CLOCK_FILE says so
    # uvloop's TLS and socket layers are compiled; asyncio's are Python and
    # cost a large share of every handshake.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(
            serve_forever(
                config,
                listen=listen,
                passphrase=passphrase,
                pkcs11_pin=pin,
                webhook_secret=secret,
                reuse_port=count > 1,
                console_key=console_key,
                clock=clock,
            )
        )
