"""Console settings on a real `fleet serve`, without a browser: [ui] enabled, workers."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import http.cookiejar
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from fleet.authority.admins import create_admin_token
from fleet.records import AdminRole, AuditEvent, AuditRecord
from fleet.store.protocol import Store
from fleet.tokens import token_sha256
from fleet.ui.session import SESSION_COOKIE, SessionSigner
from tests.integration.est.conftest import Fleet, running_fleet


def opener(root_pem: Path) -> urllib.request.OpenerDirector:
    context = ssl.create_default_context(cafile=str(root_pem))
    return urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context),
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
    )


def test_the_console_can_be_turned_off(tmp_path: Path) -> None:
    with running_fleet(tmp_path, env={"FLEET_UI_ENABLED": "false"}) as fleet:
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener(fleet.server.root_pem).open(f"{fleet.server.base}/ui/login", timeout=10)
        assert refused.value.code == 404


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def test_ui_without_the_slash_redirects_to_the_console(tmp_path: Path) -> None:
    with running_fleet(tmp_path) as fleet:
        context = ssl.create_default_context(cafile=str(fleet.server.root_pem))
        browser = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), _NoRedirect()
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            browser.open(f"{fleet.server.base}/ui", timeout=10)
        assert answer.value.code == 302
        assert answer.value.headers["Location"] == "/ui/"


def signed_in(fleet: Fleet, role: AdminRole) -> urllib.request.OpenerDirector:
    """A cookie-keeping client signed in through the console's form with a new token."""
    now = dt.datetime.now(dt.UTC)
    token = fleet.server.store(
        lambda s: create_admin_token(s, f"ui-{role.value}", role, actor="test", now=now)
    )
    browser = opener(fleet.server.root_pem)
    base = fleet.server.base
    form = browser.open(f"{base}/ui/login", timeout=10).read().decode()
    match = re.search(r'name="csrf" value="([^"]+)"', form)
    assert match
    body = urllib.parse.urlencode({"csrf": match.group(1), "token": token}).encode()
    assert browser.open(f"{base}/ui/login", body, timeout=10).url == f"{base}/ui/"
    return browser


def test_a_session_works_on_every_worker(tmp_path: Path) -> None:
    """--workers 2: both sign the session cookie with the one key `fleet serve` made."""
    with running_fleet(tmp_path, workers=2) as fleet:
        key_file = fleet.server.data_dir / "ui-session.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        browser = signed_in(fleet, AdminRole.VIEWER)
        base = fleet.server.base
        # New connections land on either worker; every one knows the session.
        for _ in range(20):
            reply = browser.open(f"{base}/ui/devices", timeout=10)
            assert reply.url == f"{base}/ui/devices"


HOSTILE = [
    "/ui/devices?q=%00",
    "/ui/devices?q=a%2Fb",
    "/ui/devices?q=" + "a" * 65,
    "/ui/devices?state=gone",
    "/ui/devices?model=" + "m" * 200,
    "/ui/devices/a%20b",
    "/ui/devices/admin",
    "/ui/devices/no-such-device",
    "/ui/audit?before=abc",
    "/ui/audit?before=99999999999999999999999",
    "/ui/audit?device_id=%2F",
    "/ui/pending?after=%7F",
]


def test_hostile_queries_get_an_error_page_never_a_500(tmp_path: Path) -> None:
    with running_fleet(tmp_path) as fleet:
        browser = signed_in(fleet, AdminRole.ADMIN)
        for path in HOSTILE:
            try:
                reply = browser.open(f"{fleet.server.base}{path}", timeout=10)
                status, headers = reply.status, reply.headers
            except urllib.error.HTTPError as error:
                status, headers = error.code, error.headers
            assert 200 <= status < 500, (path, status)
            assert "Content-Security-Policy" in headers, path


def _audit(fleet: Fleet, action: str) -> list[AuditRecord]:
    records = fleet.server.store(lambda s: s.audit_records(limit=10_000))
    return [r for r in records if r.event.action == action]


def _post_login(browser: urllib.request.OpenerDirector, base: str, token: str) -> int:
    form = browser.open(f"{base}/ui/login", timeout=10).read().decode()
    match = re.search(r'name="csrf" value="([^"]+)"', form)
    assert match
    body = urllib.parse.urlencode({"csrf": match.group(1), "token": token}).encode()
    try:
        return int(browser.open(f"{base}/ui/login", body, timeout=10).status)
    except urllib.error.HTTPError as error:
        return error.code


