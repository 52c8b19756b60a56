"""Device MQTT sessions for the broker benchmarks: thousands held open from one
asyncio thread, each watched for the broker closing it, and revocations timed
one by one to that close (broker_revoke.py on one broker, scale_out_kick.py
over two nodes, session_takeover.py).

A minimal MQTT 3.1.1 client over asyncio TLS rather than paho: one thread
holds every session, so the client's own cost stays out of the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import ssl
import time
from collections.abc import Sequence
from pathlib import Path

from fleet.records import RevocationReason
from fleet.store.protocol import Store

# How long a revoked device's session may take to close before it counts as failed.
KICK_TIMEOUT_SECONDS = 5.0
# Between revocations: lets the CRL refresh of the previous one settle.
REVOCATION_GAP_SECONDS = 0.1


@dataclasses.dataclass
class Device:
    device_id: str
    cert: Path
    key: Path
    context: ssl.SSLContext | None = None

    def trust(self, root_pem: Path) -> None:
        """Make the TLS client context: trusts the fleet root, presents this device's cert."""
        self.context = ssl.create_default_context(cafile=str(root_pem))
        self.context.load_cert_chain(self.cert, self.key)


def connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x00"  # clean session, keep-alive off
    payload = len(cid).to_bytes(2, "big") + cid
    remaining = len(variable) + len(payload)
    assert remaining < 128
    return bytes([0x10, remaining]) + variable + payload


DISCONNECT = b"\xe0\x00"


async def mqtt_connect(
    port: int, device: Device, host: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """TLS + CONNECT to ``host``; the open streams when CONNACK accepted, None otherwise."""
    assert device.context is not None
    try:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=device.context, server_hostname=host
        )
    except (OSError, ssl.SSLError):
        return None
    try:
        writer.write(connect_packet(device.device_id))
        await writer.drain()
        connack = await asyncio.wait_for(reader.readexactly(4), 10)
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError):
        writer.close()
        return None
    if connack[0] != 0x20 or connack[3] != 0:
        writer.close()
        return None
    return reader, writer


async def connect_once(port: int, device: Device) -> bool:
    streams = await mqtt_connect(port, device)
    if streams is None:
        return False
    _, writer = streams
    writer.write(DISCONNECT)
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return True


class HeldSessions:
    """Device sessions held open, each noting when the broker closed it (perf_counter)."""

    def __init__(self, devices: Sequence[Device], concurrency: int = 50) -> None:
        self.closed_at: dict[str, float] = {}
        self._closed = {d.device_id: asyncio.Event() for d in devices}
        self._watchers: list[asyncio.Task[None]] = []
        self._connecting = asyncio.Semaphore(concurrency)

    async def hold(self, device: Device, port: int, host: str = "127.0.0.1") -> bool:
        """Connect ``device`` and watch its session; False when the broker refused it."""
        async with self._connecting:
            streams = await mqtt_connect(port, device, host)
        if streams is None:
            return False
        reader, writer = streams

        async def watch() -> None:
            try:
                while await reader.read(4096):
                    pass
            except (OSError, ssl.SSLError):
                pass
            self.closed_at[device.device_id] = time.perf_counter()
            self._closed[device.device_id].set()
            writer.close()

        self._watchers.append(asyncio.get_running_loop().create_task(watch()))
        return True

    def is_closed(self, device_id: str) -> bool:
        return self._closed[device_id].is_set()

    async def closed(self, device_id: str) -> float:
        """When the broker closed ``device_id``'s session (waits for it)."""
        await self._closed[device_id].wait()
        return self.closed_at[device_id]

    async def release(self) -> None:
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)


@dataclasses.dataclass(frozen=True)
class Kick:
    """One revocation, timed: before the store call, its acknowledgement, the close."""

    device_id: str
    asked: float
    acked: float
    closed: float | None  # None: the session was still open after KICK_TIMEOUT_SECONDS

    @property
    def ack_ms(self) -> float:
        return 1000 * (self.acked - self.asked)


async def revoke_one_by_one(
    store: Store, sessions: HeldSessions, victims: Sequence[Device]
) -> list[Kick]:
    """Revoke each victim through the store (as `fleet` does) and wait for its kick."""
    kicks: list[Kick] = []
    for device in victims:
        await asyncio.sleep(REVOCATION_GAP_SECONDS)
        asked = time.perf_counter()
        await store.revoke_device(
            device.device_id, RevocationReason.KEY_COMPROMISE, dt.datetime.now(dt.UTC)
        )
        acked = time.perf_counter()
        closed: float | None
        try:
            async with asyncio.timeout(KICK_TIMEOUT_SECONDS):
                closed = await sessions.closed(device.device_id)
        except TimeoutError:
            closed = None
        kicks.append(Kick(device.device_id, asked, acked, closed))
    return kicks
