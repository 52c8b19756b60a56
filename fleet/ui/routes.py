"""The console's routes under /ui/, each with the least role it needs — the role the
admin API needs for the same thing (fleet/admin/routes.py)."""

from __future__ import annotations

from aiohttp import web

from fleet.records import AdminRole
from fleet.ui import actions, pages
from fleet.ui.core import UI, Console, sign_out

VIEWER, OPERATOR, ADMIN = AdminRole.VIEWER, AdminRole.OPERATOR, AdminRole.ADMIN


async def _home(request: web.Request) -> web.Response:
    raise web.HTTPFound(f"{UI}/")


def console_routes(console: Console) -> list[web.RouteDef]:
    g = console.guard
    d = f"{UI}/devices/{{device_id}}"
    return [
        web.get(UI, _home),
        web.get(f"{UI}/static/console.css", console.stylesheet),
        web.get(f"{UI}/login", console.login_form),
        web.post(f"{UI}/login", console.login),
        web.post(f"{UI}/logout", g(sign_out, VIEWER)),
        web.get(f"{UI}/", g(pages.overview, VIEWER)),
        web.get(f"{UI}/devices", g(pages.devices, VIEWER)),
        web.get(d, g(pages.device, VIEWER)),
        web.get(f"{UI}/pending", g(pages.pending, VIEWER)),
        web.get(f"{UI}/audit", g(pages.audit, VIEWER)),
        web.get(f"{UI}/audit/verify", g(pages.audit_verify, ADMIN)),
        web.get(f"{UI}/bulk", g(pages.bulk, ADMIN)),
        web.post(f"{d}/suspend", g(actions.suspend, OPERATOR)),
        web.post(f"{d}/resume", g(actions.resume, OPERATOR)),
        web.post(f"{d}/revoke/confirm", g(actions.revoke_confirm, OPERATOR)),
        web.post(f"{d}/revoke", g(actions.revoke, OPERATOR)),
        web.post(f"{d}/approve", g(actions.approve, OPERATOR)),
        web.post(f"{d}/reject", g(actions.reject, OPERATOR)),
        web.post(f"{UI}/bulk/preview", g(actions.bulk_preview, ADMIN)),
        web.post(f"{UI}/bulk/revoke", g(actions.bulk_revoke, ADMIN)),
    ]
