"""The console's frame: who is signed in, forms and their CSRF tokens, rendering, headers.

Every page and action goes through :meth:`Console.guard`: it finds the
session (or sends the browser to sign in), looks the admin credential up in
the store again (a disabled one ends the session here), checks the CSRF token
of a form, and checks the role with the API's own ``require_role`` (audited
when refused). Changes call the fleet.authority use-cases with the API's actor
form, ``admin:<name>``; nothing here decides a rule of its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import web
from cryptography import x509

from fleet.admin.auth import AdminAuthenticator, actor_of, require_role
from fleet.authority.refusals import RefusalAudit
from fleet.http.form_body import read_form
from fleet.http.path_params import check_path_params
from fleet.http.statuses import status_for
from fleet.kernel.clock import Clock
from fleet.kernel.errors import AuthError, FleetError
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.kernel.reasons import Reason
from fleet.records import AdminCredential, AdminRole, AuditEvent
from fleet.store.protocol import Store
from fleet.tokens import token_sha256
from fleet.ui.session import LOGIN_COOKIE, SESSION_COOKIE, Session, SessionSigner

log = logging.getLogger("fleet.ui")

UI = "/ui"
# No inline script or style anywhere: the one stylesheet is a file of the app.
CSP = (
    "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'; img-src 'self' data:"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer browsers send `Origin: null` on
    # our own form posts, and the Origin check below needs the real one.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
# Fixed messages after an action (the query names one; no text is reflected).
NOTICES = {
    "suspended": "The device is suspended.",
    "resumed": "The device is active again.",
    "revoked": "The device and all its certificates are revoked.",
    "unchanged": "Nothing changed: the device was already revoked.",
    "approved": "Approved.",
    "rejected": "Rejected.",
    "signed_out": "You are signed out.",
    "ended": "Your session ended (expired, or its credential was disabled). Sign in again.",
}


@dataclasses.dataclass
class Ctx:
    """One request of a signed-in admin."""

    request: web.Request
    admin: AdminCredential
    session: Session
    csrf: str
    form: dict[str, str] | None  # the posted form's text fields, first of each (POST only)

    @property
    def actor(self) -> str:
        return actor_of(self.admin)


PageHandler = Callable[["Console", Ctx], Awaitable[web.StreamResponse]]


@dataclasses.dataclass
class CaStatus:
    name: str
    subject: str
    not_after: dt.datetime


@dataclasses.dataclass
class Console:
    store: Store
    auth: AdminAuthenticator
    clock: Clock
    signer: SessionSigner
    cas: list[CaStatus]
    bulk_threshold: int
    refusals: RefusalAudit
    env: jinja2.Environment = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("fleet.ui", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["when"] = _when
        self.env.globals["UI"] = UI

    # -- rendering ------------------------------------------------------------------
    def render(
        self, template: str, status: int = 200, ctx: Ctx | None = None, **values: Any
    ) -> web.Response:
        if ctx is not None:
            role = ctx.admin.role
            values.setdefault("admin", ctx.admin)
            values.setdefault("csrf", ctx.csrf)
            values.setdefault("can_operate", role.allows(AdminRole.OPERATOR))
            values.setdefault("can_admin", role.allows(AdminRole.ADMIN))
            notice = ctx.request.query.get("notice", "")
            values.setdefault("notice", NOTICES.get(notice))
        else:
            values.setdefault("admin", None)
            values.setdefault("notice", None)
        values.setdefault("now", self.clock.now())
        values.setdefault("nav", "")
        body = self.env.get_template(template).render(**values)
        return secure(web.Response(text=body, status=status, content_type="text/html"))

    def redirect(self, path: str, **query: str) -> web.Response:
        location = f"{UI}{path}" + (f"?{urlencode(query)}" if query else "")
        return secure(web.Response(status=303, headers={"Location": location}))

    def error_page(self, error: FleetError, ctx: Ctx | None) -> web.Response:
        status = status_for(error)
        if ctx is not None:
            ctx.request["reason"] = error.reason
        return self.render(
            "error.html", status, ctx, message=error.message, reason=error.reason, hint=error.hint
        )

    # -- who is signed in ----------------------------------------------------------------
    def guard(self, handler: PageHandler, role: AdminRole) -> Callable[[web.Request], Any]:
        """The endpoint of a page or action that needs a signed-in admin of ``role``."""

        async def endpoint(request: web.Request) -> web.StreamResponse:
            signed_in = await self._signed_in(request)
            if signed_in is None:
                return self._to_sign_in(request)
            admin, session = signed_in
            request["admin"] = admin.name
            ctx = Ctx(request, admin, session, self.signer.csrf_token(session.nonce), None)
            try:
                if request.method == "POST":
                    form = ctx.form = await read_form(request)
                    if not _same_origin(request) or not self.signer.csrf_valid(
                        session.nonce, form.get("csrf", "")
                    ):
                        return self.render("error.html", 403, ctx, **_CSRF_REFUSED)
                check_path_params(request)  # 400 for a malformed one, before the audit sees it
                await require_role(
                    self.store, self.clock, admin, role, method=request.method,
                    path=request.path, device_id=request.match_info.get("device_id"),
                )  # fmt: skip
                return await handler(self, ctx)
            except FleetError as error:
                return self.error_page(error, ctx)

        endpoint.needed_role = role  # type: ignore[attr-defined]
        return endpoint

    async def _signed_in(self, request: web.Request) -> tuple[AdminCredential, Session] | None:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        session = self.signer.verified(cookie)
        if session is None:
            return None
        now = self.clock.now()
        if not session.issued_at <= now < session.expires_at:
            # A session of ours that outlived its lifetime: its end is on the record.
            await self._audit_session_end(request, session, Reason.SESSION_EXPIRED)
            return None
        try:
            admin = await self.auth.credential(session.sha256, session.kind)
        except AuthError as error:
            # `fleet admin disable` (or a deleted credential) ends the session here.
            await self._audit_session_end(request, session, error.reason)
            return None
        if session.kind == "certificate":
            # The session is bound to the certificate: a copied cookie alone is useless.
            try:
                presented = await self.auth.identify_certificate(request)
            except AuthError:
                return None
            if presented.sha256 != admin.sha256:
                return None
        return admin, session

    async def _audit_session_end(self, request: web.Request, session: Session, reason: str) -> None:
        await self.audit_sign_in_event(
            request, await self._actor_of_fingerprint(session.sha256), "console_session_end",
            "refused", reason, method=session.kind,
        )  # fmt: skip

    async def _actor_of_fingerprint(self, sha256: str) -> str:
        """The audit actor of a credential fingerprint, disabled ones included."""
        try:
            return actor_of(await self.store.find_admin_credential(sha256))
        except FleetError:
            return "unauthenticated"

    async def audit_sign_in_event(
        self, request: web.Request, actor: str, action: str, outcome: str, reason: str,
        **detail: str,
    ) -> None:  # fmt: skip
        """Chain a console sign-in, sign-out or session end (never a secret: the token
        is not in ``detail``, only how the admin signed in and from where). A refusal
        nobody can be named for goes through the per-process refusal budget."""
        source = request.remote or ""
        event = AuditEvent(
            at=self.clock.now(), actor=actor, action=action, outcome=outcome,
            reason=reason, detail={**detail, "source": source},
        )  # fmt: skip
        if actor == "unauthenticated" and outcome == "refused":
            await self.refusals.record(event, source)
        else:
            await self.store.append_audit(event)

    def _to_sign_in(self, request: web.Request) -> web.Response:
        ended = SESSION_COOKIE in request.cookies
        if request.method == "GET" and not ended:
            response = self.redirect("/login")
        else:
            response = self.redirect("/login", notice="ended")
        response.del_cookie(SESSION_COOKIE, path="/", secure=True, samesite="Strict")
        return response

    # -- sign in and out ---------------------------------------------------------------------
    async def login_form(self, request: web.Request) -> web.Response:
        return self._login_page(request, 200, error=None)

    def _login_page(self, request: web.Request, status: int, error: str | None) -> web.Response:
        nonce = request.cookies.get(LOGIN_COOKIE) or ""
        fresh = len(nonce) < 16
        if fresh:
            nonce = _random()
        notice = NOTICES.get(request.query.get("notice", ""))
        response = self.render(
            "login.html", status, None, csrf=self.signer.csrf_token(nonce, "login"),
            error=error, notice=notice,
        )  # fmt: skip
        if fresh:
            response.set_cookie(
                LOGIN_COOKIE, nonce, path="/", secure=True, httponly=True, samesite="Strict",
                max_age=3600,
            )  # fmt: skip
        return response

    async def login(self, request: web.Request) -> web.Response:
        form = await read_form(request)
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not _same_origin(request) or not self.signer.csrf_valid(
            nonce, str(form.get("csrf", "")), "login"
        ):
            return self.render("error.html", 403, None, **_CSRF_REFUSED)
        method = "certificate" if form.get("method") == "certificate" else "token"
        fingerprint = ""  # of the credential tried, when there is one (never the token)
        try:
            if method == "certificate":
                cert = self.auth.presented_certificate(request)
                fingerprint = sha256_fingerprint(cert) if cert is not None else ""
                admin = await self.auth.identify_certificate(request)
            else:
                token = str(form.get("token", "")).strip()
                if not token or len(token) > 256:
                    await self.audit_sign_in_event(
                        request, "unauthenticated", "console_sign_in", "refused",
                        Reason.CREDENTIALS_REQUIRED, method=method,
                    )  # fmt: skip
                    return self._login_page(request, 400, "Type your admin token.")
                fingerprint = token_sha256(token)
                admin = await self.auth.identify_token(token)
        except AuthError as error:
            request["reason"] = error.reason
            actor = await self._actor_of_fingerprint(fingerprint) if fingerprint else ""
            await self.audit_sign_in_event(
                request, actor or "unauthenticated", "console_sign_in", "refused",
                error.reason, method=method,
            )  # fmt: skip
            return self._login_page(request, 401, f"Not signed in: {error.message}.")
        await self.audit_sign_in_event(
            request, actor_of(admin), "console_sign_in", "allowed", Reason.SIGNED_IN,
            method=method,
        )  # fmt: skip
        session = self.signer.new(admin.kind, admin.sha256, self.clock.now())
        response = self.redirect("/")
        response.set_cookie(
            SESSION_COOKIE, self.signer.encode(session), path="/", secure=True, httponly=True,
            samesite="Strict", max_age=int(self.signer.lifetime.total_seconds()),
        )  # fmt: skip
        response.del_cookie(LOGIN_COOKIE, path="/", secure=True, samesite="Strict")
        log.info("console sign-in by %s (%s)", actor_of(admin), admin.kind)
        return response

    async def stylesheet(self, request: web.Request) -> web.Response:
        response = web.Response(body=_stylesheet(), content_type="text/css", charset="utf-8")
        secure(response)
        response.headers["Cache-Control"] = "max-age=300"
        return response


async def sign_out(console: Console, ctx: Ctx) -> web.Response:
    await console.audit_sign_in_event(
        ctx.request, ctx.actor, "console_sign_out", "done", Reason.SIGNED_OUT,
        method=ctx.session.kind,
    )  # fmt: skip
    response = console.redirect("/login", notice="signed_out")
    response.del_cookie(SESSION_COOKIE, path="/", secure=True, samesite="Strict")
    return response


_CSRF_REFUSED = {
    "message": "This form is stale or did not come from this console; nothing changed.",
    "reason": Reason.CSRF_INVALID,
    "hint": "Go back, reload the page and submit the form again.",
}
_CSS: bytes | None = None


def _stylesheet() -> bytes:
    global _CSS
    if _CSS is None:
        _CSS = resources.files("fleet.ui").joinpath("static/console.css").read_bytes()
    return _CSS


def secure(response: web.Response) -> web.Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _same_origin(request: web.Request) -> bool:
    """A form posted from another site is refused even before its CSRF token is read
    (browsers send Origin on POST; absent, SameSite=Strict and the token decide)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    try:
        return urlsplit(origin).netloc == request.host
    except ValueError:  # "https://[" : not an origin, so not ours
        return False


def _random() -> str:
    return secrets.token_urlsafe(24)


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def query_of(values: Mapping[str, str | None]) -> str:
    """A query string of the given non-empty values."""
    return urlencode({k: v for k, v in values.items() if v})


def ca_status(name: str, cert: x509.Certificate) -> CaStatus:
    return CaStatus(name, cert.subject.rfc4514_string(), cert.not_valid_after_utc)
