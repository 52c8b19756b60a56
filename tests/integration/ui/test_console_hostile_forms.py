"""Hostile console input: every body, Origin and date gets an answer, none a 500 or a traceback.

Found from outside: the console's form reader took any body aiohttp could
be asked to parse (a multipart body without boundary or cut short, a charset
Python does not know) and raised from inside aiohttp, and an Origin header
that is not a URL (``https://[``) raised in the same-origin check: 500s with
tracebacks, before the CSRF token was looked at. The table crosses the
sign-in form and a signed-in action with every content type, body and Origin.
The audit page's date filters are generated over the whole calendar: 9999-12-31
as "until" overflowed the day after it, a 500.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fleet.authority.admins import create_admin_token
from fleet.records import AdminRole
from fleet.ui.session import LOGIN_COOKIE, SESSION_COOKIE
from tests.integration.est.conftest import Fleet, running_fleet
from tests.support.raw_http import connect, read_response, request_bytes, tls_client_context

BOUNDARY = "multipart/form-data; boundary=zz"
PART = b'--zz\r\nContent-Disposition: form-data; name="csrf"\r\n'
# (Content-Type, body): what a browser never sends to the console.
BODIES = [
    ("multipart/form-data", b"csrf=x"),
    (BOUNDARY, PART + b"\r\nabc\r\n--zz"),
    (BOUNDARY, b"garbage"),
    (BOUNDARY, PART + b"Content-Type: text/plain; charset=nope\r\n\r\nx\r\n--zz--\r\n"),
    ("application/x-www-form-urlencoded; charset=nope", b"csrf=x"),
    ("application/x-www-form-urlencoded; charset=utf-16", b"c\x00s\x00r\x00f\x00"),
    ("application/x-www-form-urlencoded", b"csrf=%ff%fe&token=%C0%80"),
    ("application/x-www-form-urlencoded", b"\xff\xfe=\x00"),
    ("application/x-www-form-urlencoded", b"&".join(b"f%d=1" % i for i in range(2000))),
    ("text/plain", b"csrf=x"),
    ("application/json", b'{"csrf": "x"}'),
    ("", b"csrf=x"),
]
ORIGINS = ["https://[", "https://[::1", "http://]", "https://a:99999999", "null", "https://%zz"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("console-hostile")) as running:
        yield running


def call(
    fleet: Fleet, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    context = tls_client_context(fleet.server.root_pem)
    with connect(fleet.server.port, context) as sock:
        sock.sendall(
            request_bytes("POST" if body or headers else "GET", path, body=body, headers=headers)
        )
        return read_response(sock)


def login_cookie_and_csrf(fleet: Fleet) -> tuple[str, str]:
    context = tls_client_context(fleet.server.root_pem)
    with connect(fleet.server.port, context) as sock:
        sock.sendall(request_bytes("GET", "/ui/login"))
        _, headers, page = read_response(sock)
    nonce = re.search(f"{LOGIN_COOKIE}=([^;]+)", headers["set-cookie"])
    csrf = re.search(rb'name="csrf" value="([^"]+)"', page)
    assert nonce
    assert csrf
    return f"{LOGIN_COOKIE}={nonce.group(1)}", csrf.group(1).decode()


@pytest.fixture(scope="module")
def session(fleet: Fleet) -> str:
    """The Cookie header of an operator signed in through the form."""
    now = dt.datetime.now(dt.UTC)
    token = fleet.server.store(
        lambda s: create_admin_token(s, "hostile-op", AdminRole.OPERATOR, actor="test", now=now)
    )
    cookie, csrf = login_cookie_and_csrf(fleet)
    form = urllib.parse.urlencode({"csrf": csrf, "token": token}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
    context = tls_client_context(fleet.server.root_pem)
    with connect(fleet.server.port, context) as sock:
        sock.sendall(request_bytes("POST", "/ui/login", body=form, headers=headers))
        head = sock.recv(65536)  # the 303 has no body; read_response keeps one Set-Cookie only
    assert head.startswith(b"HTTP/1.1 303"), head
    found = re.search(f"({SESSION_COOKIE}=[^;]+)".encode(), head)
    assert found
    return found.group(1).decode()


def assert_refused_quietly(fleet: Fleet, status: int, what: object) -> None:
    assert 400 <= status < 500, what
    log = fleet.server.log()
    assert "Traceback" not in log, what
    assert "unexpected error" not in log, what


@pytest.mark.parametrize("path", ["/ui/login", "/ui/devices/dev-x/suspend"])
def test_a_body_no_console_form_sends_is_refused(fleet: Fleet, session: str, path: str) -> None:
    cookie, _ = login_cookie_and_csrf(fleet)
    for content_type, body in BODIES:
        headers = {"Cookie": f"{cookie}; {session}"}
        if content_type:
            headers["Content-Type"] = content_type
        status, _, reply = call(fleet, path, body, headers)
        assert_refused_quietly(fleet, status, (content_type, body[:60], reply[:200]))


@pytest.mark.parametrize("path", ["/ui/login", "/ui/devices/dev-x/suspend"])
def test_an_origin_that_is_not_a_url_is_cross_site(fleet: Fleet, session: str, path: str) -> None:
    cookie, csrf = login_cookie_and_csrf(fleet)
    for origin in ORIGINS:
        headers = {
            "Cookie": f"{cookie}; {session}",
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": origin,
        }
        status, _, reply = call(fleet, path, f"csrf={csrf}".encode(), headers)
        assert status == 403, (origin, reply[:200])
        assert_refused_quietly(fleet, status, origin)


@given(since=st.none() | st.dates(), until=st.none() | st.dates())
@example(since=dt.date.min, until=dt.date.max)
@example(since=dt.date.max, until=dt.date.max)
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_calendar_date_filters_the_audit_page(
    fleet: Fleet, session: str, since: dt.date | None, until: dt.date | None
) -> None:
    dates = {"since": since, "until": until}
    query = urllib.parse.urlencode({k: v.isoformat() for k, v in dates.items() if v})
    context = tls_client_context(fleet.server.root_pem)
    with connect(fleet.server.port, context) as sock:
        sock.sendall(request_bytes("GET", f"/ui/audit?{query}", headers={"Cookie": session}))
        status, _, reply = read_response(sock)
    assert status == 200, (query, reply[:200])


@pytest.mark.parametrize("device_id", ["admin", "a%20b", "a%00b", "x" * 65, "%C3%A9"])
def test_an_impossible_device_id_in_a_console_path_is_400(
    fleet: Fleet, session: str, device_id: str
) -> None:
    """The console's device pages share the API's path parameter rule (400, not the
    403 a device presenting such an id gets); a GET needs no CSRF token."""
    context = tls_client_context(fleet.server.root_pem)
    with connect(fleet.server.port, context) as sock:
        sock.sendall(request_bytes("GET", f"/ui/devices/{device_id}", headers={"Cookie": session}))
        status, _, reply = read_response(sock)
    assert status == 400, reply[:300]
    assert b"device_id_invalid" in reply
    assert_refused_quietly(fleet, status, device_id)
