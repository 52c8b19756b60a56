"""`fleet cert`: revoke one certificate, list the ones about to expire."""

from __future__ import annotations

import datetime as dt

import click

from fleet.cli._context import echo_json, json_option, now, table, when
from fleet.cli.lifecycle import note_option, reason_option
from fleet.cli.mode import admin_ops, admin_options
from fleet.kernel.errors import RequestInvalid
from fleet.records import RevocationReason
from fleet.records_json import certificate_json
from fleet.serials import parse_serial


@click.group()
@admin_options
def cert() -> None:
    """Revoke single device certificates; see which expire soon.

    With --server URL (and an admin credential) it works on a running
    server's admin API instead of the local store.
    """


@cert.command()
@click.argument("serial", metavar="SERIAL")
@reason_option
@note_option
@admin_options
@json_option
def revoke(serial: str, reason: RevocationReason, note: str, as_json: bool) -> None:
    """Revoke the certificate with hex SERIAL; the device itself stays as it is.

    For a superseded or leaked certificate of a device that is otherwise fine.
    Find serials with `fleet device show ID`.

    \b
    Example:
        fleet cert revoke 3f9a1c... --reason superseded
    """
    number = _serial(serial)
    record, changed = admin_ops().revoke_certificate(number, reason, note)
    if as_json:
        echo_json({"certificate": certificate_json(record), "changed": changed})
    elif changed:
        click.echo(f"Revoked certificate {number:x} of device {record.device_id} ({reason.value}).")
    else:
        click.echo(f"Certificate {number:x} was already revoked; nothing changed.")


@cert.command()
@click.option(
    "--days",
    type=click.IntRange(0, 3650),
    required=True,
    help="Certificates whose notAfter is within this many days from now.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 10000),
    default=1000,
    show_default=True,
    help="At most this many certificates.",
)
@admin_options
@json_option
def expiring(days: int, limit: int, as_json: bool) -> None:
    """List good certificates that expire within --days, soonest first.

    Devices renew on their own well before expiry; a long list here means
    devices are not renewing (offline, wrong clock, refused).

    \b
    Example:
        fleet cert expiring --days 7
    """
    records = admin_ops().expiring(days, limit)
    if as_json:
        echo_json([certificate_json(r) for r in records])
        return
    if not records:
        click.echo(f"No good certificate expires within {days} day(s).")
        return
    current = now()
    table(
        ("SERIAL", "DEVICE", "NOT AFTER", "LEFT"),
        [
            (f"{r.serial:x}", r.device_id, when(r.not_after), _left(r.not_after - current))
            for r in records
        ],
    )


def _left(delta: dt.timedelta) -> str:
    if delta.total_seconds() <= 0:
        return "expired"
    if delta.days >= 1:
        return f"{delta.days}d"
    return f"{int(delta.total_seconds() // 3600)}h"


def _serial(text: str) -> int:
    try:
        return parse_serial(text, "SERIAL")
    except RequestInvalid as exc:
        raise click.BadParameter(exc.message, param_hint="SERIAL") from None
