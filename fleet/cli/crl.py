"""`fleet crl`: sign the issuing CA's CRL from the local store and write it safely."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import click
from cryptography import x509

from fleet.authority.crl import CrlPublisher, SignedCrl, validate_crl
from fleet.cli._context import config_option, load, now, when, with_store
from fleet.kernel.clock import SystemClock
from fleet.kernel.errors import FleetError, PolicyError
from fleet.kernel.files import PUBLIC_MODE, write_atomic

# A CRL written for a broker must stay valid at least this long, or the
# broker refuses the whole fleet soon after loading it.
MIN_REMAINING = dt.timedelta(minutes=10)


@click.command()
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the CRL to this file atomically (readers see the old or the new "
    "file, never a half-written one). Without it, print the PEM to stdout.",
)
@click.option(
    "--pem/--der",
    "as_pem",
    default=True,
    show_default=True,
    help="Encoding of --out. Mosquitto's crlfile must be PEM.",
)
@config_option
def crl(out: Path | None, as_pem: bool) -> None:
    """Sign a CRL of every revoked device certificate and write it.

    The CRL is checked before anything is written: it must parse, verify with
    the issuing CA certificate, and stay valid for at least 10 minutes; it
    must also not be older (lower CRL number) than a CRL of this CA already
    in --out. If a check fails, --out is left untouched and the exit code is
    1 — a garbage CRL turns revocation checking off in Mosquitto, an expired
    one makes it refuse every device.

    Run it from cron well within [revocation] crl_next_update_hours, then
    reload the broker (SIGHUP).
    """
    from fleet.cli.serve import ca_key_passphrase, pkcs11_pin  # import the server: when needed
    from fleet.server.app import load_issuer

    config = load()
    issuer = load_issuer(config, ca_key_passphrase(config), pkcs11_pin=pkcs11_pin(config))
    signed = with_store(
        config,
        lambda store: CrlPublisher(
            store,
            issuer,
            SystemClock(),
            next_update=dt.timedelta(hours=config.revocation.crl_next_update_hours),
            refresh=dt.timedelta(minutes=config.revocation.crl_refresh_minutes),
        ).regenerate(),
    )
    validate_crl(signed.der, issuer.certificate, now=now(), min_remaining=MIN_REMAINING)
    if out is None:
        sys.stdout.buffer.write(signed.pem)
        sys.stdout.buffer.flush()
        return
    _refuse_rollback(out, signed, issuer.certificate)
    try:
        write_atomic(out, signed.pem if as_pem else signed.der, mode=PUBLIC_MODE)
    except OSError as exc:
        raise FleetError(f"cannot write {out}: {exc.strerror}") from exc
    click.echo(
        f"Wrote CRL #{signed.number} ({signed.revoked_count} revoked, "
        f"next update {when(signed.next_update)}) to {out}"
    )


def _refuse_rollback(out: Path, signed: SignedCrl, issuer: x509.Certificate) -> None:
    """Refuse to replace a newer CRL of this CA: replaying an older one un-revokes."""
    try:
        data = out.read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise FleetError(f"cannot read the existing {out}: {exc.strerror}") from exc
    try:
        if data.lstrip().startswith(b"-----"):
            existing = x509.load_pem_x509_crl(data)
        else:
            existing = x509.load_der_x509_crl(data)
        number = existing.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (ValueError, x509.ExtensionNotFound):
        return  # not a CRL we can compare with; a valid one is better than it
    if existing.issuer != issuer.subject or number <= signed.number:
        return
    raise PolicyError(
        f"{out} holds CRL #{number}, newer than the one just signed (#{signed.number})",
        reason="crl_rollback",
        hint="The system clock may have gone backwards; check it. Nothing was written. "
        "Delete the file to replace it anyway.",
    )
