"""scale_out.py's revoke -> kick figures: many devices holding MQTT sessions over
two broker nodes (broker_revoke.py's asyncio client, on the device host), revoked
one by one through the store, each kick timed from the store's acknowledgement."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time
from pathlib import Path

from broker_revoke import cpu_seconds
from mqtt_sessions import Device, HeldSessions, revoke_one_by_one
from scale_out_enroll import enroll_all

from fleet.store.factory import open_store
from tests.support.cluster import MQTT_PORT, Cluster

# -- revoke -> kick over two broker nodes --------------------------------------------------


@dataclasses.dataclass
class KickFigures:
    connected: int
    nofile: int
    latencies: dict[str, list[float]]  # broker node -> ms from the store's ack to the close
    ack_ms: list[float]
    failed: int
    bystanders_dropped: int
    broker_cpu_ms: float  # both Mosquitto processes, per revocation
    connect_seconds: float


def raise_nofile(pid: int, limit: int) -> int:
    """Raise ``pid``'s descriptor limit (soft and hard) to ``limit``; the limit it now has."""
    subprocess.run(
        ["prlimit", f"--pid={pid}", f"--nofile={limit}:{limit}"], check=True, capture_output=True
    )
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise RuntimeError(f"no descriptor limit in /proc/{pid}/limits")


def device_contexts(cluster: Cluster, names: list[str]) -> list[Device]:
    devices = []
    directory = cluster.work / "devices"
    for name in names:
        device = Device(name, directory / f"{name}.pem", directory / f"{name}.key")
        device.trust(cluster.root_pem)
        devices.append(device)
    return devices


async def kick_latency(
    cluster: Cluster, devices: list[Device], victims: list[Device], nofile: int
) -> KickFigures:
    """Runs on the device host: every device connected (alternating broker nodes), then
    each victim revoked through the store and its close timed."""
    brokers = list(cluster.brokers.values())
    home = {d.device_id: brokers[i % 2] for i, d in enumerate(devices)}
    sessions = HeldSessions(devices)

    async def hold(device: Device) -> bool:
        return await sessions.hold(device, MQTT_PORT, home[device.device_id].host.address)

    started = time.perf_counter()
    held = await asyncio.gather(*(hold(d) for d in devices))
    connect_seconds = time.perf_counter() - started
    if not all(held):
        raise RuntimeError(f"{held.count(False)} of {len(devices)} devices could not connect")
    print(f"  {len(devices)} devices connected in {connect_seconds:.1f} s", flush=True)
    await asyncio.sleep(1)  # let the brokers' connect work settle before timing kicks
    brokers_pids = [b.broker.pid for b in brokers if b.broker is not None]
    store = await open_store(cluster.store.url)
    cpu_before = sum(cpu_seconds(pid) for pid in brokers_pids)
    try:
        kicks = await revoke_one_by_one(store, sessions, victims)
        cpu = sum(cpu_seconds(pid) for pid in brokers_pids) - cpu_before
    finally:
        await store.close()
    # From the store's acknowledgement: the broker nodes' part, not the store's.
    latencies: dict[str, list[float]] = {b.host.name: [] for b in brokers}
    for kick in kicks:
        if kick.closed is not None:
            latencies[home[kick.device_id].host.name].append(1000 * (kick.closed - kick.acked))
    failed = sum(kick.closed is None for kick in kicks)
    revoked = {d.device_id for d in victims}
    dropped = sum(sessions.is_closed(d.device_id) for d in devices if d.device_id not in revoked)
    await sessions.release()
    return KickFigures(
        len(devices),
        nofile,
        latencies,
        [kick.ack_ms for kick in kicks],
        failed,
        dropped,
        1000 * cpu / max(1, len(victims)),
        connect_seconds,
    )


def _on_node(index: int, node: int, count: int) -> int:
    """The device index nearest ``index`` that is on broker node ``node`` (0 or 1)."""
    if index % 2 != node:
        index += 1
    return index if index < count else index - 2


def measure_kicks(
    cluster: Cluster, boots: dict[str, tuple[Path, Path]], revocations: int, threads: int
) -> KickFigures:
    names = list(boots)
    started = time.perf_counter()
    enrolled, failed, _ = enroll_all(cluster, boots, threads)
    if failed:
        raise RuntimeError(f"{failed} of {len(names)} devices could not enroll for the kick run")
    print(
        f"  {enrolled} devices enrolled for the kick run in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    # Each broker node its own descriptor limit: its half of the devices, with room.
    nofile = len(names) + 1024
    limits = [
        raise_nofile(b.broker.pid, nofile) for b in cluster.brokers.values() if b.broker is not None
    ]
    devices = device_contexts(cluster, names)
    # Victims spread over the devices and alternate between the nodes (device i is
    # on node i % 2).
    step = max(1, len(devices) // max(1, revocations))
    victims = [devices[_on_node(k * step, k % 2, len(devices))] for k in range(revocations)]
    return cluster.device.call(
        lambda: asyncio.run(kick_latency(cluster, devices, victims, min(limits))),
        timeout=600 + len(devices) / 10,
    )
