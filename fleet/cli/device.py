"""`fleet device`: look at devices, approve or reject waiting ones, grant enrollment tokens."""

from __future__ import annotations

from pathlib import Path

import click

from fleet.authority.lifecycle import parse_time
from fleet.ca_registry import set_renew_before
from fleet.cli._context import (
    echo_json,
    echo_replacement,
    json_option,
    load,
    now,
    refuse_existing_secret_file,
    save_secret,
    secret_out_option,
    table,
    when,
)
from fleet.cli.lifecycle import report_device, resume, revoke, suspend, why
from fleet.cli.mode import admin_ops, admin_options, require_local
from fleet.cli.ops import DeviceQuery
from fleet.kernel.device_id import validate_device_id
from fleet.kernel.errors import ConfigError, RequestInvalid
from fleet.records import Device, DeviceState, ReplacementRequest
from fleet.records_json import certificate_json, device_detail_json, device_json
from fleet.tokens import DEFAULT_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME, parse_lifetime


@click.group()
@admin_options
def device() -> None:
    """Look at devices, approve or reject waiting ones, grant enrollment tokens,
    suspend, resume and revoke them, and see why they were let in or refused.

    \b
    Every command works on the local store (fleet.toml), or with --server URL
    on a running server's admin API with an admin credential:
        fleet device list --state pending
        fleet device --server https://fleet:8443 --ca-file root.pem \\
            --token-file ~/.fleet-token revoke dev-42 --reason keyCompromise
    """


@device.command()
@click.argument("device_id", metavar="ID")
@click.option(
    "--expires-in",
    default=f"{DEFAULT_TOKEN_LIFETIME.days}d",
    show_default=True,
    metavar="DURATION",
    help=f"How long the token is valid: 30m, 12h, 7d, 2w (at most {MAX_TOKEN_LIFETIME.days}d).",
)
@secret_out_option
@admin_options
@json_option
def token(device_id: str, expires_in: str, out_file: Path | None, as_json: bool) -> None:
    """Create a one-time enrollment token for device ID.

    The device enrolls with it instead of a bootstrap certificate, sending it
    as the HTTP Basic password with the device id as user name. The token is
    printed once and stored only as its SHA-256; a new token replaces an
    earlier one. An unknown ID is created as a pending device that only this
    token can enroll (a bootstrap certificate for it still needs approval).
    """
    validate_device_id(device_id)
    lifetime = parse_lifetime(expires_in)
    refuse_existing_secret_file(out_file)
    issued = admin_ops().issue_token(device_id, lifetime)
    if out_file is not None:
        save_secret(out_file, issued.token)
    if as_json:
        echo_json(
            {
                "device_id": issued.device_id,
                **(
                    {"token_file": str(out_file)}
                    if out_file is not None
                    else {"token": issued.token}
                ),
                "expires_at": when(issued.expires_at),
                "device_created": issued.created_device,
            }
        )
        return
    if issued.created_device:
        click.echo(f"Created device {device_id} (pending; this token enrolls it).")
    if out_file is not None:
        click.echo(
            f"One-time enrollment token for device {device_id}, valid until "
            f"{when(issued.expires_at)}, written to {out_file} (0600)."
        )
        # --device-id is required with --token-file: the agent cannot learn the id from a token.
        click.echo(
            "The device reads it with: fleet-agent enroll ... "
            f"--device-id {device_id} --token-file {out_file}"
        )
        return
    click.echo(
        f"One-time enrollment token for device {device_id}, valid until {when(issued.expires_at)}:"
    )
    click.echo(f"  {issued.token}")
    click.echo("It is shown only this once and cannot be recovered; make a new one if lost.")
    click.echo(f"The device sends it as the HTTP Basic password, user name {device_id}.")


@device.command()
@click.argument("device_id", metavar="ID")
@click.option(
    "--replace",
    is_flag=True,
    help="Answer a replacement request (factory reset): revoke the device's current "
    "certificates (superseded) and issue the new key at the device's next retry.",
)
@click.option(
    "--key",
    metavar="SHA256",
    help="With --replace: the new key to approve (its SHA-256 as `fleet device show` prints "
    "it; 8+ hex digits). Needed when the bootstrap certificate came with several keys.",
)
@admin_options
@json_option
def approve(device_id: str, replace: bool, key: str | None, as_json: bool) -> None:
    """Approve device ID, waiting for approval: it may then enroll (pending -> registered).

    
    An active device whose bootstrap certificate was presented again has a
    replacement request (see `fleet device show ID`). Approving it needs a choice:
        fleet device approve ID --replace [--key SHA256]
                                            factory reset: the new key replaces the old
        fleet device reject ID [--revoke]   clone: refuse it (--revoke: old certs too)
    """
    ops = admin_ops()
    changed = ops.approve(device_id, replace=replace, key=key)
    _report(ops.replacement_request(device_id), changed, "Approved", as_json)


