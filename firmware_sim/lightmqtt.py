"""A light asyncio MQTT 3.1.1 client for fleet-scale runs: thousands of sessions on one loop.

``device_agent.mqtt.MqttSession`` is the device's real MQTT code, but it runs a
paho client and a thread per device, which does not scale to 10,000 devices in
one process. For scale runs each device instead holds one of these: a TLS
connection presenting the device's own operational certificate (the TLS
context is the agent's own ``tls_context``), CONNECT, CONNACK, one QoS 1
PUBLISH of its status (with its certificate serial) and its PUBACK, and then
the connection is kept open until :meth:`LightFleet.close_all`. Nothing else:
no reconnection, no queue, no keepalive pings (the keepalive is long enough
for the run).

TLS runs over ``ssl.MemoryBIO`` on a plain asyncio transport rather than
asyncio's own TLS transport, which allocates a 256 KiB read buffer per
connection: 2.4 GiB for 10,000 idle sessions that each read a few bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import ssl
import struct
import time
from collections.abc import Callable, Sequence
from typing import Protocol

KEEPALIVE_S = 900
CONNECT_TIMEOUT_S = 30.0


class MqttProtocolError(Exception):
    """The broker answered something else than the expected packet."""


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length "remaining length" field."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_string(text: str | bytes) -> bytes:
    """A length-prefixed MQTT string (UTF-8 for text)."""
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, keepalive: int = KEEPALIVE_S, clean: bool = True) -> bytes:
    variable = (
        mqtt_string("MQTT") + bytes([4, 0x02 if clean else 0x00]) + struct.pack("!H", keepalive)
    )
    body = variable + mqtt_string(client_id)
    return bytes([0x10]) + remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    body = mqtt_string(topic) + struct.pack("!H", packet_id) + payload
    return bytes([0x32]) + remaining_length(len(body)) + body  # QoS 1


DISCONNECT = bytes([0xE0, 0x00])


class _Reader(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


async def read_packet(reader: _Reader) -> tuple[int, bytes]:
    """(packet type and flags byte, body) of the next packet."""
    header = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 21:
            raise MqttProtocolError("malformed remaining length")
    return header, await reader.readexactly(length)


class TlsClient(asyncio.Protocol):
    """TLS (client side) over MemoryBIO on a plain TCP transport, with a small read buffer."""

    def __init__(self, context: ssl.SSLContext, server_hostname: str) -> None:
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname
        )
        loop = asyncio.get_running_loop()
        self.handshaken: asyncio.Future[None] = loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.error: BaseException | None = None

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._handshake()

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if not self.handshaken.done():
            self._handshake()
            if not self.handshaken.done():
                return
        while True:
            try:
                chunk = self._ssl.read(16_384)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as exc:  # e.g. the server refused our certificate (TLS 1.3)
                self._fail(exc)
                return
            if not chunk:  # close_notify
                self._fail(None)
                return
            self._buffer += chunk
        self._flush()
        self._wake()

    def eof_received(self) -> bool | None:
        self._fail(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc)

    # -- ours ----------------------------------------------------------------------------
    def _handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._flush()
            self._fail(exc)
            return
        self._flush()
        if not self.handshaken.done():
            self.handshaken.set_result(None)

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException | None) -> None:
        if not self.closed:
            self.closed = True
            self.error = exc
        if not self.handshaken.done():
            self.handshaken.set_exception(
                exc if exc is not None else ConnectionError("closed during the TLS handshake")
            )
        self._wake()
        if self._transport is not None:
            self._transport.close()

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionError("the connection is closed")
        self._ssl.write(data)
        self._flush()

    async def readexactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if self.closed:
                partial = bytes(self._buffer)
                if isinstance(self.error, ssl.SSLError):
                    raise self.error
                raise asyncio.IncompleteReadError(partial, n)
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self.closed = True


@dataclasses.dataclass
class LightDevice:
    """What one light session needs: its id, TLS context (its own certificate), its serial."""

    device_id: str
    context: ssl.SSLContext
    serial: str
    conn: TlsClient | None = None
    connected_at: float | None = None  # monotonic, at CONNACK accepted
    published_at: float | None = None  # monotonic, at PUBACK
    error: str = ""


class LightFleet:
    """Connect many LightDevices with at most ``concurrency`` handshakes in flight at once."""

    def __init__(self, host: str, port: int, *, concurrency: int = 64) -> None:
        self.host, self.port = host, port
        self.concurrency = concurrency
        self.open_now = 0
        self.peak_open = 0

    async def connect_one(self, device: LightDevice) -> None:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: TlsClient(device.context, self.host), self.host, self.port
        )
        device.conn = conn
        self.open_now += 1
        self.peak_open = max(self.peak_open, self.open_now)
        try:
            await conn.handshaken
            conn.write(connect_packet(device.device_id))
            kind, body = await read_packet(conn)
            if kind != 0x20 or len(body) != 2:
                raise MqttProtocolError(f"expected CONNACK, got packet 0x{kind:02x}")
            if body[1] != 0:
                raise MqttProtocolError(f"CONNACK refused the connection (return code {body[1]})")
            device.connected_at = time.monotonic()
            status = json.dumps(
                {"device_id": device.device_id, "cert_serial": device.serial, "seq": 1}
            ).encode()
            conn.write(publish_packet(f"devices/{device.device_id}/status", status, 1))
            while True:  # a broker may send other packets first; we want our PUBACK
                kind, body = await read_packet(conn)
                if kind >> 4 == 4 and body[:2] == b"\x00\x01":
                    break
            device.published_at = time.monotonic()
        except BaseException:
            self._close(device)
            raise

    async def connect_all(
        self,
        devices: Sequence[LightDevice],
        on_done: Callable[[LightDevice], None] | None = None,
        per_session_timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(device: LightDevice) -> None:
            async with gate:
                try:
                    await asyncio.wait_for(self.connect_one(device), per_session_timeout)
                except (OSError, ssl.SSLError, asyncio.IncompleteReadError, MqttProtocolError,
                        TimeoutError) as exc:  # fmt: skip
                    device.error = f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)
            if on_done is not None:
                on_done(device)

        await asyncio.gather(*(one(d) for d in devices))

    def _close(self, device: LightDevice) -> None:
        conn, device.conn = device.conn, None
        if conn is not None:
            self.open_now -= 1
            conn.close()

    async def close_all(self, devices: Sequence[LightDevice]) -> None:
        """DISCONNECT and close every open session."""
        for device in devices:
            conn = device.conn
            if conn is None:
                continue
            with contextlib.suppress(Exception):
                conn.write(DISCONNECT)
            self._close(device)
        await asyncio.sleep(0)  # let the transports close

    def still_open(self, devices: Sequence[LightDevice]) -> int:
        """Sessions whose connection the broker has not closed."""
        return sum(1 for d in devices if d.conn is not None and not d.conn.closed)
