"""Two Mosquitto nodes (plugin + sidecar each, peers of each other): session takeover latency.

One session per device across broker nodes: a device connected to node A
connects to node B; the plugin on B announces it, B's sidecar passes it to
A's listener, A's plugin closes the older session. Measured from B's CONNACK
to A closing the device's TCP connection (both seen by this one client
process), with ``--devices`` other devices connected to A the whole time.

    .venv/bin/python bench/session_takeover.py                      # 200 takeovers, 1000 on A
    .venv/bin/python bench/session_takeover.py --devices 5000 --takeovers 500

Prints p50/p99/max; asserts no timing; exits 1 if a takeover did not happen
within 5 s or a bystander was dropped.
"""

# ruff: noqa: E402 -- the repository root goes on sys.path before the project imports

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from broker_revoke import enroll_devices, percentile
from mqtt_sessions import Device, mqtt_connect

from tests.support.fleet_server import FleetServer, make_data_dir
from tests.support.mosquitto_broker import BrokerNode, BrokerNodes, fleet_broker
from tests.support.ports import free_port

TIMEOUT = 5.0


async def closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    """When the broker closed this connection (perf_counter).

    Holds the writer too: a StreamWriter that is garbage-collected closes its
    connection, which would read here as the broker closing it.
    """
    with contextlib.suppress(OSError, ssl.SSLError):
        while await reader.read(4096):
            pass
    at = time.perf_counter()
    writer.close()
    return at


async def measure(
    a: BrokerNode, b: BrokerNode, bystanders: Sequence[Device], movers: Sequence[Device]
) -> tuple[list[float], int, int]:
    semaphore = asyncio.Semaphore(50)

    async def hold(node: BrokerNode, device: Device) -> asyncio.Task[float]:
        async with semaphore:
            streams = await mqtt_connect(node.port, device)
        if streams is None:
            raise RuntimeError(f"{device.device_id} could not connect to {node.directory.name}")
        return asyncio.get_running_loop().create_task(closed(*streams))

    watchers = list(await asyncio.gather(*(hold(a, d) for d in bystanders)))
    print(f"  {len(bystanders)} devices connected to node a; {len(movers)} takeovers a -> b")
    latencies: list[float] = []
    missed = 0
    try:
        for device in movers:
            on_a = await hold(a, device)
            on_b = await hold(b, device)
            connected_b = time.perf_counter()
            watchers.append(on_b)
            try:
                latencies.append(1000 * (await asyncio.wait_for(on_a, TIMEOUT) - connected_b))
            except TimeoutError:
                missed += 1
        dropped = sum(w.done() for w in watchers)  # bystanders and the newer sessions
    finally:
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    return latencies, missed, dropped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000, help="bystanders on node a")
    parser.add_argument("--takeovers", type=int, default=200)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        base = Path(tmp)
        config = make_data_dir(base / "data")
        data = config.parent
        server = FleetServer(config).start()
        nodes: list[BrokerNode] = []
        try:
            work = base / "devices"
            work.mkdir()
            t0 = time.perf_counter()
            devices = enroll_devices(server, work, args.devices + args.takeovers)
            print(f"setup: {len(devices)} devices enrolled in {time.perf_counter() - t0:.1f}s")
            for device in devices:
                device.trust(server.root_pem)
            plugin = Path(
                fleet_broker("mosquitto", "build", "--out", base / "plugin").stdout.strip()
            )
            node = BrokerNodes.issue(data, base, plugin).node
            ports = free_port(), free_port()
            for name, port, peer in (("a", ports[0], ports[1]), ("b", ports[1], ports[0])):
                nodes.append(
                    node(
                        base / name,
                        port=port,
                        extra=f'node_name = "{name}"\npeers = ["127.0.0.1:{peer}"]\n'
                        'log_type = ["error", "warning"]',
                    )
                )
            for each in nodes:
                fleet_broker("mosquitto", "sync", "--config", each.settings, "--once")
                each.start_broker()
            for each in nodes:
                each.start_sidecar()
            for each in nodes:
                each.wait_sidecar_log("session link to peer broker")
            latencies, missed, dropped = asyncio.run(
                measure(nodes[0], nodes[1], devices[: args.devices], devices[args.devices :])
            )
        finally:
            for each in nodes:
                each.stop()
            server.stop()

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), {platform.python_version()};"
        " client, brokers and sidecars share the machine"
    )
    print(
        f"session takeover a -> b with {args.devices} other devices on a "
        f"({len(latencies)} timed): newer CONNACK -> older session closed"
    )
    if latencies:
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        print(
            f"  p50 {p50:6.1f} ms   p99 {p99:6.1f} ms"
            f"   max {max(latencies):6.1f} ms   mean {statistics.fmean(latencies):6.1f} ms"
        )
    if missed or dropped:
        print(
            f"FAILED: {missed} takeover(s) missed, {dropped} newer or bystander session(s) dropped"
        )
    return 1 if missed or dropped else 0


if __name__ == "__main__":
    sys.exit(main())
