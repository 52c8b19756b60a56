"""`fleet trust`: which manufacturer CAs may vouch for devices' bootstrap certificates."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click
from cryptography import x509

from fleet.authority.admin import TrustResult, distrust_manufacturer, trust_manufacturer
from fleet.cli._context import (
    config_option,
    echo_json,
    json_option,
    load,
    local_actor,
    now,
    table,
    when,
    with_store,
)
from fleet.config import FleetConfig
from fleet.errors import ConfigError
from fleet.pki.ca import load_certificates_pem
from fleet.store.records import ManufacturerCA


@click.group()
@config_option
def trust() -> None:
    """Manage the manufacturer CAs that sign bootstrap certificates.

    Devices enroll with a bootstrap (factory) certificate; only certificates
    issued by a CA listed here are believed. This list is separate from the
    fleet's own CAs, which sign operational certificates only.
    """


@trust.command("add-manufacturer")
@click.argument("ca_file", metavar="CA.pem", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", help="A name for people [default: the certificate's subject CN].")
@config_option
@json_option
def add_manufacturer(ca_file: Path, name: str | None, as_json: bool) -> None:
    """Trust the manufacturer CA certificate(s) in CA.pem.

    Every certificate in the file must be a CA (basicConstraints cA=TRUE) and
    none may be the fleet's own root or issuing CA; otherwise nothing is added.
    Prints the SHA-256 fingerprint of each.
    """
    config = load()
    try:
        pem = ca_file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {ca_file}: {exc.strerror}") from exc
    fleet_cas = _fleet_cas(config)
    results = with_store(
        config,
        lambda store: trust_manufacturer(
            store, pem, name=name, fleet_cas=fleet_cas, actor=local_actor(), now=now()
        ),
    )
    if as_json:
        echo_json([{**_ca_json(r.ca), "added": r.added} for r in results])
        return
    for result in results:
        click.echo(_added_line(result))
        click.echo(f"  sha256: {result.ca.sha256}")


@trust.command("list")
@config_option
@json_option
def list_manufacturers(as_json: bool) -> None:
    """List the trusted manufacturer CAs, oldest first."""
    cas = with_store(load(), lambda store: store.list_manufacturer_cas())
    if as_json:
        echo_json([_ca_json(ca) for ca in cas])
        return
    if not cas:
        click.echo(
            "No manufacturer CA is trusted yet: add one with `fleet trust add-manufacturer`."
        )
        return
    table(
        ("SHA256", "NAME", "ADDED", "EXPIRES"),
        [(ca.sha256, ca.name, when(ca.added_at), when(_not_after(ca))) for ca in cas],
    )


@trust.command("remove")
@click.argument("fingerprint")
@config_option
def remove(fingerprint: str) -> None:
    """Stop trusting the manufacturer CA with this SHA-256 FINGERPRINT.

    Any spelling works: plain hex, upper case, or colon-separated as openssl
    prints it. Bootstrap certificates it issued are refused from now on;
    devices already enrolled keep their operational certificates.
    """
    sha256 = with_store(
        load(),
        lambda store: distrust_manufacturer(store, fingerprint, actor=local_actor(), now=now()),
    )
    click.echo(f"Removed manufacturer CA {sha256}")


def _fleet_cas(config: FleetConfig) -> list[x509.Certificate]:
    """The fleet's own CA certificates, which must never become manufacturer CAs."""
    certificates: list[x509.Certificate] = []
    for path in (config.ca.root_cert, config.ca.issuing_cert):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the fleet CA certificate {path}: {exc.strerror}",
                hint="Check [ca] root_cert and issuing_cert in fleet.toml; they are needed to "
                "make sure the fleet's own CAs are never trusted as manufacturer CAs.",
            ) from exc
        certificates += load_certificates_pem(data)
    return certificates


def _added_line(result: TrustResult) -> str:
    if result.added:
        return f"Trusted manufacturer CA {result.ca.name!r}"
    return f"Manufacturer CA {result.ca.name!r} was already trusted; nothing changed"


def _not_after(ca: ManufacturerCA) -> dt.datetime:
    return x509.load_pem_x509_certificate(ca.pem.encode("ascii")).not_valid_after_utc


def _ca_json(ca: ManufacturerCA) -> dict[str, str]:
    cert = x509.load_pem_x509_certificate(ca.pem.encode("ascii"))
    return {
        "sha256": ca.sha256,
        "name": ca.name,
        "subject": cert.subject.rfc4514_string(),
        "added_at": when(ca.added_at),
        "not_after": when(cert.not_valid_after_utc),
        "pem": ca.pem,
    }
