"""`fleet audit`: read the audit log and check its hash chain."""

from __future__ import annotations

import click

from fleet.cli._context import details, echo_json, json_option, table, when
from fleet.cli.mode import admin_ops, admin_options
from fleet.kernel.device_id import validate_device_id
from fleet.kernel.errors import FleetError
from fleet.records_json import audit_json


class AuditChainBroken(FleetError):
    reason = "audit_chain_broken"
    hint = (
        "The audit log was changed outside fleet: the records named above were edited, "
        "inserted or deleted. Keep the database as evidence and compare it with a backup."
    )


@click.group()
@admin_options
def audit() -> None:
    """Read the audit log (every decision and admin action) and verify its hash chain.

    With --server URL (and an admin credential) it reads a running server's
    audit log through the admin API instead of the local store.
    """


@audit.command()
@admin_options
@json_option
def verify(as_json: bool) -> None:
    """Check the whole audit log's hash chain.

    Each record's hash covers the previous record's hash and its own event, so
    editing, inserting or deleting a row breaks the chain there.

    \b
    Prints, with exit code 0:
        audit log intact: 1234 records
    or each broken record (edited, inserted or deleted, sequence gap), exit 1:
        record 17: edited
    """
    report = admin_ops().verify_audit()
    if as_json:
        echo_json(
            {
                "records": report.records,
                "intact": not report.problems,
                "problems": [{"seq": p.seq, "problem": p.problem} for p in report.problems],
            }
        )
    elif not report.problems:
        click.echo(f"audit log intact: {report.records} records")
    else:
        for problem in report.problems:
            click.echo(f"record {problem.seq}: {problem.problem.replace('_', ' ')}")
    if report.problems:
        raise AuditChainBroken(
            f"audit log broken: {len(report.problems)} problem(s) in {report.records} records"
        )


@audit.command()
@click.option("--device", "device_id", metavar="ID", help="Only records about this device.")
@click.option(
    "--after",
    type=click.IntRange(0),
    default=0,
    metavar="SEQ",
    help="Only records after this sequence number (to page on).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 10000),
    default=100,
    show_default=True,
    help="At most this many records.",
)
@admin_options
@json_option
def show(device_id: str | None, after: int, limit: int, as_json: bool) -> None:
    """Show audit records, oldest first.

    \b
    Examples:
        fleet audit show --limit 20
        fleet audit show --device dev-42 --json
        fleet audit show --after 1200         (the next page after record 1200)
    """
    if device_id is not None:
        validate_device_id(device_id)
    records = admin_ops().audit(device_id, after, limit)
    if as_json:
        echo_json([audit_json(r) for r in records])
        return
    if not records:
        click.echo("No audit records.")
        return
    table(
        ("SEQ", "TIME", "ACTOR", "ACTION", "OUTCOME", "REASON", "DEVICE", "DETAILS"),
        [
            (
                str(r.seq),
                when(r.event.at),
                r.event.actor,
                r.event.action,
                r.event.outcome,
                r.event.reason,
                r.event.device_id or "-",
                details(r.event.detail, width=60),
            )
            for r in records
        ],
    )
    if len(records) == limit:
        click.echo(f"(more may follow: --after {records[-1].seq})")
