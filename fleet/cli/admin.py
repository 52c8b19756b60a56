"""`fleet admin`: credentials for the admin API (client certificates, bearer tokens)."""

from __future__ import annotations

from pathlib import Path

import click

from fleet.authority.admins import (
    certificate_pem,
    create_admin_certificate,
    create_admin_token,
    disable_admin,
    resolve_admin_fingerprint,
    validate_admin_name,
)
from fleet.cli._context import (
    config_option,
    echo_json,
    json_option,
    load,
    local_actor,
    now,
    refuse_existing_secret_file,
    save_secret,
    secret_out_option,
    table,
    when,
    with_store,
)
from fleet.config import FleetConfig
from fleet.kernel.errors import ConfigError
from fleet.kernel.files import PUBLIC_MODE, SECRET_MODE, ensure_private_dir, write_atomic
from fleet.pki.ca import CertifiedKey, load_certificates_pem
from fleet.pki.keystore import CaKeySecrets, KeyRole, key_uri, load_ca_key
from fleet.records import AdminRole
from fleet.records_json import admin_credential_json
from fleet.store.protocol import Store

_ROLES = click.Choice([r.value for r in AdminRole])
_ROLE_HELP = "viewer: read; operator: approve, suspend, revoke one, tokens; admin: everything."


@click.group()
@config_option
def admin() -> None:
    """Credentials for the admin API: client certificates and bearer tokens."""


@admin.command()
@click.argument("name")
@click.option("--role", type=_ROLES, required=True, help=_ROLE_HELP)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory for NAME.pem and NAME.key (0600).",
)
@config_option
@json_option
def create(name: str, role: str, out: Path, as_json: bool) -> None:
    """Issue an admin client certificate for NAME (mutual TLS to the admin API).

    The key is generated here and written with the certificate to --out;
    the store keeps only the certificate's SHA-256 and the role.
    """
    from fleet.cli.serve import ca_key_passphrase, pkcs11_pin  # imports the server: when needed

    validate_admin_name(name)
    config = load()
    secrets = CaKeySecrets(passphrase=ca_key_passphrase(config), pkcs11_pin=pkcs11_pin(config))
    admin_ca = _admin_ca(config, secrets)
    pair = with_store(
        config,
        lambda store: create_admin_certificate(
            store, admin_ca, name, AdminRole(role), actor=local_actor(), now=now()
        ),
    )
    cert_pem, key_pem = certificate_pem(pair)
    ensure_private_dir(out)
    write_atomic(out / f"{name}.key", key_pem, mode=SECRET_MODE)
    write_atomic(out / f"{name}.pem", cert_pem, mode=PUBLIC_MODE)
    if as_json:
        echo_json({"name": name, "role": role, "certificate": str(out / f"{name}.pem")})
        return
    click.echo(f"Admin certificate for {name} ({role}): {out / name}.pem, key {out / name}.key")
    click.echo(f"Use it with: curl --cert {out / name}.pem --key {out / name}.key ...")


@admin.command()
@click.argument("name")
@click.option("--role", type=_ROLES, required=True, help=_ROLE_HELP)
@secret_out_option
@config_option
@json_option
def token(name: str, role: str, out_file: Path | None, as_json: bool) -> None:
    """Create a bearer token for NAME (automation). Printed once, or written to
    --out FILE (0600); only its hash is kept."""
    validate_admin_name(name)
    refuse_existing_secret_file(out_file)
    secret = with_store(
        load(),
        lambda store: create_admin_token(
            store, name, AdminRole(role), actor=local_actor(), now=now()
        ),
    )
    if out_file is not None:
        save_secret(out_file, secret)
        if as_json:
            echo_json({"name": name, "role": role, "token_file": str(out_file)})
        else:
            click.echo(f"Bearer token for {name} ({role}) written to {out_file} (0600).")
            click.echo(f"Use it with: fleet ... --token-file {out_file}")
        return
    if as_json:
        echo_json({"name": name, "role": role, "token": secret})
        return
    click.echo(f"Bearer token for {name} ({role}), shown only this once:")
    click.echo(f"  {secret}")
    click.echo("Send it as `Authorization: Bearer TOKEN`; keep it in a 0600 file.")


@admin.command(name="list")
@config_option
@json_option
def list_admins(as_json: bool) -> None:
    """List admin credentials (never the secrets themselves)."""
    credentials = with_store(load(), lambda store: store.list_admin_credentials())
    if as_json:
        echo_json([admin_credential_json(c) for c in credentials])
        return
    table(
        ("NAME", "ROLE", "KIND", "SHA256", "CREATED", "DISABLED"),
        [
            (c.name, c.role.value, c.kind, c.sha256[:16], when(c.created_at), str(c.disabled))
            for c in credentials
        ],
    )


@admin.command()
@click.argument("sha256")
@config_option
def disable(sha256: str) -> None:
    """Disable the admin credential whose SHA-256 is or starts with SHA256.

    Give the fingerprint as `fleet admin list` shows it (16 hex digits) or whole;
    at least 8 hex digits, colons allowed. A prefix that matches several
    credentials is refused and names them.
    """

    async def disable_one(store: Store) -> str:
        fingerprint = resolve_admin_fingerprint(sha256, await store.list_admin_credentials())
        await disable_admin(store, fingerprint, actor=local_actor(), now=now())
        return fingerprint

    fingerprint = with_store(load(), disable_one)
    click.echo(f"Disabled admin credential {fingerprint}.")


def _admin_ca(config: FleetConfig, secrets: CaKeySecrets) -> CertifiedKey:
    cert = config.admin.ca_cert
    in_file = key_uri(config, KeyRole.ADMIN) is None
    if not cert.exists() or (in_file and not config.admin.ca_key.exists()):
        raise ConfigError(
            f"no admin CA at {cert}",
            hint="Data directories made by `fleet init` have one (ca/admin.pem); "
            "re-run `fleet init` for a new directory or set [admin] ca_cert and ca_key.",
        )
    certificate = load_certificates_pem(cert.read_bytes())[0]
    return load_ca_key(config, KeyRole.ADMIN, certificate, secrets)
