"""Every route that reads a request body gives up on a slow one at [server] body_timeout_seconds.

Found from outside: only EST bounded its body read. Headers that promise a
body which never comes, sent to OCSP or the console's sign-in (no
credential needed) held a ``max_in_flight`` slot each for as long as the
client liked: 260 of them made every other request a 503. The table sends
every body-reading route a promised body that stalls, with Content-Length and
chunked, and waits for each answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.admin.conftest import make_admin
from tests.integration.est.conftest import Fleet, running_fleet
from tests.support.raw_http import connect, read_response, tls_client_context

BODY_TIMEOUT = 1
# (path, content type, needs the admin token): every route that reads a body.
ROUTES = [
    ("/.well-known/est/simpleenroll", "application/pkcs10", False),
    ("/ocsp", "application/ocsp-request", False),
    ("/ui/login", "application/x-www-form-urlencoded", False),
    ("/api/v1/revocations/bulk", "application/json", True),
    ("/api/v1/manifest", "text/csv", True),
    ("/api/v1/manufacturers", "application/x-pem-file", True),
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    env = {"FLEET_SERVER_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT)}
    with running_fleet(tmp_path_factory.mktemp("deadline"), env=env) as running:
        yield running


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_that_stalls_is_408_on_every_route(fleet: Fleet, framing: str) -> None:
    device = fleet.new_device()
    token = make_admin(fleet).tokens["admin"]
    context = tls_client_context(fleet.server.root_pem, cert=device.cert, key=device.key)
    stalled = []
    for path, content_type, admin in ROUTES:
        head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
        if admin:
            head += f"Authorization: Bearer {token}\r\n"
        if framing == "chunked":
            head += "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"  # no last chunk
        else:
            head += "Content-Length: 500\r\n\r\nhello"  # 495 bytes short
        sock = connect(fleet.server.port, context)
        sock.sendall(head.encode())
        stalled.append((path, sock))
    started = time.monotonic()
    try:
        for path, sock in stalled:
            status, _, reply = read_response(sock)  # the socket's own timeout is 30 s
            assert status == 408, (path, status, reply[:200])
    finally:
        for _, sock in stalled:
            sock.close()
    # All waited at once: each gave up after about BODY_TIMEOUT, none held on.
    assert time.monotonic() - started < BODY_TIMEOUT + 10
    log = fleet.server.log()
    assert "Traceback" not in log
