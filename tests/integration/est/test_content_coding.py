"""No route accepts a compressed request body: 415, never a 500, and nothing is inflated.

Found from outside: ``Content-Encoding: gzip`` (or deflate) on a body that
did not inflate answered 500 with a traceback, from inside aiohttp, on every
route that reads a body; one that did inflate was expanded before any
handler saw it. The table crosses every body-reading route (EST, OCSP,
admin JSON, CSV and PEM, console sign-in) and a GET with every coding.
"""

from __future__ import annotations

import base64
import gzip
import zlib

import pytest

from tests.integration.admin.conftest import make_admin
from tests.integration.est.conftest import Fleet
from tests.support.raw_http import connect, read_response, request_bytes, tls_client_context


def bodies(csr_b64: bytes) -> dict[str, bytes]:
    return {
        "gzip": gzip.compress(csr_b64),
        "deflate": zlib.compress(csr_b64),
        "x-gzip": gzip.compress(csr_b64),
        "br": b"\x8b\x03\x80" + csr_b64,
        "compress": csr_b64,
        "gzip, identity": gzip.compress(csr_b64),
        "identity, deflate": b"not deflate at all",
        "GZIP": b"\x1f\x8b\x08\x00garbage",  # gzip magic, then bytes that do not inflate
        "unknown-coding": csr_b64,
    }


# (method, path, content type, credential): every route that reads a body, and a GET.
ROUTES = [
    ("POST", "/.well-known/est/simpleenroll", "application/pkcs10", "bootstrap"),
    ("POST", "/.well-known/est/simplereenroll", "application/pkcs10", "bootstrap"),
    ("POST", "/.well-known/est/sensors/serverkeygen", "application/pkcs10", "bootstrap"),
    ("POST", "/ocsp", "application/ocsp-request", None),
    ("POST", "/api/v1/revocations/bulk", "application/json", "token"),
    ("POST", "/api/v1/manifest", "text/csv", "token"),
    ("POST", "/api/v1/manufacturers", "application/x-pem-file", "token"),
    ("POST", "/ui/login", "application/x-www-form-urlencoded", None),
    ("GET", "/.well-known/est/cacerts", "", None),
]


@pytest.fixture(scope="module")
def admin_token(fleet: Fleet) -> str:
    return make_admin(fleet).tokens["admin"]


@pytest.mark.parametrize(("method", "path", "content_type", "credential"), ROUTES)
def test_a_compressed_body_is_unsupported_media_type(
    fleet: Fleet,
    admin_token: str,
    method: str,
    path: str,
    content_type: str,
    credential: str | None,
) -> None:
    device = fleet.new_device()
    token = admin_token if credential == "token" else None
    context = tls_client_context(
        fleet.server.root_pem,
        cert=device.cert if credential == "bootstrap" else None,
        key=device.key if credential == "bootstrap" else None,
    )
    _, csr_b64 = fleet.csr("coding")
    for coding, body in bodies(csr_b64.read_bytes()).items():
        headers = {"Content-Encoding": coding, "Connection": "close"}
        if content_type:
            headers["Content-Type"] = content_type
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        with connect(fleet.server.port, context) as sock:
            sock.sendall(request_bytes(method, path, body=body, headers=headers))
            status, reply_headers, reply = read_response(sock)
        assert (status, reply_headers.get("x-fleet-reason")) == (415, "unsupported_media_type"), (
            coding, reply[:200],
        )  # fmt: skip
        assert reply_headers.get("accept-encoding") == "identity"
    log = fleet.server.log()
    assert "Traceback" not in log
    assert "unexpected error" not in log


def test_identity_is_no_coding(fleet: Fleet) -> None:
    device = fleet.new_device()
    _, csr_b64 = fleet.csr("identity")
    context = tls_client_context(fleet.server.root_pem, cert=device.cert, key=device.key)
    headers = {"Content-Type": "application/pkcs10", "Content-Encoding": "identity"}
    with connect(fleet.server.port, context) as sock:
        sock.sendall(
            request_bytes(
                "POST", "/.well-known/est/simpleenroll", body=csr_b64.read_bytes(), headers=headers
            )
        )
        status, _, reply = read_response(sock)
    assert status == 200, reply[:200]
    assert base64.b64decode(reply)
