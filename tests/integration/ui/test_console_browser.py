"""The admin console in a real Chromium, on a real `fleet serve` with real enrolled devices."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from playwright.sync_api import Browser, Page, expect

from fleet.authority.admins import create_admin_token
from fleet.records import AdminRole
from fleet.tokens import token_sha256
from tests.integration.ui.conftest import Console, sign_in
from tests.support.a11y import check_page

pytestmark = [pytest.mark.needs_binary("chromium"), pytest.mark.needs_binary("openssl")]

# `make screenshots` sets this to docs/screenshots: the two pages the README shows.
SCREENSHOT_DIR = os.environ.get("FLEET_SCREENSHOT_DIR")
README_SHOTS = ("overview", "device")


def crl_serials(console: Console) -> set[int]:
    context = ssl.create_default_context(cafile=str(console.fleet.server.root_pem))
    with urllib.request.urlopen(f"{console.base}/crl", context=context, timeout=10) as reply:  # noqa: S310
        crl = x509.load_der_x509_crl(reply.read())
    return {entry.serial_number for entry in crl}


def device_api(console: Console, device_id: str) -> dict[str, object]:
    reply = console.admin.call("GET", f"/api/v1/devices/{device_id}")
    assert reply.status == 200, reply.body
    return dict(reply.body)


def good_serials(console: Console, device_id: str) -> list[int]:
    reply = console.admin.call("GET", f"/api/v1/devices/{device_id}/certificates")
    return [int(c["serial"], 16) for c in reply.body["items"] if c["status"] == "good"]


def csrf_of(page: Page) -> str:
    return str(page.locator("input[name=csrf]").first.get_attribute("value"))


def test_an_operator_finds_a_device_revokes_it_and_the_api_and_crl_agree(
    browser: Browser, console: Console
) -> None:
    target = console.active[0]
    serials = good_serials(console, target)
    assert serials
    page = sign_in(browser, console, "operator")
    page.get_by_role("link", name="Devices", exact=True).click()
    page.get_by_label("Device id starts with").fill(target[:8])
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=target, exact=True).click()
    expect(page.locator("h1")).to_contain_text(target)
    page.get_by_label("Reason (RFC 5280)").select_option("keyCompromise")
    page.get_by_label("Note for the audit log").fill("stolen from site 4")
    page.get_by_role("button", name=f"Revoke {target}…").click()
    # The confirmation names the device; nothing has changed yet.
    expect(page.locator("h1")).to_have_text(f"Revoke {target}?")
    assert device_api(console, target)["state"] == "active"
    page.get_by_role("button", name=f"Yes, revoke {target}").click()
    expect(page.locator("#device-state")).to_have_text("revoked")
    expect(page.get_by_role("status")).to_contain_text("revoked")

    assert device_api(console, target)["state"] == "revoked"
    assert set(serials) <= crl_serials(console)
    trace = console.admin.call("GET", f"/api/v1/devices/{target}/why").body["trace"]
    revoke = [r for r in trace if r["action"] == "revoke"]
    assert revoke[-1]["actor"] == "admin:operator-bot"
    assert revoke[-1]["reason"] == "keyCompromise"
    assert revoke[-1]["detail"]["note"] == "stolen from site 4"
    page.context.close()


def test_a_viewer_sees_no_buttons_and_a_forged_post_is_refused(
    browser: Browser, console: Console
) -> None:
    target = console.active[1]
    page = sign_in(browser, console, "viewer")
    page.goto(f"{console.base}/ui/devices/{target}")
    expect(page.locator("h1")).to_contain_text(target)
    assert page.locator("main form").count() == 0
    assert page.locator("main button").count() == 0
    page.goto(f"{console.base}/ui/pending")
    expect(page.get_by_role("link", name=console.pending)).to_be_visible()
    assert page.locator("main button").count() == 0
    assert page.get_by_role("link", name="Bulk revoke").count() == 0
    # The server refuses anyway: a well-formed POST with the viewer's own CSRF token.
    reply = page.request.post(
        f"{console.base}/ui/devices/{target}/suspend",
        form={"csrf": csrf_of(page)},
        max_redirects=0,
    )
    assert reply.status == 403
    assert "role_insufficient" in reply.text()
    reply = page.request.post(
        f"{console.base}/ui/devices/{target}/revoke",
        form={"csrf": csrf_of(page), "reason": "keyCompromise", "confirm": target},
        max_redirects=0,
    )
    assert reply.status == 403
    assert device_api(console, target)["state"] == "active"
    audit = console.admin.call("GET", f"/api/v1/audit?device_id={target}").body["items"]
    denied = [r for r in audit if r["action"] == "denied"]
    assert denied
    assert denied[-1]["actor"] == "admin:viewer-bot"
    page.context.close()


def test_a_form_without_its_csrf_token_is_refused(browser: Browser, console: Console) -> None:
    target = console.active[2]
    page = sign_in(browser, console, "operator")
    page.goto(f"{console.base}/ui/devices/{target}")
    for form in ({}, {"csrf": "forged"}, {"csrf": csrf_of(page) + "x"}):
        reply = page.request.post(
            f"{console.base}/ui/devices/{target}/suspend", form=form, max_redirects=0
        )
        assert reply.status == 403, form
        assert "csrf_invalid" in reply.text()
    # Another site's page posting with the browser's cookie: refused by Origin too.
    reply = page.request.post(
        f"{console.base}/ui/devices/{target}/suspend",
        form={"csrf": csrf_of(page)},
        headers={"Origin": "https://evil.example"},
        max_redirects=0,
    )
    assert reply.status == 403
    assert device_api(console, target)["state"] == "active"
    # The real form works: suspend, then resume.
    page.get_by_role("button", name=f"Suspend {target}").click()
    expect(page.locator("#device-state")).to_have_text("suspended")
    assert device_api(console, target)["state"] == "suspended"
    page.get_by_role("button", name=f"Resume {target}").click()
    expect(page.locator("#device-state")).to_have_text("active")
    page.context.close()


def test_bulk_revoke_shows_the_blast_radius_before_a_typed_confirmation(
    browser: Browser, console: Console
) -> None:
    page = sign_in(browser, console, "admin")
    page.get_by_role("link", name="Bulk revoke").click()
    page.get_by_label("Batch").fill("lot-7")
    page.get_by_label("Reason").select_option("cessationOfOperation")
    page.get_by_role("button", name="Show the blast radius").click()
    expect(page.locator("#blast-devices")).to_have_text(str(len(console.lot)))
    expect(page.locator("#blast-certificates")).to_have_text(str(len(console.lot)))
    for device_id in console.lot:
        expect(page.locator(".sample").get_by_role("link", name=device_id)).to_be_visible()
    shoot(page, console, "bulk")
    # A wrong count changes nothing.
    page.get_by_label(re.compile("type the number of devices")).fill("3")
    page.get_by_role("button", name=f"Revoke {len(console.lot)} device(s)").click()
    expect(page.get_by_role("alert")).to_contain_text("nothing changed")
    assert all(device_api(console, d)["state"] == "active" for d in console.lot)
    page.get_by_label(re.compile("type the number of devices")).fill(str(len(console.lot)))
    page.get_by_role("button", name=f"Revoke {len(console.lot)} device(s)").click()
    expect(page.locator("#bulk-result")).to_contain_text(f"Revoked {len(console.lot)} of")
    assert all(device_api(console, d)["state"] == "revoked" for d in console.lot)
    assert all(device_api(console, d)["state"] != "revoked" for d in console.active[1:])
    page.context.close()


def test_devices_are_found_and_bulk_revoked_by_their_manufacturer(
    browser: Browser, console: Console
) -> None:
    """The manufacturer is learned from the verified bootstrap chain at enrollment."""
    gauge = device_api(console, console.globex[0])
    assert gauge["manufacturer"] == {"sha256": console.globex_sha256, "name": "Globex"}
    assert device_api(console, console.active[1])["manufacturer"]["name"] == "Acme"  # type: ignore[index]
    listed = console.admin.call("GET", f"/api/v1/devices?manufacturer={console.globex_sha256}")
    assert [d["device_id"] for d in listed.body["items"]] == console.globex

    page = sign_in(browser, console, "admin")
    page.get_by_role("link", name="Devices", exact=True).click()
    page.get_by_label("Manufacturer").select_option(label="Globex")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("table.list tbody th")
    expect(rows).to_have_text(console.globex)

    page.get_by_role("link", name="Bulk revoke").click()
    page.get_by_label("Manufacturer").select_option(label="Globex")
    page.get_by_label("Reason").select_option("keyCompromise")
    page.get_by_role("button", name="Show the blast radius").click()
    expect(page.locator("#blast-devices")).to_have_text(str(len(console.globex)))
    page.get_by_label(re.compile("type the number of devices")).fill(str(len(console.globex)))
    page.get_by_role("button", name=f"Revoke {len(console.globex)} device(s)").click()
    expect(page.locator("#bulk-result")).to_contain_text(f"Revoked {len(console.globex)} of")
    assert all(device_api(console, d)["state"] == "revoked" for d in console.globex)
    assert device_api(console, console.active[-1])["state"] == "active"
    page.context.close()


def test_an_operator_approves_a_pending_device_from_the_queue(
    browser: Browser, console: Console
) -> None:
    page = sign_in(browser, console, "operator")
    page.get_by_role("link", name="Pending", exact=True).click()
    row = page.locator("tr", has=page.get_by_role("link", name=console.pending))
    expect(row).to_contain_text("Acme")  # the manufacturer that signed its bootstrap cert
    expect(row).to_contain_text("127.0.0.1")  # where it asked from
    shoot(page, console, "pending")
    row.get_by_role("button", name=f"Approve {console.pending}").click()
    expect(page.get_by_role("status")).to_have_text("Approved.")
    assert device_api(console, console.pending)["state"] == "registered"
    page.context.close()


def test_a_disabled_credential_ends_its_session_at_the_next_request(
    browser: Browser, console: Console
) -> None:
    now = dt.datetime.now(dt.UTC)
    token = console.store(
        lambda s: create_admin_token(s, "leaving", AdminRole.OPERATOR, actor="test", now=now)
    )
    page = sign_in(browser, console, "operator", token=token)
    page.get_by_role("link", name="Devices", exact=True).click()
    expect(page.locator("h1")).to_have_text("Devices")
    subprocess.run(
        [sys.executable, "-m", "fleet", "admin", "disable", token_sha256(token)[:16],
         "--config", str(console.fleet.server.config_path)],
        check=True, capture_output=True, env={**os.environ, **console.fleet.server.env},
    )  # fmt: skip
    page.get_by_role("link", name="Devices", exact=True).click()
    expect(page).to_have_url(re.compile(r"/ui/login\?notice=ended$"))
    expect(page.get_by_role("status")).to_contain_text("session ended")
    page.context.close()


def shoot(page: Page, console: Console, name: str) -> Path:
    path = console.shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if SCREENSHOT_DIR and name in README_SHOTS:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SCREENSHOT_DIR) / f"console-{name}.png")
    return path


def test_every_page_is_accessible_has_a_strict_csp_and_is_captured(
    browser: Browser, console: Console
) -> None:
    page = sign_in(browser, console, "admin")
    device = console.active[3]
    pages = {
        "overview": "/ui/",
        "devices": "/ui/devices",
        "device": f"/ui/devices/{device}",
        "pending": "/ui/pending",
        "bulk": "/ui/bulk",
        "audit": "/ui/audit",
        "audit-verify": "/ui/audit/verify",
    }
    problems: dict[str, list[str]] = {}
    for name, path in pages.items():
        reply = page.goto(f"{console.base}{path}")
        assert reply is not None, path
        assert reply.status == 200, (path, reply.status)
        assert "default-src 'self'" in reply.headers["content-security-policy"]
        assert "unsafe-inline" not in reply.headers["content-security-policy"]
        html = page.content()
        for inline in ("<script", "<style", " style="):
            assert inline not in html, (path, inline)
        report = check_page(page)
        assert report.texts_checked > 5
        if report.problems:
            problems[name] = report.problems
        shoot(page, console, name)
    assert page.locator("#verify-result").inner_text().startswith("Chain verification")
    page.context.close()
    # The sign-in page too, signed out.
    anonymous = browser.new_context(ignore_https_errors=True).new_page()
    anonymous.goto(f"{console.base}/ui/login")
    login = check_page(anonymous)
    problems.update({"login": login.problems} if login.problems else {})
    shoot(anonymous, console, "login")
    anonymous.context.close()
    assert not problems, problems


def test_pages_fit_a_phone(browser: Browser, console: Console) -> None:
    page = sign_in(browser, console, "operator", phone=True)
    for path in ("/ui/", "/ui/devices", f"/ui/devices/{console.active[3]}", "/ui/audit"):
        page.goto(f"{console.base}{path}")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, (path, overflow)
    page.goto(f"{console.base}/ui/")
    shoot(page, console, "overview-phone")
    page.context.close()


def test_overview_counts_devices_by_state_and_charts_the_audit_log(
    browser: Browser, console: Console
) -> None:
    page = sign_in(browser, console, "viewer")
    feed_head = console.admin.call("GET", "/api/v1/revocations?limit=1").body["head"]
    expect(page.locator("#feed-head")).to_have_text(str(feed_head))
    active = console.admin.call("GET", "/api/v1/devices?state=active&limit=500").body["items"]
    row = page.locator("tr", has=page.get_by_role("link", name="active", exact=True))
    expect(row.locator("td")).to_have_text(str(len(active)))
    # Bars with a title per hour: enrollments, and the pin mismatch as a refusal reason.
    assert page.locator("svg.chart rect.s0").count() >= 1
    expect(page.locator(".legend")).to_contain_text("bootstrap_pin_mismatch")
    page.context.close()


def test_a_session_cookie_is_secure_httponly_strict_and_expiring(
    browser: Browser, console: Console
) -> None:
    page = sign_in(browser, console, "viewer")
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["__Host-fleet_session"]
    assert session["secure"]
    assert session["httpOnly"]
    assert session["sameSite"] == "Strict"
    assert 0 < session["expires"] - time.time() <= 8 * 3600 + 60
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_contain_text("signed out")
    assert "__Host-fleet_session" not in {c["name"] for c in page.context.cookies()}
    page.context.close()


def test_sign_in_with_an_admin_client_certificate_binds_the_session_to_it(
    browser: Browser, console: Console
) -> None:
    base = console.base
    context = browser.new_context(
        ignore_https_errors=True,
        client_certificates=[
            {"origin": base, "certPath": console.admin.cert, "keyPath": console.admin.key}
        ],
    )
    page = context.new_page()
    page.goto(f"{base}/ui/login")
    page.get_by_role("button", name="Sign in with my certificate").click()
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator(".who")).to_contain_text("olivia")
    # The cookie alone, in a browser without the certificate, is no session.
    stolen = browser.new_context(ignore_https_errors=True)
    stolen.add_cookies(context.cookies())
    other = stolen.new_page()
    other.goto(f"{base}/ui/devices")
    expect(other).to_have_url(re.compile(r"/ui/login"))
    stolen.close()
    context.close()
