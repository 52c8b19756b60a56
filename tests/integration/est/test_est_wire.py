"""What deployed EST clients send (../shared/notes/est-clients.md), accepted as sent."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.est.conftest import Fleet
from tests.support.est_client import curl
from tests.support.fleet_server import FleetServer
from tests.support.raw_http import connect, read_response, request_bytes, tls_client_context


def _csr_der(csr_b64: Path) -> bytes:
    return base64.b64decode(b"".join(csr_b64.read_bytes().split()))


def test_base64_with_any_whitespace_is_accepted(fleet: Fleet, tmp_path: Path) -> None:
    device = fleet.new_device()
    _, csr = fleet.csr("ws")
    text = base64.b64encode(_csr_der(csr)).decode()
    messy = " \t".join(text[i : i + 10] for i in range(0, len(text), 10))
    messy = messy[:40] + "\r\n\t" + messy[40:] + "\n\n"
    body = tmp_path / "messy.b64"
    body.write_text(messy)
    assert fleet.enroll(device, body).status == 200


def test_chunked_request_body_is_accepted(fleet: Fleet) -> None:
    device = fleet.new_device()
    _, csr = fleet.csr("chunked")
    result = fleet.enroll(device, csr, headers={"Transfer-Encoding": "chunked"})
    assert result.status == 200, result.text


def test_content_transfer_encoding_is_ignored(fleet: Fleet) -> None:
    device = fleet.new_device()
    _, csr = fleet.csr("cte")
    result = fleet.enroll(device, csr, headers={"Content-Transfer-Encoding": "binary"})
    assert result.status == 200


def test_stray_crlf_after_the_body_does_not_break_the_connection(fleet: Fleet) -> None:
    # libest sends two bytes (CRLF) after the body; the next request on the
    # same connection must still be answered.
    device = fleet.new_device()
    _, csr = fleet.csr("stray")
    context = tls_client_context(fleet.server.root_pem, cert=device.cert, key=device.key)
    with connect(fleet.server.port, context) as sock:
        enroll = request_bytes(
            "POST",
            "/.well-known/est/simpleenroll",
            body=csr.read_bytes(),
            headers={"Content-Type": "application/pkcs10"},
        )
        sock.sendall(enroll + b"\r\n")
        assert read_response(sock)[0] == 200
        sock.sendall(request_bytes("GET", "/.well-known/est/cacerts"))
        status, headers, _ = read_response(sock)
        assert status == 200
        assert headers["content-type"] == "application/pkcs7-mime"


@pytest.fixture(scope="module")
def one_line_server(fleet: Fleet) -> Iterator[FleetServer]:
    # A second server on the same data directory, as strongSwan < 5.9.11 needs it.
    server = FleetServer(fleet.server.config_path, env={"FLEET_EST_BASE64_LINE_LENGTH": "0"})
    server.start()
    yield server
    server.stop()


def test_line_length_zero_answers_on_one_line(fleet: Fleet, one_line_server: FleetServer) -> None:
    result = curl(one_line_server.est("cacerts"), cacert=one_line_server.root_pem)
    assert result.status == 200
    assert result.body.count(b"\n") == 1
    assert result.body.endswith(b"\r\n")
    assert len(result.body) > 500


def test_tls12_is_accepted(fleet: Fleet) -> None:
    context = tls_client_context(fleet.server.root_pem, version=ssl.TLSVersion.TLSv1_2)
    with connect(fleet.server.port, context) as sock:
        assert sock.version() == "TLSv1.2"
        sock.sendall(request_bytes("GET", "/.well-known/est/cacerts"))
        assert read_response(sock)[0] == 200
