"""The admin REST API under /api/v1 (described by fleet/admin/openapi.json).

Every endpoint names the least role it needs; the caller is identified
first (no anonymous access), a caller with too small a role gets 403 and
the attempt is audited, and every change is audited with its actor by the
use-cases it calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from fleet.admin.auth import AdminAuthenticator, actor_of, require_role
from fleet.authority import admin as admin_cases
from fleet.authority import lifecycle
from fleet.authority.admin import MAX_CA_BUNDLE_BYTES, TrustResult
from fleet.authority.audit import verify_audit_log
from fleet.http import path_params
from fleet.http.body import read_body
from fleet.http.json_body import read_json_object
from fleet.http.path_params import check_path_params, parse_device_id
from fleet.kernel.clock import Clock
from fleet.kernel.domains import FleetAuthorities
from fleet.kernel.errors import EncodingInvalid, RequestInvalid
from fleet.manifest import MAX_MANIFEST_BYTES, label_problem, parse_manifest
from fleet.records import (
    AdminCredential,
    AdminRole,
    Device,
    DeviceFilter,
    DeviceState,
)
from fleet.records_json import (
    audit_json,
    bulk_json,
    certificate_json,
    device_detail_json,
    device_json,
    manufacturer_json,
)
from fleet.store.protocol import Store

API = "/api/v1"
MAX_PAGE = 500

Handler = Callable[["AdminApi", web.Request, AdminCredential], Awaitable[web.StreamResponse]]


def needs(role: AdminRole) -> Callable[[Handler], Callable[[AdminApi, web.Request], Any]]:
    """Mark an endpoint with the least role it needs; identify and check the caller."""

    def wrap(handler: Handler) -> Callable[[AdminApi, web.Request], Any]:
        async def endpoint(self: AdminApi, request: web.Request) -> web.StreamResponse:
            admin = await self.auth.identify(request)
            request["admin"] = admin.name
            check_path_params(request)  # 400 for a malformed one, before anything else sees it
            await require_role(
                self.store, self.clock, admin, role, method=request.method, path=request.path,
                device_id=request.match_info.get("device_id"),  # checked just above
            )  # fmt: skip
            return await handler(self, request, admin)

        endpoint.needed_role = role  # type: ignore[attr-defined]
        return endpoint

    return wrap


@dataclasses.dataclass
class AdminApi:
    store: Store
    auth: AdminAuthenticator
    clock: Clock
    bulk_threshold: int
    fleet: FleetAuthorities  # the fleet's own CAs, never trusted as manufacturers

    def routes(self) -> list[web.RouteDef]:
        d = f"{API}/devices/{{device_id}}"
        return [
            web.get(f"{API}/openapi.json", self.openapi),
            web.get(f"{API}/devices", self.list_devices),
            web.get(d, self.show_device),
            web.get(f"{d}/certificates", self.device_certificates),
            web.get(f"{d}/why", self.why),
            web.post(f"{d}/approve", self.approve),
            web.post(f"{d}/reject", self.reject),
            web.post(f"{d}/suspend", self.suspend),
            web.post(f"{d}/resume", self.resume),
            web.post(f"{d}/revoke", self.revoke),
            web.post(f"{d}/token", self.token),
            web.post(f"{API}/revocations/bulk", self.bulk_revoke),
            web.get(f"{API}/revocations", self.revocations),
            web.post(f"{API}/certificates/{{serial}}/revoke", self.revoke_certificate),
            web.get(f"{API}/certificates/expiring", self.expiring),
            web.post(f"{API}/manifest", self.import_manifest),
            web.get(f"{API}/manufacturers", self.list_manufacturers),
            web.post(f"{API}/manufacturers", self.add_manufacturer),
            web.delete(f"{API}/manufacturers/{{sha256}}", self.remove_manufacturer),
            web.get(f"{API}/intermediates", self.list_intermediates),
            web.post(f"{API}/intermediates", self.add_intermediate),
            web.delete(f"{API}/intermediates/{{sha256}}", self.remove_intermediate),
            web.get(f"{API}/audit", self.audit),
            web.get(f"{API}/audit/verify", self.audit_verify),
        ]

    # -- reading -----------------------------------------------------------------
    # Public: the API's description holds no secrets, and a client reads it
    # before it has (or to learn how to use) a credential.
    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    @needs(AdminRole.VIEWER)
    async def list_devices(self, request: web.Request, admin: AdminCredential) -> web.Response:
        query = request.query
        state = _choice(query, "state", [s.value for s in DeviceState])
        days = _int(query, "expiring_within_days", 0, 3650)
        expiring = self.clock.now() + dt.timedelta(days=days) if days is not None else None
        device_filter = DeviceFilter(
            state=DeviceState(state) if state else None,
            batch=_text(query, "batch"),
            model=_text(query, "model"),
            expiring_before=expiring,
            manufacturer_sha256=lifecycle.parse_manufacturer(_text(query, "manufacturer")),
        )
        limit = _int(query, "limit", 1, MAX_PAGE) or 100
        after = _text(query, "after")
        devices = await self.store.list_devices(device_filter, after=after, limit=limit)
        next_cursor = devices[-1].device_id if len(devices) == limit else None
        return web.json_response({"items": [device_json(d) for d in devices], "next": next_cursor})

    @needs(AdminRole.VIEWER)
    async def show_device(self, request: web.Request, admin: AdminCredential) -> web.Response:
        device = await self.store.get_device(path_params.device_id(request))
        return await self._device_detail(device)

    async def _device_detail(self, device: Device) -> web.Response:
        replacement = await self.store.get_replacement_request(device.device_id)
        return web.json_response(device_detail_json(device, replacement))

    @needs(AdminRole.VIEWER)
    async def device_certificates(
        self, request: web.Request, admin: AdminCredential
    ) -> web.Response:
        device_id = path_params.device_id(request)
        await self.store.get_device(device_id)  # 404 for an unknown device
        records = await self.store.list_certificates(device_id)
        return web.json_response({"items": [certificate_json(r) for r in records]})

    @needs(AdminRole.VIEWER)
    async def why(self, request: web.Request, admin: AdminCredential) -> web.Response:
        device, records = await lifecycle.decision_trace(self.store, path_params.device_id(request))
        replacement = await self.store.get_replacement_request(device.device_id)
        return web.json_response(
            {
                "device": device_detail_json(device, replacement),
                "trace": [audit_json(r) for r in records],
            }
        )

    @needs(AdminRole.VIEWER)
    async def expiring(self, request: web.Request, admin: AdminCredential) -> web.Response:
        days = _int(request.query, "days", 0, 3650)
        if days is None:
            raise RequestInvalid("query parameter days is required (0-3650)")
        before = self.clock.now() + dt.timedelta(days=days)
        limit = _int(request.query, "limit", 1, 10000) or 1000
        records = await self.store.list_expiring(before, limit=limit)
        return web.json_response({"items": [certificate_json(r) for r in records]})

    @needs(AdminRole.VIEWER)
    async def revocations(self, request: web.Request, admin: AdminCredential) -> web.Response:
        after = _int(request.query, "after_seq", 0, 2**62) or 0
        limit = _int(request.query, "limit", 1, 10000) or 1000
        events = await self.store.feed_since(after, limit=limit)
        head = await self.store.feed_head()
        return web.json_response(
            {
                "head": head,
                "items": [
                    {
                        "seq": e.seq,
                        "kind": e.kind.value,
                        "device_id": e.device_id,
                        "serials": [f"{s:x}" for s in e.serials],
                        "reason": e.reason.value,
                        "at": e.at.isoformat(),
                    }
                    for e in events
                ],
            }
        )

    @needs(AdminRole.VIEWER)
    async def audit(self, request: web.Request, admin: AdminCredential) -> web.Response:
        device_id = request.query.get("device_id") or None
        if device_id is not None:
            parse_device_id(device_id)
        after = _int(request.query, "after_seq", 0, 2**62) or 0
        limit = _int(request.query, "limit", 1, 10000) or 1000
        records = await self.store.audit_records(device_id=device_id, after_seq=after, limit=limit)
        return web.json_response({"items": [audit_json(r) for r in records]})

    @needs(AdminRole.ADMIN)
    async def audit_verify(self, request: web.Request, admin: AdminCredential) -> web.Response:
        count, problems = await verify_audit_log(self.store)
        return web.json_response(
            {
                "records": count,
                "intact": not problems,
                "problems": [{"seq": p.seq, "problem": p.problem} for p in problems],
            }
        )

    @needs(AdminRole.VIEWER)
    async def list_manufacturers(
        self, request: web.Request, admin: AdminCredential
    ) -> web.Response:
        cas = await self.store.list_manufacturer_cas()
        return web.json_response({"items": [manufacturer_json(ca) for ca in cas]})

    @needs(AdminRole.VIEWER)
    async def list_intermediates(
        self, request: web.Request, admin: AdminCredential
    ) -> web.Response:
        cas = await self.store.list_manufacturer_intermediates()
        return web.json_response({"items": [manufacturer_json(ca) for ca in cas]})

    # -- changing ------------------------------------------------------------------
    @needs(AdminRole.OPERATOR)
    async def approve(self, request: web.Request, admin: AdminCredential) -> web.Response:
        body = await read_json_object(request, optional=True)
        device = await admin_cases.approve_device(
            self.store, path_params.device_id(request), actor=actor_of(admin), now=self.clock.now(),
            replace=_flag(body, "replace"), key=_optional_text(body, "key_sha256"),
        )  # fmt: skip
        return await self._device_detail(device)

    @needs(AdminRole.OPERATOR)
    async def reject(self, request: web.Request, admin: AdminCredential) -> web.Response:
        body = await read_json_object(request, optional=True)
        device = await admin_cases.reject_device(
            self.store, path_params.device_id(request), actor=actor_of(admin), now=self.clock.now(),
            revoke=_flag(body, "revoke"),
        )  # fmt: skip
        return await self._device_detail(device)

    @needs(AdminRole.OPERATOR)
    async def suspend(self, request: web.Request, admin: AdminCredential) -> web.Response:
        body = await read_json_object(request, optional=True)
        device = await lifecycle.suspend_device(
            self.store, path_params.device_id(request), actor=actor_of(admin), now=self.clock.now(),
            note=_note(body),
        )  # fmt: skip
        return web.json_response(device_json(device))

    @needs(AdminRole.OPERATOR)
    async def resume(self, request: web.Request, admin: AdminCredential) -> web.Response:
        body = await read_json_object(request, optional=True)
        device = await lifecycle.resume_device(
            self.store, path_params.device_id(request), actor=actor_of(admin), now=self.clock.now(),
            note=_note(body),
        )  # fmt: skip
        return web.json_response(device_json(device))

    @needs(AdminRole.OPERATOR)
    async def revoke(self, request: web.Request, admin: AdminCredential) -> web.Response:
        body = await read_json_object(request)
        reason = lifecycle.parse_reason(_required_text(body, "reason"))
        result = await lifecycle.revoke_device(
            self.store, path_params.device_id(request), reason, actor=actor_of(admin),
            now=self.clock.now(), note=_note(body),
        )  # fmt: skip
        device = await self.store.get_device(result.device_id)
        return web.json_response(
            {"device": device_json(device), "changed": result.event is not None}
        )

    @needs(AdminRole.OPERATOR)
    async def revoke_certificate(
        self, request: web.Request, admin: AdminCredential
    ) -> web.Response:
        serial = path_params.serial(request)
        body = await read_json_object(request)
        reason = lifecycle.parse_reason(_required_text(body, "reason"))
        result = await lifecycle.revoke_certificate(
            self.store, serial, reason, actor=actor_of(admin), now=self.clock.now(),
            note=_note(body),
        )  # fmt: skip
        record = await self.store.get_certificate(serial)
        return web.json_response(
            {"certificate": certificate_json(record), "changed": result.event is not None}
        )

    @needs(AdminRole.OPERATOR)
    async def token(self, request: web.Request, admin: AdminCredential) -> web.Response:
        body = await read_json_object(request, optional=True)
        hours = body.get("expires_in_hours", 24 * 7)
        if not isinstance(hours, int) or isinstance(hours, bool) or not 1 <= hours <= 24 * 90:
            raise RequestInvalid("expires_in_hours must be an integer from 1 to 2160")
        issued = await admin_cases.issue_enrollment_token(
            self.store, path_params.device_id(request), lifetime=dt.timedelta(hours=hours),
            actor=actor_of(admin), now=self.clock.now(),
        )  # fmt: skip
        return web.json_response(
            {
                "device_id": issued.device_id,
                "token": issued.token,
                "expires_at": issued.expires_at.isoformat(),
                "device_created": issued.created_device,
            },
            headers={"Cache-Control": "no-store"},
        )

    @needs(AdminRole.ADMIN)
    async def bulk_revoke(self, request: web.Request, admin: AdminCredential) -> web.Response:
        body = await read_json_object(request)
        issued_before = _optional_time(body, "issued_before")
        selection = lifecycle.BulkSelection(
            batch=_optional_text(body, "batch"),
            model=_optional_text(body, "model"),
            issued_before=issued_before,
            manufacturer=lifecycle.parse_manufacturer(_optional_text(body, "manufacturer")),
        )
        reason = lifecycle.parse_reason(_required_text(body, "reason"))
        result = await lifecycle.bulk_revoke(
            self.store, selection, reason,
            dry_run=_flag(body, "dry_run"), confirm=_flag(body, "confirm"),
            threshold=self.bulk_threshold, actor=actor_of(admin), now=self.clock.now(),
        )  # fmt: skip
        return web.json_response(bulk_json(result))

    @needs(AdminRole.ADMIN)
    async def import_manifest(self, request: web.Request, admin: AdminCredential) -> web.Response:
        if request.content_type != "text/csv":
            raise RequestInvalid("send the manifest as text/csv")
        text = await _text_body(request, limit=MAX_MANIFEST_BYTES)
        # 100,000 lines take a second or two of pure CPU: not on the loop every
        # device's EST request waits on.
        entries = await asyncio.to_thread(parse_manifest, text)
        result = await admin_cases.import_manifest(
            self.store, entries, actor=actor_of(admin), now=self.clock.now()
        )
        return web.json_response(
            {"entries": len(entries), "created": result.created, "updated": result.updated}
        )

    @needs(AdminRole.ADMIN)
    async def add_manufacturer(self, request: web.Request, admin: AdminCredential) -> web.Response:
        pem = await _pem_body(request)
        results = await admin_cases.trust_manufacturer(
            self.store, pem, name=_text(request.query, "name"), fleet=self.fleet,
            actor=actor_of(admin), now=self.clock.now(),
        )  # fmt: skip
        return _trust_results(results)

    @needs(AdminRole.ADMIN)
    async def remove_manufacturer(
        self, request: web.Request, admin: AdminCredential
    ) -> web.Response:
        sha256 = await admin_cases.distrust_manufacturer(
            self.store, path_params.sha256(request), actor=actor_of(admin), now=self.clock.now()
        )
        return web.json_response({"sha256": sha256, "removed": True})

    @needs(AdminRole.ADMIN)
    async def add_intermediate(self, request: web.Request, admin: AdminCredential) -> web.Response:
        pem = await _pem_body(request)
        results = await admin_cases.trust_intermediate(
            self.store, pem, name=_text(request.query, "name"), fleet=self.fleet,
            actor=actor_of(admin), now=self.clock.now(),
        )  # fmt: skip
        return _trust_results(results)

    @needs(AdminRole.ADMIN)
    async def remove_intermediate(
        self, request: web.Request, admin: AdminCredential
    ) -> web.Response:
        sha256 = await admin_cases.distrust_intermediate(
            self.store, path_params.sha256(request), actor=actor_of(admin), now=self.clock.now()
        )
        return web.json_response({"sha256": sha256, "removed": True})


# -- request parsing: every failure is a 400 that names the parameter ---------------
# (path parameters: fleet.http.path_params, checked by needs())


def _text(query: Any, name: str) -> str | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    problem = label_problem(value)  # the manifest's rule: every model and batch can be named
    if problem is not None:
        raise RequestInvalid(f"{name} {problem}")
    return str(value)


def _choice(query: Any, name: str, allowed: list[str]) -> str | None:
    value = _text(query, name)
    if value is not None and value not in allowed:
        raise RequestInvalid(f"{name} must be one of {', '.join(allowed)}")
    return value


def _int(query: Any, name: str, low: int, high: int) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
        raise RequestInvalid(f"{name} must be an integer from {low} to {high}")
    return int(value)


async def _text_body(request: web.Request, limit: int = 64 * 1024) -> str:
    # Read the stream ourselves: a manifest may exceed the app-wide body limit.
    raw = await read_body(request, limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EncodingInvalid("the request body is not UTF-8") from None


def _required_text(body: dict[str, Any], name: str) -> str:
    value = _optional_text(body, name)
    if value is None:
        raise RequestInvalid(f"field {name} is required")
    return value


def _optional_text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 256 or not value.isprintable():
        raise RequestInvalid(f"field {name} must be non-empty printable text")
    return value


def _note(body: dict[str, Any]) -> str:
    return _optional_text(body, "note") or ""


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise RequestInvalid(f"field {name} must be true or false")
    return value


def _optional_time(body: dict[str, Any], name: str) -> dt.datetime | None:
    value = _optional_text(body, name)
    return (
        None if value is None else lifecycle.parse_time(value, f"field {name}", naive_is_utc=False)
    )


_OPENAPI: dict[str, Any] | None = None


def openapi_document() -> dict[str, Any]:
    global _OPENAPI
    if _OPENAPI is None:
        text = resources.files("fleet.admin").joinpath("openapi.json").read_text("utf-8")
        _OPENAPI = json.loads(text)
    return _OPENAPI


async def _pem_body(request: web.Request) -> bytes:
    """CA certificate(s) posted as PEM."""
    if request.content_type not in ("application/x-pem-file", "application/pem-certificate-chain"):
        raise RequestInvalid("send the CA certificate(s) as application/x-pem-file")
    return (await _text_body(request, limit=MAX_CA_BUNDLE_BYTES)).encode()


def _trust_results(results: list[TrustResult]) -> web.Response:
    return web.json_response(
        {"items": [{**manufacturer_json(r.ca), "added": r.added} for r in results]}
    )
