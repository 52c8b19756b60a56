"""`fleet device suspend/resume/revoke/why`: a device's lifecycle, one or a whole batch."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

import click

from fleet.authority.lifecycle import (
    ADMIN_REASONS,
    BulkResult,
    BulkSelection,
    parse_manufacturer,
    parse_reason,
    parse_time,
)
from fleet.cli._context import details, echo_json, echo_replacement, json_option, table, when
from fleet.cli.mode import admin_ops, admin_options
from fleet.kernel.errors import RequestInvalid
from fleet.records import Device, RevocationReason
from fleet.records_json import audit_json, bulk_json, device_detail_json, device_json

_F = TypeVar("_F", bound=Callable[..., Any])
REASON_NAMES = ", ".join(r.value for r in ADMIN_REASONS)


def _reason(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse_reason(value)
    except RequestInvalid as exc:
        raise click.BadParameter(exc.message, ctx, param) from None


def _iso_time(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """ISO 8601 date or time; without a zone it is UTC."""
    if value is None:
        return None
    try:
        return parse_time(value, "the time", naive_is_utc=True)
    except RequestInvalid as exc:
        raise click.BadParameter(exc.message, ctx, param) from None


def reason_option(function: _F) -> _F:
    return click.option(
        "--reason",
        callback=_reason,
        required=True,
        metavar="REASON",
        help=f"RFC 5280 revocation reason, one of: {REASON_NAMES}.",
    )(function)


note_option = click.option("--note", default="", help="A note for the audit log.")


@click.command()
@click.argument("device_id", metavar="ID")
@note_option
@admin_options
@json_option
def suspend(device_id: str, note: str, as_json: bool) -> None:
    """Suspend active device ID: EST refuses it (no renewal) until resumed.

    Its certificates stay valid (use revoke to cut it off for good).
    Suspending a suspended device changes nothing.

    \b
    Example:
        fleet device suspend dev-42 --note "stolen van, investigating"
    """
    report_device(admin_ops().suspend(device_id, note), "Suspended", as_json)


@click.command()
@click.argument("device_id", metavar="ID")
@note_option
@admin_options
@json_option
def resume(device_id: str, note: str, as_json: bool) -> None:
    """Resume suspended device ID: it is active again."""
    report_device(admin_ops().resume(device_id, note), "Resumed", as_json)


@click.command()
@click.argument("device_id", metavar="[ID]", required=False)
@reason_option
@note_option
@click.option("--batch", help="Bulk: every device of this manufacturing batch.")
@click.option("--model", help="Bulk: every device of this model.")
@click.option(
    "--manufacturer",
    metavar="SHA256",
    help="Bulk: every device whose bootstrap certificate chains to this manufacturer CA "
    "(its fingerprint, as `fleet trust list` shows it).",
)
@click.option(
    "--issued-before",
    callback=_iso_time,
    metavar="ISO8601",
    help="Bulk: every device holding a good certificate issued before this time "
    "(UTC unless it has a zone).",
)
@click.option("--dry-run", is_flag=True, help="Bulk: print the blast radius only; change nothing.")
@click.option(
    "--confirm",
    is_flag=True,
    help="Bulk: go ahead above [admin] bulk_confirm_threshold devices.",
)
@admin_options
@json_option
def revoke(
    device_id: str | None,
    reason: RevocationReason,
    note: str,
    batch: str | None,
    model: str | None,
    manufacturer: str | None,
    issued_before: dt.datetime | None,
    dry_run: bool,
    confirm: bool,
    as_json: bool,
) -> None:
    """Revoke device ID and all its certificates, or every device a selector picks.

    Revocation is permanent: brokers close the device's sessions at once and
    the CRL and OCSP answers change with it. Give exactly one of ID or a
    selector (--batch, --model, --manufacturer, --issued-before; combined,
    all must match).
    A bulk revocation above [admin] bulk_confirm_threshold devices is refused
    unless --confirm is given; check the blast radius first with --dry-run.

    \b
    Examples:
        fleet device revoke dev-42 --reason keyCompromise --note "key found on forum"
        fleet device revoke --batch w22 --reason superseded --dry-run
        fleet device revoke --batch w22 --reason superseded --confirm
        fleet device revoke --issued-before 2026-01-01 --reason cACompromise --dry-run
    """
    selection = BulkSelection(
        batch=batch, model=model, issued_before=issued_before,
        manufacturer=parse_manufacturer(manufacturer),
    )  # fmt: skip
    bulk = bool(selection.describe())
    if (device_id is None) == (not bulk):
        raise click.UsageError(
            "give exactly one of ID or a selector (--batch/--model/--manufacturer/--issued-before)"
        )
    ops = admin_ops()
    if device_id is not None:
        if dry_run or confirm:
            raise click.UsageError("--dry-run and --confirm apply to bulk revocation only")
        revoked, changed = ops.revoke_device(device_id, reason, note)
        if as_json:
            echo_json({"device": device_json(revoked), "changed": changed})
        elif changed:
            click.echo(f"Revoked device {device_id} ({reason.value}) and all its certificates.")
        else:
            click.echo(f"Device {device_id} was already revoked; nothing changed.")
        return
    if note:
        raise click.UsageError("--note applies to one device; a bulk revocation is audited as such")
    result = ops.bulk_revoke(selection, reason, dry_run=dry_run, confirm=confirm)
    _report_bulk(result, selection, reason, as_json)


@click.command()
@click.argument("device_id", metavar="ID")
@admin_options
@json_option
def why(device_id: str, as_json: bool) -> None:
    """Why device ID is in its state: every decision about it, oldest first.

    Shows each audit record about the device as a timeline: time, who acted
    (the device itself, an admin, the system), what was done, the outcome,
    the reason code and the key details (serials, fingerprints, notes).
    """
    ops = admin_ops()
    found, records = ops.why(device_id)
    request = ops.replacement_request(device_id)
    if as_json:
        shown = device_detail_json(found, request)
        echo_json({"device": shown, "trace": [audit_json(r) for r in records]})
        return
    reason = f" ({found.state_reason})" if found.state_reason else ""
    click.echo(f"Device {found.device_id}: {found.state.value}{reason}")
    facts = [f"model {found.model or '-'}", f"batch {found.batch or '-'}"]
    if found.enrolled_at is not None:
        facts.append(f"enrolled {when(found.enrolled_at)}")
    click.echo("  " + ", ".join(facts))
    echo_replacement(request)
    if not records:
        click.echo("No audit records about this device.")
        return
    click.echo()
    table(
        ("TIME", "ACTOR", "ACTION", "OUTCOME", "REASON", "DETAILS"),
        [
            (
                when(r.event.at),
                r.event.actor,
                r.event.action,
                r.event.outcome,
                r.event.reason,
                details(r.event.detail),
            )
            for r in records
        ],
    )


def report_device(changed: Device, verb: str, as_json: bool) -> None:
    if as_json:
        echo_json(device_json(changed))
    else:
        click.echo(f"{verb} device {changed.device_id}: now {changed.state.value}")


def _report_bulk(
    result: BulkResult, selection: BulkSelection, reason: RevocationReason, as_json: bool
) -> None:
    if as_json:
        echo_json({**bulk_json(result), "selection": selection.describe(), "reason": reason.value})
        return
    what = ", ".join(f"{k}={v}" for k, v in selection.describe().items())
    if result.dry_run:
        click.echo(f"Dry run, nothing changed. Revoking {what} ({reason.value}) would cut off:")
        click.echo(f"  devices:      {result.devices}")
        click.echo(f"  certificates: {result.certificates} (good)")
        click.echo("Repeat without --dry-run to revoke; above the threshold add --confirm.")
        return
    click.echo(
        f"Revoked {len(result.revoked)} device(s) matching {what} ({reason.value}); "
        f"{result.devices} selected, {result.certificates} good certificate(s) cut off."
    )
    for device_id in result.revoked:
        click.echo(f"  {device_id}")
