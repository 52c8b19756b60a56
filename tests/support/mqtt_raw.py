"""A minimal MQTT 3.1.1 client over TLS that sends exactly what a test asks for.

paho-mqtt refuses to send what an attacker would (wildcards or NUL in a
publish topic, an empty topic) and hides how a connection ended. This client
reports whether the TLS layer refused (an alert during or right after the
handshake), the broker refused (CONNACK code) or the broker closed the
connection, and lets a test drop a connection abruptly so its will fires.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import socket
import ssl
import struct
import time
from collections.abc import Callable
from pathlib import Path

from firmware_sim.lightmqtt import mqtt_string, remaining_length

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
SUBACK_FAILURE = 0x80


class Closed(Exception):
    """The broker closed the connection (or it failed)."""


def client_context(ca: Path, chain: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """Trust ``ca`` for the broker; present ``chain`` (leaf + issuer) and ``key`` if given.

    Security level 0 on the client: an attacker's client sends whatever key
    it holds (an RSA-1024 leaf); what the broker accepts is under test.
    """
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if chain is not None:
        ctx.load_cert_chain(chain, key)
    return ctx


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    topic: bytes
    payload: bytes
    retain: bool


@dataclasses.dataclass
class ConnectOutcome:
    """kind: accepted | refused (CONNACK code != 0) | tls (TLS alert/failure) | closed."""

    kind: str
    code: int | None = None
    detail: str = ""
    client: RawClient | None = None

    def __str__(self) -> str:
        code = f" code={self.code}" if self.code is not None else ""
        return f"{self.kind}{code} {self.detail}".strip()


@dataclasses.dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class RawClient:
    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.messages: list[Message] = []
        self._ids = itertools.count(1)
        self._buffer = b""
        self.closed = False

    # -- connecting ---------------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        port: int,
        ctx: ssl.SSLContext,
        client_id: str,
        *,
        clean_session: bool = True,
        will: Will | None = None,
        keepalive: int = 60,
        timeout: float = 5.0,
    ) -> ConnectOutcome:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        except ssl.SSLError as exc:
            raw.close()
            return ConnectOutcome("tls", detail=f"handshake: {exc}")
        except OSError as exc:
            raw.close()
            return ConnectOutcome("closed", detail=f"handshake: {exc!r}")
        client = cls(sock)
        flags = 0x02 if clean_session else 0
        payload = mqtt_string(client_id.encode())
        if will is not None:
            flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
            payload += mqtt_string(will.topic.encode()) + mqtt_string(will.payload)
        body = mqtt_string(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
        try:
            client._send(CONNECT << 4, body)
            kind, _flags, data = client._read_packet(timeout)
        except ssl.SSLError as exc:
            # TLS 1.3: the server checks the client certificate after the client
            # finished its handshake; its alert arrives on the first read.
            client.abort()
            return ConnectOutcome("tls", detail=f"after handshake: {exc}")
        except (Closed, OSError) as exc:
            client.abort()
            return ConnectOutcome("closed", detail=f"no CONNACK: {exc!r}")
        if kind != CONNACK or len(data) < 2:
            client.abort()
            return ConnectOutcome("closed", detail=f"packet type {kind} instead of CONNACK")
        if data[1] != 0:
            client.abort()
            return ConnectOutcome("refused", code=data[1])
        return ConnectOutcome("accepted", code=0, client=client)

    # -- wire ---------------------------------------------------------------------------
    def _send(self, first: int, body: bytes) -> None:
        try:
            self.sock.sendall(bytes([first]) + remaining_length(len(body)) + body)
        except OSError as exc:
            self.closed = True
            raise Closed(repr(exc)) from exc

    def _read_exact(self, n: int, deadline: float) -> bytes:
        while len(self._buffer) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no packet in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise
            except ssl.SSLError:
                self.closed = True
                raise
            except OSError as exc:
                self.closed = True
                raise Closed(repr(exc)) from exc
            if not chunk:
                self.closed = True
                raise Closed("connection closed by the broker")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _read_packet(self, timeout: float) -> tuple[int, int, bytes]:
        deadline = time.monotonic() + timeout
        first = self._read_exact(1, deadline)[0]
        length, shift = 0, 0
        while True:
            byte = self._read_exact(1, deadline)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first >> 4, first & 0x0F, self._read_exact(length, deadline)

    def _next_id(self) -> int:
        return next(self._ids) % 65535 or next(self._ids)

    def _await(self, want: int, packet_id: int | None, timeout: float) -> bytes:
        """Read until a packet of type ``want`` (with ``packet_id``); keep PUBLISHes."""
        deadline = time.monotonic() + timeout
        while True:
            kind, flags, data = self._read_packet(max(deadline - time.monotonic(), 0.001))
            if kind == PUBLISH:
                self._on_publish(flags, data)
                continue
            if kind == want and (
                packet_id is None or struct.unpack("!H", data[:2])[0] == packet_id
            ):
                return data

    def _on_publish(self, flags: int, data: bytes) -> None:
        qos = (flags >> 1) & 0x03
        (length,) = struct.unpack("!H", data[:2])
        topic, rest = data[2 : 2 + length], data[2 + length :]
        if qos:
            packet_id, rest = rest[:2], rest[2:]
            self._send(PUBACK << 4, packet_id)
        self.messages.append(Message(topic, rest, bool(flags & 0x01)))

    # -- operations -----------------------------------------------------------------------
    def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 5.0) -> list[int] | None:
        """SUBACK return codes, or None if the broker closed the connection instead."""
        packet_id = self._next_id()
        body = struct.pack("!H", packet_id) + mqtt_string(topic_filter.encode()) + bytes([qos])
        try:
            self._send((SUBSCRIBE << 4) | 0x02, body)
            return list(self._await(SUBACK, packet_id, timeout)[2:])
        except (Closed, ssl.SSLError, TimeoutError):
            return None

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 5.0,
    ) -> bool:
        """Send a PUBLISH; True once acknowledged (QoS 1) or sent (QoS 0), False if closed
        or (QoS 1) never acknowledged within ``timeout``."""
        header = (PUBLISH << 4) | (qos << 1) | (0x01 if retain else 0)
        body = mqtt_string(topic.encode())
        packet_id = self._next_id() if qos else None
        if packet_id is not None:
            body += struct.pack("!H", packet_id)
        try:
            self._send(header, body + payload)
            if packet_id is not None:
                self._await(PUBACK, packet_id, timeout)
        except (Closed, ssl.SSLError, TimeoutError):
            return False
        return True

    def ping(self, timeout: float = 5.0) -> bool:
        """PINGREQ -> PINGRESP: the broker has read everything sent before. False if closed."""
        try:
            self._send(PINGREQ << 4, b"")
            self._await(PINGRESP, None, timeout)
        except (Closed, ssl.SSLError, TimeoutError):
            return False
        return True

    def wait_for(
        self, predicate: Callable[[Message], bool], timeout: float = 5.0
    ) -> Message | None:
        """The first kept or incoming message for which ``predicate`` holds (None on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if predicate(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return None
            try:
                kind, flags, data = self._read_packet(left)
            except (TimeoutError, Closed, ssl.SSLError):
                return None
            if kind == PUBLISH:
                self._on_publish(flags, data)

    def disconnect(self) -> None:
        """A clean DISCONNECT (no will)."""
        if not self.closed:
            with contextlib.suppress(Closed):
                self._send(DISCONNECT << 4, b"")
        self.abort()

    def abort(self) -> None:
        """Close the TCP connection without DISCONNECT (the will fires)."""
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
