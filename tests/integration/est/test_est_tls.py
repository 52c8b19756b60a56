"""TLS details of `fleet serve`: no session tickets, and the handshake ACKed at once."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from fleet.server.tls import AckAfterHandshake, server_context
from tests.integration.est.conftest import Fleet
from tests.support.raw_http import connect, read_response, request_bytes, tls_client_context


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_no_session_tickets(fleet: Fleet, version: ssl.TLSVersion) -> None:
    """Devices never resume; a ticket would only cost CPU on every handshake."""
    device = fleet.new_device()
    context = tls_client_context(
        fleet.server.root_pem, cert=device.cert, key=device.key, version=version
    )
    with connect(fleet.server.port, context) as sock:
        sock.sendall(request_bytes("GET", "/.well-known/est/cacerts"))
        status, _, _ = read_response(sock)  # TLS 1.3 tickets would have arrived by now
        assert status == 200
        assert sock.version() == version.name.replace("v1_", "v1.")
        session = sock.session
        assert session is not None
        assert not session.has_ticket


class _Probe(asyncio.Protocol):
    """Records TCP_QUICKACK when the handshake completes, then answers one line."""

    def __init__(self, seen: list[int], closed: asyncio.Event) -> None:
        self.seen = seen
        self.closed = closed
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        self.seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK))

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"echo " + data)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux only")
async def test_ack_after_handshake_sets_quickack_and_passes_everything_on(
    fleet: Fleet, tmp_path: Path
) -> None:
    data = fleet.server.data_dir
    context = server_context(
        data / "tls/server.pem", data / "tls/server.key", request_client_certificate=True
    )
    seen: list[int] = []
    closed = asyncio.Event()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: AckAfterHandshake(_Probe(seen, closed)), "127.0.0.1", 0, ssl=context
    )
    port = server.sockets[0].getsockname()[1]
    client = tls_client_context(fleet.server.root_pem)

    def exchange() -> bytes:
        with connect(port, client) as sock:
            sock.sendall(b"hello")
            return sock.recv(100)

    try:
        assert await asyncio.to_thread(exchange) == b"echo hello"
        await asyncio.wait_for(closed.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()
    assert seen == [1]  # quick-ACK mode was on when the HTTP protocol saw the connection