def test_sign_ins_sign_outs_and_ended_sessions_are_audited_with_the_admin(
    tmp_path: Path,
) -> None:
    with running_fleet(tmp_path) as fleet:
        base = fleet.server.base
        now = dt.datetime.now(dt.UTC)
        browser = signed_in(fleet, AdminRole.ADMIN)  # admin "ui-admin"
        [signed] = _audit(fleet, "console_sign_in")
        assert (signed.event.actor, signed.event.outcome, signed.event.reason) == (
            "admin:ui-admin", "allowed", "signed_in",
        )  # fmt: skip
        assert signed.event.detail["method"] == "token"

        # A wrong token: refused with its reason, and the token is nowhere in the record.
        wrong = "not-a-token-" + "x" * 30
        assert _post_login(opener(fleet.server.root_pem), base, wrong) == 401
        refused = _audit(fleet, "console_sign_in")[-1]
        assert (refused.event.actor, refused.event.outcome, refused.event.reason) == (
            "unauthenticated", "refused", "admin_unknown",
        )  # fmt: skip
        assert wrong not in repr(refused)

        # Signing out is on the record too.
        page = browser.open(f"{base}/ui/devices", timeout=10).read().decode()
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf
        body = urllib.parse.urlencode({"csrf": csrf.group(1)}).encode()
        browser.open(f"{base}/ui/logout", body, timeout=10)
        [out] = _audit(fleet, "console_sign_out")
        assert (out.event.actor, out.event.reason) == ("admin:ui-admin", "signed_out")

        # `fleet admin disable` ends a session at its next request, on the record,
        # and the disabled credential's next sign-in is refused under its name.
        token = fleet.server.store(
            lambda s: create_admin_token(s, "leaving", AdminRole.VIEWER, actor="test", now=now)
        )
        leaving = opener(fleet.server.root_pem)
        assert _post_login(leaving, base, token) == 200
        fleet.server.store(lambda s: s.disable_admin_credential(token_sha256(token)))
        assert leaving.open(f"{base}/ui/devices", timeout=10).url.endswith("notice=ended")
        [ended] = _audit(fleet, "console_session_end")
        assert (ended.event.actor, ended.event.reason) == ("admin:leaving", "admin_disabled")
        assert _post_login(leaving, base, token) == 401
        again = _audit(fleet, "console_sign_in")[-1]
        assert (again.event.actor, again.event.reason) == ("admin:leaving", "admin_disabled")
        assert token not in repr(again)

        # A session cookie of ours that outlived its lifetime: its end is recorded.
        key = (fleet.server.data_dir / "ui-session.key").read_bytes().strip()
        signer = SessionSigner(key, lifetime=dt.timedelta(minutes=5))
        old = signer.new("token", _sha_of(fleet), now)
        old = dataclasses.replace(
            old, issued_at=now - dt.timedelta(hours=2), expires_at=now - dt.timedelta(hours=1)
        )
        expired = opener(fleet.server.root_pem)
        request = urllib.request.Request(  # noqa: S310 (https, the test server)
            f"{base}/ui/devices", headers={"Cookie": f"{SESSION_COOKIE}={signer.encode(old)}"}
        )
        assert expired.open(request, timeout=10).url.endswith("notice=ended")
        last = _audit(fleet, "console_session_end")[-1]
        assert (last.event.actor, last.event.reason) == ("admin:ui-admin", "session_expired")

        # The admin sees all of it on the Audit page.
        admin = signed_in(fleet, AdminRole.ADMIN)
        shown = admin.open(f"{base}/ui/audit?action=console_session_end", timeout=10)
        html = shown.read().decode()
        assert "session_expired" in html
        assert "admin_disabled" in html


def _sha_of(fleet: Fleet) -> str:
    credentials = fleet.server.store(lambda s: s.list_admin_credentials())
    return next(c.sha256 for c in credentials if c.name == "ui-admin")


def test_audit_filters_reach_the_whole_log(tmp_path: Path) -> None:
    """A record older than thousands of others is found by its filter (the page once
    looked at the newest 5,000 only), and a date range narrows the log."""

    async def fill(store: Store) -> None:
        at = dt.datetime.now(dt.UTC)
        rare = AuditEvent(at, "admin:rare", "trust_add", "done", "manifest_imported")
        await store.append_audit(rare)
        noise = AuditEvent(at, "system", "renew", "allowed", "renewal", device_id="d1")
        for _ in range(12):  # 6,000 records, appended 500 at a time (group commit)
            await asyncio.gather(*(store.append_audit(noise) for _ in range(500)))

    with running_fleet(tmp_path) as fleet:
        fleet.server.store(fill)
        browser = signed_in(fleet, AdminRole.ADMIN)
        base = fleet.server.base
        html = browser.open(f"{base}/ui/audit?actor=admin:rare", timeout=30).read().decode()
        assert "trust_add" in html
        assert "No record matches" not in html
        today = dt.datetime.now(dt.UTC).date()
        yesterday = today - dt.timedelta(days=1)
        past = browser.open(f"{base}/ui/audit?actor=admin:rare&until={yesterday}", timeout=30)
        assert "No record matches" in past.read().decode()
        since = browser.open(f"{base}/ui/audit?actor=admin:rare&since={today}", timeout=30)
        assert "trust_add" in since.read().decode()