@device.command()
@click.argument("device_id", metavar="ID")
@click.option(
    "--revoke",
    is_flag=True,
    help="With a replacement request (clone): also revoke the device's current "
    "certificates, reason keyCompromise.",
)
@admin_options
@json_option
def reject(device_id: str, revoke: bool, as_json: bool) -> None:
    """Reject device ID, waiting for approval: it will be refused (pending -> rejected).

    For an active device with a replacement request, the bootstrap replay is
    refused from then on and the device stays active; --revoke revokes its
    current certificates too (keyCompromise).
    """
    ops = admin_ops()
    changed = ops.reject(device_id, revoke=revoke)
    _report(ops.replacement_request(device_id), changed, "Rejected", as_json)


def _report(request: ReplacementRequest | None, changed: Device, verb: str, as_json: bool) -> None:
    if as_json:
        echo_json(device_detail_json(changed, request))
        return
    report_device(changed, verb, as_json)
    echo_replacement(request)


@device.command()
@click.argument("device_id", metavar="ID")
@admin_options
@json_option
def show(device_id: str, as_json: bool) -> None:
    """Show device ID: state, manifest pin, enrollment, certificates."""
    ops = admin_ops()
    found, certificates = ops.show_device(device_id)
    request = ops.replacement_request(device_id)
    if as_json:
        echo_json(
            {
                **device_detail_json(found, request),
                "certificates": [certificate_json(c) for c in certificates],
            }
        )
        return
    data = device_json(found)
    for key in (
        "device_id",
        "state",
        "state_reason",
        "model",
        "batch",
        "bootstrap_sha256",
        "enrolled_bootstrap_sha256",
        "enrolled_at",
        "created_at",
        "updated_at",
    ):
        click.echo(f"{key + ':':27}{data[key] or '-'}")
    click.echo(f"{'certificates:':27}{len(certificates) or '-'}")
    for cert in certificates:
        reason = f" ({cert.revocation_reason.value})" if cert.revocation_reason else ""
        click.echo(
            f"  serial {cert.serial:x}  {cert.status.value}{reason}  "
            f"{when(cert.not_before)} .. {when(cert.not_after)}"
        )
    echo_replacement(request)


@device.command("list")
@click.option(
    "--state",
    type=click.Choice([s.value for s in DeviceState]),
    help="Only devices in this state.",
)
@click.option("--batch", help="Only devices of this manufacturing batch (from the manifest).")
@click.option("--model", help="Only devices of this model (from the manifest).")
@click.option(
    "--expiring-within",
    "expiring_within",
    type=click.IntRange(0, 3650),
    metavar="DAYS",
    help="Only devices whose newest certificate expires within DAYS days.",
)
@admin_options
@json_option
def list_(
    state: str | None,
    batch: str | None,
    model: str | None,
    expiring_within: int | None,
    as_json: bool,
) -> None:
    """List devices, ordered by id; the filters combine (all must match).

    \b
    Examples:
        fleet device list --state pending
        fleet device list --batch w22 --model TH-200 --json
        fleet device list --expiring-within 7
    """
    query = DeviceQuery(
        state=None if state is None else DeviceState(state),
        batch=batch,
        model=model,
        expiring_within_days=expiring_within,
    )
    devices = admin_ops().list_devices(query)
    if as_json:
        echo_json([device_json(d) for d in devices])
        return
    if not devices:
        filtered = any(v is not None for v in (state, batch, model, expiring_within))
        click.echo("No devices match." if filtered else "No devices.")
        return
    table(
        ("DEVICE", "STATE", "MODEL", "BATCH", "PINNED", "UPDATED"),
        [
            (
                d.device_id,
                d.state.value,
                d.model,
                d.batch,
                "yes" if d.bootstrap_sha256 else "no",
                when(d.updated_at),
            )
            for d in devices
        ],
    )


@device.command("renew")
@click.option(
    "--all", "all_devices", is_flag=True, help="Every device (the only selection for now)."
)
@click.option(
    "--before",
    "deadline",
    metavar="DATE",
    help="ISO 8601 date or time (UTC unless an offset is given), e.g. 2027-03-01.",
)
@click.option("--clear", is_flag=True, help="Remove the deadline; certificates get full validity.")
@admin_options
def renew(all_devices: bool, deadline: str | None, clear: bool) -> None:
    """Make every device renew before DATE, through its own renewal (never a push).

    Until DATE, each certificate the server issues is short enough that the
    device's agent, renewing at 2/3 of a lifetime, comes back before DATE
    (validity at most 1.5 x the time left, at least an hour). After
    `fleet ca promote` that moves every device to the new issuing CA by DATE.
    Local (fleet.toml's data directory); running servers follow within
    [ca] reload_seconds. Devices renew more often until DATE: pick DATE a few
    renewal periods ahead when the fleet is large.
    """
    require_local("fleet device renew")
    config = load()
    if clear:
        set_renew_before(config, None)
        click.echo("Renewal deadline removed.")
        return
    if not all_devices or deadline is None:
        raise click.UsageError("give --all --before DATE (or --clear)")
    try:
        when_ = parse_time(deadline, "the date", naive_is_utc=True)
    except RequestInvalid as exc:
        raise click.BadParameter(exc.message, param_hint="--before") from None
    if when_ <= now():
        raise ConfigError(
            f"--before {deadline} is not in the future",
            hint="Give a date after now; devices need time to come back.",
        )
    generation = set_renew_before(config, when_)
    click.echo(f"Every device renews before {when(when_)} (generation {generation}).")


for _command in (suspend, resume, revoke, why):
    device.add_command(_command)
