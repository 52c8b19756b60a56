"""`fleet`: the server-side command line."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import click

from fleet import __version__
from fleet.cli.admin import admin
from fleet.cli.audit import audit
from fleet.cli.broker_cert import broker_cert
from fleet.cli.ca import ca
from fleet.cli.cert import cert
from fleet.cli.common import FleetGroup, read_secret_file, secret_from_env
from fleet.cli.crl import crl
from fleet.cli.db import db
from fleet.cli.device import device
from fleet.cli.manifest import manifest
from fleet.cli.trust import trust
from fleet.datadir import TokenInit, init_data_dir
from fleet.kernel.clock import clock_from_environ
from fleet.kernel.keys import KeyType, parse_key_type
from fleet.pki.keystore import TokenKeyMaker
from fleet.pki.pkcs11_uri import parse_pkcs11_uri
from fleet.store.factory import open_store


class _Cli(FleetGroup):
    """The top-level group; `fleet serve` (and the server it imports) loads only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "serve"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "serve":
            from fleet.cli.serve import serve

            return serve
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fleet")
def cli() -> None:
    """Enroll IoT devices over EST, keep their certificates renewed, revoke them.

    Start with `fleet init --dir DIR`, then `fleet serve --config DIR/fleet.toml`.

    Exit codes: 0 ok, 1 refused or failed (the message says why and what to do),
    2 bad usage, 3 feature not built yet.
    """


@cli.command()
@click.option(
    "--dir",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Data directory to create (CA, server TLS certificate, fleet.toml, database).",
)
@click.option(
    "--server-name",
    "server_names",
    multiple=True,
    metavar="NAME",
    help="Extra DNS name or IP address for the server certificate (repeatable). "
    "localhost and 127.0.0.1 are always included.",
)
@click.option(
    "--key-type",
    default=KeyType.EC_P256.value,
    show_default=True,
    # cryptography's chain verifier (used for every client certificate) refuses
    # Ed25519-signed chains, so CA keys are EC or RSA; devices may use Ed25519.
    type=click.Choice([k.value for k in KeyType if k is not KeyType.ED25519]),
    help="Key type of the CA and server keys (device keys are set in fleet.toml).",
)
@click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Encrypt the CA keys with the passphrase in this file (mode 0600). "
    "FLEET_CA_KEY_PASSPHRASE works too. Never pass a passphrase on the command line.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite an existing data directory (DESTROYS its CA and database).",
)
@click.option(
    "--pkcs11-uri",
    metavar="URI",
    help="Generate the root, issuing and admin CA keys inside this PKCS#11 token "
    "(RFC 7512, naming only the token, e.g. pkcs11:token=fleet); fleet.toml records "
    "their URIs and no CA key file is written.",
)
@click.option(
    "--pkcs11-module",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The token's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so.",
)
@click.option(
    "--pkcs11-pin-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="File holding the token's user PIN (mode 0600 or 0400), recorded in fleet.toml "
    "for `fleet serve`. FLEET_PKCS11_PIN works too. Never pass the PIN on the command line.",
)
@click.option(
    "--offline-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the root key (and a copy of root.pem) only to this directory, e.g. removable "
    "media, never into the data directory; new issuing CAs are then signed in a ceremony "
    "(fleet ca sign-issuing).",
)
def init(
    data_dir: Path,
    server_names: tuple[str, ...],
    key_type: str,
    passphrase_file: Path | None,
    force: bool,
    pkcs11_uri: str | None,
    pkcs11_module: Path | None,
    pkcs11_pin_file: Path | None,
    offline_root: Path | None,
) -> None:
    """Create a working data directory.

    Writes fleet.toml, the fleet root and issuing CAs (keys 0600, directories
    0700), a server TLS certificate and an empty SQLite database, then prints
    the SHA-256 fingerprint of the fleet root that devices pin. With
    --pkcs11-uri the CA keys are generated in the token (never extractable)
    instead of files.
    """
    token = _token_init(pkcs11_uri, pkcs11_module, pkcs11_pin_file, passphrase_file)
    passphrase = (
        read_secret_file(passphrase_file)
        if passphrase_file
        else secret_from_env("FLEET_CA_KEY_PASSPHRASE")
    )
    result = init_data_dir(
        data_dir,
        now=clock_from_environ(os.environ).now(),
        server_names=server_names,
        key_type=parse_key_type(key_type),
        force=force,
        passphrase=None if token is not None else passphrase,
        token=token,
        offline_root=offline_root,
    )
    asyncio.run(_create_database(f"sqlite:///{result.data_dir / 'fleet.db'}"))
    click.echo(f"Created fleet data directory {result.data_dir}")
    click.echo(f"  config:        {result.config_path}")
    click.echo(f"  server names:  {', '.join(result.server_names)}")
    if token is not None:
        # Only the token's name: the keys' URIs (label and id) are in fleet.toml.
        click.echo(f"  CA keys:       in PKCS#11 token {pkcs11_uri} (URIs in fleet.toml)")
    if offline_root is not None:
        click.echo(f"  root key:      {offline_root}/root.key (offline; not in the data directory)")
    click.echo("Devices pin the fleet root by this SHA-256 fingerprint:")
    click.echo(f"  {result.root_fingerprint}")
    click.echo(f"Next: fleet serve --config {result.config_path}")


def _token_init(
    uri_text: str | None, module: Path | None, pin_file: Path | None, passphrase_file: Path | None
) -> TokenInit | None:
    if uri_text is None:
        if module is not None or pin_file is not None:
            raise click.UsageError("--pkcs11-module and --pkcs11-pin-file need --pkcs11-uri")
        return None
    if module is None:
        raise click.UsageError("--pkcs11-uri needs --pkcs11-module (the token's library)")
    if passphrase_file is not None:
        raise click.UsageError("--passphrase-file is for CA key files; with --pkcs11-uri "
                               "the token's PIN protects the keys")  # fmt: skip
    uri = parse_pkcs11_uri(uri_text, setting="--pkcs11-uri", key_required=False)
    pin = read_secret_file(pin_file) if pin_file else secret_from_env("FLEET_PKCS11_PIN")
    maker = TokenKeyMaker(module, uri, pin or b"")
    return TokenInit(make=maker.make, module=module, pin_file=pin_file)


async def _create_database(url: str) -> None:
    store = await open_store(url)
    await store.close()


cli.add_command(trust)
cli.add_command(manifest)
cli.add_command(device)
cli.add_command(crl)
cli.add_command(admin)
cli.add_command(cert)
cli.add_command(audit)
cli.add_command(broker_cert)
cli.add_command(db)
cli.add_command(ca)


def main() -> None:
    cli(prog_name="fleet")
