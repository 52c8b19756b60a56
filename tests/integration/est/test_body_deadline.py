"""Every route that reads a request body gives up on a slow one at [server] body_timeout_seconds.

Found from outside: only EST bounded its body read. Headers that promise a
body which never comes, sent to OCSP or the console's sign-in (no
credential needed) held a ``max_in_flight`` slot each for as long as the
client liked: 260 of them made every other request a 503. The table sends
every body-reading route a promised body that stalls, with Content-Length and
chunked, and waits for each answer.
"""

from __future__ import annotations

import hashlib
import json
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


def test_a_large_body_that_keeps_coming_is_read_past_the_timeout(fleet: Fleet) -> None:
    """The deadline grows with what arrives: a 240 KB manifest at ~100 KB/s takes
    more than BODY_TIMEOUT and is imported whole."""
    lines = [f"slow-{i:05d},{hashlib.sha256(str(i).encode()).hexdigest()},m,b" for i in range(3000)]
    body = ("device_id,bootstrap_sha256,model,batch\n" + "\n".join(lines) + "\n").encode()
    token = make_admin(fleet).tokens["admin"]
    head = (
        f"POST /api/v1/manifest HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/csv\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    piece = 16 * 1024
    started = time.monotonic()
    with connect(fleet.server.port, tls_client_context(fleet.server.root_pem)) as sock:
        sock.sendall(head)
        for offset in range(0, len(body), piece):
            sock.sendall(body[offset : offset + piece])
            time.sleep(0.15)  # a slow link, not a wait for the server
        status, _, reply = read_response(sock)
    assert time.monotonic() - started > BODY_TIMEOUT
    assert status == 200, reply[:200]
    assert json.loads(reply)["entries"] == 3000
