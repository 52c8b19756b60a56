"""Reported inputs that answered 500 with a traceback: each now gets its 4xx and reason code.

One real `fleet serve` in TLS mode (the module's ``fleet``) and one in proxy
mode (``proxied``: the test process is the trusted proxy, on loopback).
"""

from __future__ import annotations

import base64
import json
import re
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from tests.integration.est.conftest import Device, Fleet, running_fleet
from tests.support import hostile
from tests.support.fleet_server import FleetServer
from tests.support.raw_http import connect, read_response, request_bytes, tls_client_context

ENROLL = "/.well-known/est/simpleenroll"


def send(
    server: FleetServer,
    request: bytes,
    *,
    client: tuple[Path, Path] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One raw request over TLS (or plain TCP in proxy mode); the parsed response."""
    if server.scheme == "http":
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as plain:
            plain.sendall(request)
            return read_response(plain)
    cert, key = client if client is not None else (None, None)
    context = tls_client_context(server.root_pem, cert=cert, key=key)
    with connect(server.port, context) as sock:
        sock.sendall(request)
        return read_response(sock)


def enroll_request(body: bytes, headers: dict[str, str] | None = None) -> bytes:
    return request_bytes(
        "POST",
        ENROLL,
        body=body,
        headers={"Content-Type": "application/pkcs10", **(headers or {})},
    )


def write_hostile_certificate(fleet: Fleet, device: Device, der: bytes, name: str) -> Path:
    path = fleet.work / f"{name}.pem"
    path.write_bytes(hostile.pem(der))
    return path


def bootstrap_der(device: Device) -> bytes:
    return device.bootstrap.certificate.public_bytes(serialization.Encoding.DER)


def assert_refused(
    answer: tuple[int, dict[str, str], bytes], status: int, reason: str, *, api: bool = False
) -> None:
    got, headers, body = answer
    assert (got, headers.get("x-fleet-reason")) == (status, reason), body[:300]
    assert headers["server"] == "fleet"
    if api:
        assert headers["content-type"].startswith("application/json")
        assert json.loads(body)["error"] == reason
    else:
        assert headers["content-type"].startswith("text/plain")
        assert body.decode().startswith(f"{reason}: ")


def assert_quiet_log(server: FleetServer) -> None:
    log = server.log()
    assert "Traceback" not in log
    assert '"level": "error"' not in log


# -- TLS mode ------------------------------------------------------------------------------


def test_csr_whose_version_is_not_0_is_csr_invalid(fleet: Fleet) -> None:
    device = fleet.new_device()
    for version in (1, 2, 0x7F):
        body = hostile.est_body(hostile.csr_with_version(hostile.csr_der(), version))
        answer = send(fleet.server, enroll_request(body), client=(device.cert, device.key))
        assert_refused(answer, 400, "csr_invalid")
    assert_quiet_log(fleet.server)


@pytest.mark.parametrize("kind", ["v2", "printable"])
def test_client_certificate_cryptography_cannot_load_is_certificate_invalid(
    fleet: Fleet, kind: str
) -> None:
    device = fleet.new_device()
    make = hostile.v2_certificate if kind == "v2" else hostile.invalid_printable_string
    der = make(bootstrap_der(device), fleet.manufacturer)
    cert = write_hostile_certificate(fleet, device, der, f"hostile-{kind}")
    body = hostile.est_body(hostile.csr_der())
    answer = send(fleet.server, enroll_request(body), client=(cert, device.key))
    assert_refused(answer, 400, "certificate_invalid")
    # The admin API reads the same client certificate, and answers JSON.
    admin = request_bytes("GET", "/api/v1/devices")
    assert_refused(send(fleet.server, admin, client=(cert, device.key)), 400,
                   "certificate_invalid", api=True)  # fmt: skip
    assert_quiet_log(fleet.server)


@pytest.mark.parametrize("serial", [-1, -(2**64), 0])
def test_ocsp_request_with_a_serial_that_is_not_positive_is_malformed(
    fleet: Fleet, serial: int
) -> None:
    issuer = x509.load_pem_x509_certificate(fleet.server.issuing_pem.read_bytes())
    der = hostile.ocsp_request(issuer, serial)
    post = request_bytes(
        "POST", "/ocsp", body=der, headers={"Content-Type": "application/ocsp-request"}
    )
    get = request_bytes("GET", "/ocsp/" + urllib.parse.quote(base64.b64encode(der).decode()))
    for request in (post, get):
        status, headers, body = send(fleet.server, request)
        assert (status, headers["content-type"]) == (200, "application/ocsp-response")
        response = ocsp.load_der_ocsp_response(body)
        assert response.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert_quiet_log(fleet.server)


def _metric(server: FleetServer, operation: str, outcome: str) -> float:
    context = tls_client_context(server.root_pem)
    with connect(server.port, context) as sock:
        sock.sendall(request_bytes("GET", "/metrics"))
        _, _, body = read_response(sock)
    pattern = (
        rf'fleet_est_requests_total\{{[^}}]*operation="{operation}"'
        rf'[^}}]*outcome="{outcome}"[^}}]*\}} (\S+)'
    )
    return sum(float(m) for m in re.findall(pattern, body.decode()))


def test_a_client_that_leaves_mid_body_is_client_gone_not_an_error(fleet: Fleet) -> None:
    device = fleet.new_device()
    before = _metric(fleet.server, "simpleenroll", "client_gone")
    context = tls_client_context(fleet.server.root_pem, cert=device.cert, key=device.key)
    head = (
        f"POST {ENROLL} HTTP/1.1\r\nHost: localhost\r\n"
        "Content-Type: application/pkcs10\r\nContent-Length: 500\r\n\r\n"
    )
    with connect(fleet.server.port, context) as sock:
        sock.sendall(head.encode() + b"MIIB")
        sock.shutdown(socket.SHUT_RDWR)
    deadline = time.monotonic() + 10
    while _metric(fleet.server, "simpleenroll", "client_gone") == before:
        assert time.monotonic() < deadline, fleet.server.log()[-3000:]
        time.sleep(0.02)
    assert _metric(fleet.server, "simpleenroll", "error") == 0
    assert_quiet_log(fleet.server)


def test_responses_do_not_name_python_or_aiohttp(fleet: Fleet) -> None:
    for request in (request_bytes("GET", "/healthz"), request_bytes("GET", "/nope")):
        _, headers, _ = send(fleet.server, request)
        assert headers["server"] == "fleet"


# -- proxy mode: the certificate arrives in a header ---------------------------------------


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    env = {"FLEET_SERVER_MODE": "proxy", "FLEET_SERVER_TRUSTED_PROXIES": '["127.0.0.1"]'}
    with running_fleet(tmp_path_factory.mktemp("proxied"), env=env, scheme="http") as fleet:
        yield fleet


def forwarded(der: bytes) -> str:
    return urllib.parse.quote(hostile.pem(der).decode(), safe="")


@pytest.mark.parametrize("kind", ["v2", "printable"])
def test_forwarded_certificate_cryptography_cannot_load_is_certificate_invalid(
    proxied: Fleet, kind: str
) -> None:
    device = proxied.new_device()
    make = hostile.v2_certificate if kind == "v2" else hostile.invalid_printable_string
    header = {"X-SSL-Client-Cert": forwarded(make(bootstrap_der(device), proxied.manufacturer))}
    body = hostile.est_body(hostile.csr_der())
    assert_refused(send(proxied.server, enroll_request(body, header)), 400, "certificate_invalid")
    admin = request_bytes("GET", "/api/v1/devices", headers=header)
    assert_refused(send(proxied.server, admin), 400, "certificate_invalid", api=True)
    assert_quiet_log(proxied.server)


def test_a_genuine_forwarded_certificate_still_enrolls(proxied: Fleet) -> None:
    device = proxied.new_device()
    header = {"X-SSL-Client-Cert": forwarded(bootstrap_der(device))}
    body = hostile.est_body(hostile.csr_der())
    status, _, text = send(proxied.server, enroll_request(body, header))
    assert status == 200, text[:300]
