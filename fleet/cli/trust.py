"""`fleet trust`: which manufacturer CAs may vouch for devices' bootstrap certificates.

Manufacturer roots are trust anchors. Intermediate CAs below them (IEEE
802.1AR hierarchies) go to a separate pool: each is checked against a
trusted root when added, and only helps build a device's path to one.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click
from cryptography import x509

from fleet.authority.admin import MAX_CA_BUNDLE_BYTES, TrustResult
from fleet.cli._context import echo_json, json_option, table, when
from fleet.cli.common import read_input_file
from fleet.cli.mode import admin_ops, admin_options
from fleet.kernel.reasons import Reason
from fleet.records import ManufacturerCA
from fleet.records_json import manufacturer_json
from fleet.records_json import when as json_when


@click.group()
@admin_options
def trust() -> None:
    """Manage the manufacturer CAs that sign bootstrap certificates.

    Devices enroll with a bootstrap (factory) certificate; only certificates
    issued by a CA listed here are believed. This list is separate from the
    fleet's own CAs, which sign operational certificates only.
    """


@trust.command("add-manufacturer")
@click.argument("ca_file", metavar="CA.pem", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", help="A name for people [default: the certificate's subject CN].")
@admin_options
@json_option
def add_manufacturer(ca_file: Path, name: str | None, as_json: bool) -> None:
    """Trust the manufacturer CA certificate(s) in CA.pem.

    Every certificate in the file must be a CA (basicConstraints cA=TRUE) and
    none may belong to a fleet trust domain (the fleet's root, issuing or admin
    CA, a CA under the fleet root or above it); otherwise nothing is added.
    Prints the SHA-256 fingerprint of each.
    """
    results = admin_ops().trust_manufacturer(_read_pem(ca_file), name)
    if as_json:
        echo_json([{**_ca_json(r.ca), "added": r.added} for r in results])
        return
    for result in results:
        click.echo(_added_line(result))
        click.echo(f"  sha256: {result.ca.sha256}")


@trust.command("list")
@admin_options
@json_option
def list_manufacturers(as_json: bool) -> None:
    """List the trusted manufacturer CAs, then the intermediate pool, oldest first."""
    ops = admin_ops()
    cas = ops.list_manufacturers()
    intermediates = ops.list_intermediates()
    if as_json:
        echo_json(
            [_ca_json(ca) for ca in cas]
            + [{**_ca_json(ca), "kind": "intermediate"} for ca in intermediates]
        )
        return
    if not cas and not intermediates:
        click.echo(
            "No manufacturer CA is trusted yet: add one with `fleet trust add-manufacturer`."
        )
        return
    rows: list[tuple[str, ...]] = [
        (ca.sha256, ca.name, when(ca.added_at), when(_not_after(ca))) for ca in cas
    ]
    if not intermediates:
        table(("SHA256", "NAME", "ADDED", "EXPIRES"), rows)
        return
    kinds: list[tuple[str, ...]] = [(sha, name, "root", *rest) for sha, name, *rest in rows]
    kinds += [
        (ca.sha256, ca.name, "intermediate", when(ca.added_at), when(_not_after(ca)))
        for ca in intermediates
    ]
    table(("SHA256", "NAME", "KIND", "ADDED", "EXPIRES"), kinds)


@trust.command("remove")
@click.argument("fingerprint")
@admin_options
def remove(fingerprint: str) -> None:
    """Stop trusting the manufacturer CA with this SHA-256 FINGERPRINT.

    Any spelling works: plain hex, upper case, or colon-separated as openssl
    prints it. Bootstrap certificates it issued are refused from now on;
    devices already enrolled keep their operational certificates.
    """
    sha256 = admin_ops().distrust_manufacturer(fingerprint)
    click.echo(f"Removed manufacturer CA {sha256}")


@trust.command("add-intermediate")
@click.argument("ca_file", metavar="CA.pem", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", help="A name for people [default: the certificate's subject CN].")
@admin_options
@json_option
def add_intermediate(ca_file: Path, name: str | None, as_json: bool) -> None:
    """Add the manufacturer intermediate CA certificate(s) in CA.pem to the pool.

    Devices signed by an intermediate of a trusted manufacturer are accepted
    without sending it. Each certificate must be a CA, belong to no fleet
    trust domain and chain to a trusted manufacturer root (through the pool
    or the other certificates in CA.pem); otherwise nothing is added. It is
    never a trust anchor: removing the root distrusts what is below it.
    """
    results = admin_ops().trust_intermediate(_read_pem(ca_file), name)
    if as_json:
        echo_json([{**_ca_json(r.ca), "added": r.added} for r in results])
        return
    for result in results:
        if result.added:
            click.echo(f"Added manufacturer intermediate CA {result.ca.name!r}")
        else:
            click.echo(f"Intermediate CA {result.ca.name!r} was already in the pool")
        click.echo(f"  sha256: {result.ca.sha256}")


@trust.command("remove-intermediate")
@click.argument("fingerprint")
@admin_options
def remove_intermediate(fingerprint: str) -> None:
    """Drop the intermediate CA with this SHA-256 FINGERPRINT from the pool.

    Devices whose certificates it signed are refused from now on, unless they
    send it in their TLS handshake.
    """
    sha256 = admin_ops().distrust_intermediate(fingerprint)
    click.echo(f"Removed manufacturer intermediate CA {sha256}")


def _added_line(result: TrustResult) -> str:
    if result.added:
        return f"Trusted manufacturer CA {result.ca.name!r}"
    return f"Manufacturer CA {result.ca.name!r} was already trusted; nothing changed"


def _not_after(ca: ManufacturerCA) -> dt.datetime:
    return x509.load_pem_x509_certificate(ca.pem.encode("ascii")).not_valid_after_utc


def _ca_json(ca: ManufacturerCA) -> dict[str, str]:
    cert = x509.load_pem_x509_certificate(ca.pem.encode("ascii"))
    return {
        **manufacturer_json(ca),
        "subject": cert.subject.rfc4514_string(),
        "not_after": json_when(cert.not_valid_after_utc),
    }


def _read_pem(ca_file: Path) -> bytes:
    return read_input_file(
        ca_file, MAX_CA_BUNDLE_BYTES, "CA bundle", Reason.PEM_INVALID,
        path_hint="Check the path of the CA certificate (PEM) to trust.",
    )  # fmt: skip
