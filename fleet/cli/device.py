"""`fleet device`: look at devices, approve or reject waiting ones, grant enrollment tokens."""

from __future__ import annotations

from typing import Any

import click

from fleet.authority.admin import approve_device, issue_enrollment_token, reject_device
from fleet.cli._context import (
    config_option,
    device_to_json,
    echo_json,
    json_option,
    load,
    local_actor,
    now,
    table,
    when,
    with_store,
)
from fleet.pki.device_id import validate_device_id
from fleet.store.protocol import Store
from fleet.store.records import CertificateRecord, Device, DeviceFilter, DeviceState
from fleet.tokens import DEFAULT_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME, parse_lifetime

_PAGE = 500


@click.group()
@config_option
def device() -> None:
    """Look at devices, approve or reject waiting ones, grant enrollment tokens."""


@device.command()
@click.argument("device_id", metavar="ID")
@click.option(
    "--expires-in",
    default=f"{DEFAULT_TOKEN_LIFETIME.days}d",
    show_default=True,
    metavar="DURATION",
    help=f"How long the token is valid: 30m, 12h, 7d, 2w (at most {MAX_TOKEN_LIFETIME.days}d).",
)
@config_option
@json_option
def token(device_id: str, expires_in: str, as_json: bool) -> None:
    """Create a one-time enrollment token for device ID.

    The device enrolls with it instead of a bootstrap certificate, sending it
    as the HTTP Basic password with the device id as user name. The token is
    printed once and stored only as its SHA-256; a new token replaces an
    earlier one. An unknown ID is created as a pending device that only this
    token can enroll (a bootstrap certificate for it still needs approval).
    """
    validate_device_id(device_id)
    lifetime = parse_lifetime(expires_in)
    issued = with_store(
        load(),
        lambda store: issue_enrollment_token(
            store, device_id, lifetime=lifetime, actor=local_actor(), now=now()
        ),
    )
    if as_json:
        echo_json(
            {
                "device_id": issued.device_id,
                "token": issued.token,
                "expires_at": when(issued.expires_at),
                "device_created": issued.created_device,
            }
        )
        return
    if issued.created_device:
        click.echo(f"Created device {device_id} (pending; this token enrolls it).")
    click.echo(
        f"One-time enrollment token for device {device_id}, valid until {when(issued.expires_at)}:"
    )
    click.echo(f"  {issued.token}")
    click.echo("It is shown only this once and cannot be recovered; make a new one if lost.")
    click.echo(f"The device sends it as the HTTP Basic password, user name {device_id}.")


@device.command()
@click.argument("device_id", metavar="ID")
@config_option
@json_option
def approve(device_id: str, as_json: bool) -> None:
    """Approve device ID, waiting for approval: it may then enroll (pending -> registered)."""
    changed = with_store(
        load(),
        lambda store: approve_device(store, device_id, actor=local_actor(), now=now()),
    )
    _report(changed, "Approved", as_json)


@device.command()
@click.argument("device_id", metavar="ID")
@config_option
@json_option
def reject(device_id: str, as_json: bool) -> None:
    """Reject device ID, waiting for approval: it will be refused (pending -> rejected)."""
    changed = with_store(
        load(),
        lambda store: reject_device(store, device_id, actor=local_actor(), now=now()),
    )
    _report(changed, "Rejected", as_json)


@device.command()
@click.argument("device_id", metavar="ID")
@config_option
@json_option
def show(device_id: str, as_json: bool) -> None:
    """Show device ID: state, manifest pin, enrollment, certificates."""

    async def read(store: Store) -> tuple[Device, list[CertificateRecord]]:
        return await store.get_device(device_id), await store.list_certificates(device_id)

    found, certificates = with_store(load(), read)
    if as_json:
        echo_json({**device_to_json(found), "certificates": [_cert_json(c) for c in certificates]})
        return
    data = device_to_json(found)
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
        click.echo(
            f"  serial {cert.serial:x}  {cert.status.value}  "
            f"{when(cert.not_before)} .. {when(cert.not_after)}"
        )


@device.command("list")
@click.option(
    "--state",
    type=click.Choice([s.value for s in DeviceState]),
    help="Only devices in this state.",
)
@config_option
@json_option
def list_(state: str | None, as_json: bool) -> None:
    """List devices, ordered by id."""
    device_filter = DeviceFilter(state=None if state is None else DeviceState(state))

    async def read(store: Store) -> list[Device]:
        found: list[Device] = []
        while True:
            page = await store.list_devices(
                device_filter, after=found[-1].device_id if found else None, limit=_PAGE
            )
            found += page
            if len(page) < _PAGE:
                return found

    devices = with_store(load(), read)
    if as_json:
        echo_json([device_to_json(d) for d in devices])
        return
    if not devices:
        click.echo("No devices" + (f" in state {state}." if state else "."))
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


def _report(changed: Device, verb: str, as_json: bool) -> None:
    if as_json:
        echo_json(device_to_json(changed))
    else:
        click.echo(f"{verb} device {changed.device_id}: now {changed.state.value}")


def _cert_json(cert: CertificateRecord) -> dict[str, Any]:
    return {
        "serial": format(cert.serial, "x"),
        "status": cert.status.value,
        "not_before": when(cert.not_before),
        "not_after": when(cert.not_after),
        "issued_at": when(cert.issued_at),
        "revoked_at": when(cert.revoked_at) or None,
        "revocation_reason": None
        if cert.revocation_reason is None
        else cert.revocation_reason.value,
    }
