"""The console's actions (POST): each one calls the fleet.authority use-case the admin
API calls for it, with the same actor form; the use-case audits it."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from fleet.authority import admin as admin_cases
from fleet.authority import lifecycle
from fleet.http import path_params
from fleet.kernel.errors import RequestInvalid
from fleet.records import DeviceFilter
from fleet.ui.core import Console, Ctx

SAMPLE = 10  # devices named in a bulk revocation's preview


def _device_id(ctx: Ctx) -> str:
    return path_params.device_id(ctx.request)


def _form(ctx: Ctx) -> dict[str, str]:
    assert ctx.form is not None  # guard() reads the form of every POST
    return ctx.form


def field(ctx: Ctx, name: str, *, required: bool = False, limit: int = 256) -> str:
    value = str(_form(ctx).get(name, "")).strip()
    if required and not value:
        raise RequestInvalid(f"{name.replace('_', ' ')} is required")
    if len(value) > limit or not value.isprintable():
        raise RequestInvalid(f"{name.replace('_', ' ')} must be printable text (at most {limit})")
    return value


def _checked(ctx: Ctx, name: str) -> bool:
    return _form(ctx).get(name) in ("1", "on", "yes")


async def suspend(console: Console, ctx: Ctx) -> web.Response:
    device_id = _device_id(ctx)
    await lifecycle.suspend_device(
        console.store, device_id, actor=ctx.actor, now=console.clock.now(), note=field(ctx, "note")
    )
    return console.redirect(f"/devices/{device_id}", notice="suspended")


async def resume(console: Console, ctx: Ctx) -> web.Response:
    device_id = _device_id(ctx)
    await lifecycle.resume_device(
        console.store, device_id, actor=ctx.actor, now=console.clock.now(), note=field(ctx, "note")
    )
    return console.redirect(f"/devices/{device_id}", notice="resumed")


async def revoke_confirm(console: Console, ctx: Ctx) -> web.Response:
    """Step one: name the device, its good certificates and the reason; change nothing."""
    device_id = _device_id(ctx)
    reason = lifecycle.parse_reason(field(ctx, "reason", required=True))
    device = await console.store.get_device(device_id)
    certificates = await console.store.list_certificates(device_id)
    good = [c for c in certificates if c.status.value == "good"]
    return console.render(
        "confirm_revoke.html", ctx=ctx, nav="devices", device=device, good=good,
        reason=reason.value, note=field(ctx, "note"),
    )  # fmt: skip


async def revoke(console: Console, ctx: Ctx) -> web.Response:
    """Step two: only with the confirmation naming this device."""
    device_id = _device_id(ctx)
    if field(ctx, "confirm") != device_id:
        raise RequestInvalid(
            f"revoking needs the confirmation naming device {device_id}; nothing changed"
        )
    reason = lifecycle.parse_reason(field(ctx, "reason", required=True))
    result = await lifecycle.revoke_device(
        console.store, device_id, reason, actor=ctx.actor, now=console.clock.now(),
        note=field(ctx, "note"),
    )  # fmt: skip
    notice = "revoked" if result.event is not None else "unchanged"
    return console.redirect(f"/devices/{device_id}", notice=notice)


async def approve(console: Console, ctx: Ctx) -> web.Response:
    device_id = _device_id(ctx)
    await admin_cases.approve_device(
        console.store, device_id, actor=ctx.actor, now=console.clock.now(),
        replace=_checked(ctx, "replace"), key=field(ctx, "key_sha256") or None,
    )  # fmt: skip
    return console.redirect(_back(ctx, device_id), notice="approved")


async def reject(console: Console, ctx: Ctx) -> web.Response:
    device_id = _device_id(ctx)
    await admin_cases.reject_device(
        console.store, device_id, actor=ctx.actor, now=console.clock.now(),
        revoke=_checked(ctx, "revoke"),
    )  # fmt: skip
    return console.redirect(_back(ctx, device_id), notice="rejected")


def _back(ctx: Ctx, device_id: str) -> str:
    return "/pending" if _form(ctx).get("back") == "pending" else f"/devices/{device_id}"


def _selection(ctx: Ctx) -> lifecycle.BulkSelection:
    issued_before = None
    text = field(ctx, "issued_before", limit=40)
    if text:
        try:
            day = dt.date.fromisoformat(text)
        except ValueError:
            raise RequestInvalid("issued before must be a date (YYYY-MM-DD)") from None
        issued_before = dt.datetime.combine(day, dt.time(), dt.UTC)
    return lifecycle.BulkSelection(
        batch=field(ctx, "batch") or None,
        model=field(ctx, "model") or None,
        issued_before=issued_before,
        manufacturer=lifecycle.parse_manufacturer(field(ctx, "manufacturer")),
    )


async def _preview(
    console: Console, ctx: Ctx, selection: lifecycle.BulkSelection, reason: str
) -> dict[str, object]:
    dry = await lifecycle.bulk_revoke(
        console.store, selection, lifecycle.parse_reason(reason), dry_run=True, confirm=False,
        threshold=console.bulk_threshold, actor=ctx.actor, now=console.clock.now(),
    )  # fmt: skip
    device_filter: DeviceFilter = selection.device_filter()
    sample = await console.store.list_devices(device_filter, limit=SAMPLE)
    return {"devices": dry.devices, "certificates": dry.certificates, "sample": sample}


def _bulk_form(ctx: Ctx) -> dict[str, str]:
    names = ("batch", "model", "manufacturer", "issued_before", "reason")
    return {name: field(ctx, name, limit=40 if name == "issued_before" else 256) for name in names}


async def bulk_preview(console: Console, ctx: Ctx) -> web.Response:
    """The blast radius (count and a sample) of a selection; nothing changes."""
    form = _bulk_form(ctx)
    reason = field(ctx, "reason", required=True)
    preview = await _preview(console, ctx, _selection(ctx), reason)
    return console.render(
        "bulk.html", ctx=ctx, nav="bulk", form=form, preview=preview, result=None,
        reasons=[r.value for r in lifecycle.ADMIN_REASONS],
        manufacturers=await console.store.list_manufacturer_cas(),
    )  # fmt: skip


async def bulk_revoke(console: Console, ctx: Ctx) -> web.Response:
    """Revoke the selection, only when the typed count is the blast radius right now."""
    form = _bulk_form(ctx)
    reason = field(ctx, "reason", required=True)
    selection = _selection(ctx)
    preview = await _preview(console, ctx, selection, reason)
    typed = field(ctx, "confirm_count", limit=12)
    if typed != str(preview["devices"]):
        return console.render(
            "bulk.html", 409, ctx=ctx, nav="bulk", form=form, preview=preview, result=None,
            reasons=[r.value for r in lifecycle.ADMIN_REASONS],
        manufacturers=await console.store.list_manufacturer_cas(),
            mismatch="Type the number of devices shown to confirm; nothing changed.",
        )  # fmt: skip
    result = await lifecycle.bulk_revoke(
        console.store, selection, lifecycle.parse_reason(reason), dry_run=False, confirm=True,
        threshold=console.bulk_threshold, actor=ctx.actor, now=console.clock.now(),
    )  # fmt: skip
    return console.render(
        "bulk.html", ctx=ctx, nav="bulk", form=form, preview=None, result=result,
        reasons=[r.value for r in lifecycle.ADMIN_REASONS],
        manufacturers=await console.store.list_manufacturer_cas(),
    )  # fmt: skip
