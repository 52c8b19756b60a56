"""Mosquitto + fleet plugin: revoke -> disconnect latency, and mTLS connect cost vs bare Mosquitto.

One run, all on this machine:

  setup      `fleet serve` (EST + /crl); N devices enrolled over EST (real
             bootstrap certificates, manifest pins, real operational
             certificates); the plugin built with `fleet-broker mosquitto build`;
             two Mosquitto 2.0 brokers on loopback from the SAME generated
             config, certificates and crlfile:
               plugin  the fleet plugin + its sidecar (`fleet-broker mosquitto sync`)
               bare    no plugin, `use_identity_as_username true` (plain mTLS)
  connects   fresh TCP + TLS (no resumption) + MQTT CONNECT/CONNACK + DISCONNECT,
             client id = device id, ``--concurrency`` at a time; rounds alternate
             between the two brokers. Reported: connects/s (wall) and broker CPU
             per connect (utime+stime of the mosquitto process from /proc).
  latency    N devices connected to the plugin broker; ``--revocations`` of them
             revoked one by one through the store (as `fleet` does), timed from
             just before the store call to the moment the device's TCP
             connection is closed by the broker. p50/p99/max, and the broker's
             CPU per revocation. Several sizes (``--devices 1000,5000,10000``)
             are measured one after the other with the same broker, sidecar and
             client: the rows differ only in how many devices are connected.

    .venv/bin/python bench/broker_revoke.py                 # 200 devices
    .venv/bin/python bench/broker_revoke.py --devices 1000
    .venv/bin/python bench/broker_revoke.py --devices 1000,5000,10000 --connects 0

Targets (issue 6): revoke -> disconnect p99 <= 100 ms; plugin connect overhead
<= 10 % (broker CPU per connect, and connects/s). Issue 14: a kick's cost must
not depend on how many devices are connected (compare the rows; ``--plugin``
runs a baseline build). Prints figures and ratios; asserts no timing; exits 1
if a connect or a revocation failed.
"""

# ruff: noqa: E402 -- the repository root goes on sys.path before the project imports

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import datetime as dt
import gc
import http.client
import os
import platform
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.support when run as bench/broker_revoke.py

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from mqtt_sessions import Device, HeldSessions, connect_once, revoke_one_by_one

from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.records import ManifestEntry, ManufacturerCA
from fleet.store.factory import open_store
from tests.support.factory import make_bootstrap, make_manufacturer, write_pem
from tests.support.fleet_server import FleetServer, make_data_dir, run_store
from tests.support.mosquitto_broker import BrokerNode, BrokerNodes, fleet_broker
from tests.support.ports import free_port

P99_TARGET_MS = 100.0
OVERHEAD_TARGET = 0.10
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- enrollment over EST ---------------------------------------------------------


def enroll_devices(server: FleetServer, work: Path, count: int) -> list[Device]:
    """``count`` devices enrolled by the real server (bootstrap cert -> operational cert)."""
    manufacturer = make_manufacturer("Bench Maker", now=dt.datetime.now(dt.UTC))
    pem = manufacturer.certificate.public_bytes(serialization.Encoding.PEM).decode()
    now = dt.datetime.now(dt.UTC)
    ca = ManufacturerCA(sha256_fingerprint(manufacturer.certificate), "Bench", pem, now)
    run_store(server.config_path, lambda s: s.add_manufacturer_ca(ca))
    boots, entries = [], []
    for index in range(count):
        device_id = f"bench-{index:05d}"
        bootstrap = make_bootstrap(manufacturer, device_id)
        cert, key = write_pem(work / f"boot-{device_id}", bootstrap)
        boots.append((device_id, cert, key))
        entries.append(
            ManifestEntry(device_id, sha256_fingerprint(bootstrap.certificate), "b", "b")
        )
    run_store(server.config_path, lambda s: s.import_manifest(entries, now))

    def enroll(boot: tuple[str, Path, Path]) -> Device:
        device_id, boot_cert, boot_key = boot
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
        )
        context = ssl.create_default_context(cafile=str(server.root_pem))
        context.load_cert_chain(boot_cert, boot_key)
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=30)
        try:
            conn.request(
                "POST",
                "/.well-known/est/simpleenroll",
                body=base64.encodebytes(csr),
                headers={"Content-Type": "application/pkcs10"},
            )
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"enrollment of {device_id} failed: {response.status} {body!r}")
        issued = pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(body.split())))
        cert_path = work / f"{device_id}.pem"
        cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in issued))
        key_path = work / f"{device_id}.key"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return Device(device_id, cert_path, key_path)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(enroll, boots))


# -- measurements -------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclasses.dataclass
class ConnectResult:
    name: str
    connects: int = 0
    failed: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    round_rates: list[float] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        """Median connects/s over the rounds: the client shares the CPUs, so rounds are noisy."""
        return statistics.median(self.round_rates) if self.round_rates else 0.0

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu / self.connects if self.connects else 0.0


async def connect_round(
    node: BrokerNode, devices: Sequence[Device], count: int, concurrency: int, result: ConnectResult
) -> None:
    assert node.broker is not None
    semaphore = asyncio.Semaphore(concurrency)

    async def one(index: int) -> bool:
        async with semaphore:
            return await connect_once(node.port, devices[index % len(devices)])

    cpu_before = cpu_seconds(node.broker.pid)
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(one(i) for i in range(count)))
    wall = time.perf_counter() - started
    result.wall += wall
    result.round_rates.append(sum(outcomes) / wall)
    result.cpu += cpu_seconds(node.broker.pid) - cpu_before
    result.connects += sum(outcomes)
    result.failed += len(outcomes) - sum(outcomes)


@dataclasses.dataclass
class LatencyRound:
    """Revoke -> disconnect figures with ``connected`` devices holding a session."""

    connected: int
    latencies: list[float]
    failed: int
    bystanders_dropped: int
    gc_pause_ms: float  # the client's own full collections during the timed revocations
    broker_cpu_ms: float  # the broker process's CPU over the timed revocations, per revocation


class GcPauses:
    """Time this (client) process spent in generation-2 collections: its own latency."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started


async def revoke_latency(
    node: BrokerNode,
    devices: Sequence[Device],
    store_url: str,
    sizes: Sequence[int],
    revocations: int,
) -> list[LatencyRound]:
    """For each size (ascending): top up to ``size`` live sessions, revoke ``revocations``.

    One broker and one client process for all sizes, so the rounds differ only in
    how many devices are connected. Revoked devices are not reconnected; every
    round takes fresh devices, so ``devices`` must hold max(sizes) + revocations
    per extra round.
    """
    sessions = HeldSessions(devices)
    live: list[Device] = []
    pool = iter(devices)
    store = await open_store(store_url)
    rounds: list[LatencyRound] = []
    gc_pauses = GcPauses()
    try:
        for size in sorted(sizes):
            fresh = [next(pool) for _ in range(size - len(live))]
            held = await asyncio.gather(*(sessions.hold(d, node.port) for d in fresh))
            if not all(held):
                raise RuntimeError(
                    f"{held.count(False)} devices could not connect to the plugin broker"
                )
            live.extend(fresh)
            print(f"  {len(live)} devices connected; revoking {revocations} one by one", flush=True)
            pauses_before = gc_pauses.total
            assert node.broker is not None
            broker_before = cpu_seconds(node.broker.pid)
            victims, live = live[:revocations], live[revocations:]
            kicks = await revoke_one_by_one(store, sessions, victims)
            # From just before the store call: what an admin waits for.
            latencies = [1000 * (k.closed - k.asked) for k in kicks if k.closed is not None]
            failed = len(kicks) - len(latencies)
            dropped = sum(sessions.is_closed(d.device_id) for d in live)
            if dropped:
                print(f"  WARNING: {dropped} bystanders were dropped")
            gc_ms = 1000 * (gc_pauses.total - pauses_before)
            broker_ms = 1000 * (cpu_seconds(node.broker.pid) - broker_before) / len(victims)
            rounds.append(LatencyRound(size, latencies, failed, dropped, gc_ms, broker_ms))
    finally:
        await store.close()
        await sessions.release()
    return rounds


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# -- brokers ---------------------------------------------------------------------------


def bare_conf(plugin_conf: str, port_from: int, port_to: int, pid_file: Path) -> str:
    """The same listener, certificates and crlfile, without the plugin."""
    lines = []
    for line in plugin_conf.splitlines():
        if line.startswith("plugin"):
            continue
        if line.startswith("pid_file "):
            line = f"pid_file {pid_file}"
        if line == "use_identity_as_username false":
            line = "use_identity_as_username true"
        if line.startswith(f"listener {port_from} "):
            line = line.replace(f"listener {port_from} ", f"listener {port_to} ")
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--devices",
        type=_sizes,
        default=[200],
        help="devices connected; several (comma-separated, e.g. 1000,5000,10000) are"
        " measured one after the other in the same run (default 200)",
    )
    parser.add_argument("--revocations", type=int, default=100, help="revocations timed")
    parser.add_argument("--connects", type=int, default=1000, help="connects per broker")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds (default 10)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--plugin",
        type=Path,
        help="a prebuilt fleet_plugin.so instead of building this checkout's (a baseline)",
    )
    args = parser.parse_args(argv)
    sizes = sorted(args.devices)
    revocations = min(args.revocations, sizes[0])
    enrolled = sizes[-1] + revocations * (len(sizes) - 1)

    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        base = Path(tmp)
        config = make_data_dir(base / "data")
        data = config.parent
        server = FleetServer(config).start()
        nodes: list[BrokerNode] = []
        try:
            t0 = time.perf_counter()
            work = base / "devices"
            work.mkdir()
            devices = enroll_devices(server, work, enrolled)
            print(
                f"setup: {len(devices)} devices enrolled over EST "
                f"in {time.perf_counter() - t0:.1f}s"
            )
            for device in devices:
                device.trust(server.root_pem)

            plugin_dir = base / "plugin"
            plugin = args.plugin or Path(
                fleet_broker("mosquitto", "build", "--out", plugin_dir).stdout.strip()
            )
            plugin_nodes = BrokerNodes.issue(data, base, plugin)
            store_url = plugin_nodes.store_url
            node = plugin_nodes.node(
                base / "plugin-node",
                crl_url=f"{server.base}/crl",
                extra='log_type = ["error", "warning"]',
            )
            fleet_broker("mosquitto", "sync", "--config", node.settings, "--once")
            nodes.append(node)
            node.start_broker()
            node.start_sidecar()

            bare = BrokerNode(base / "bare-node", node.settings, free_port())
            bare.directory.mkdir()
            bare.conf.write_text(
                bare_conf(node.conf.read_text(), node.port, bare.port, bare.directory / "pid")
            )
            nodes.append(bare)
            bare.start_broker()

            results = {"plugin": ConnectResult("plugin"), "bare": ConnectResult("bare")}
            per_round = max(1, args.connects // args.rounds)

            async def connects() -> None:
                # Warm-up, then alternate so drift (thermal, other load) hits both alike.
                await connect_round(node, devices, 50, args.concurrency, ConnectResult("w"))
                await connect_round(bare, devices, 50, args.concurrency, ConnectResult("w"))
                for index in range(args.rounds):
                    order = (node, bare) if index % 2 == 0 else (bare, node)
                    for target in order:
                        name = "plugin" if target is node else "bare"
                        await connect_round(
                            target, devices, per_round, args.concurrency, results[name]
                        )

            if args.connects:
                asyncio.run(connects())
            bare.stop_broker()
            rounds = asyncio.run(revoke_latency(node, devices, store_url, sizes, revocations))
            revoke_failed = sum(r.failed for r in rounds)
            if revoke_failed:
                for log in (node.sidecar_log, node.broker_log):
                    tail = log.read_text(errors="replace").splitlines()[-25:]
                    print(f"--- last lines of {log.name}:", *tail, sep="\n")
        finally:
            for each in nodes:
                each.stop()
            server.stop()

    plugin_r, bare_r = results["plugin"], results["bare"]
    cpu_overhead = plugin_r.cpu_us / bare_r.cpu_us - 1 if bare_r.cpu_us else float("nan")
    rate_overhead = bare_r.rate / plugin_r.rate - 1 if plugin_r.rate else float("nan")
    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), {platform.python_version()}, "
        f"{_mosquitto_version()}; client and brokers share the machine"
    )
    if args.connects:
        print(f"mTLS connects ({args.concurrency} concurrent, {args.rounds} alternating rounds):")
        for r in (plugin_r, bare_r):
            print(
                f"  {r.name:6s} {r.connects:6d} ok {r.failed:3d} failed  {r.rate:8.1f} connects/s"
                f" (median of rounds)"
                f"  broker CPU {r.cpu_us:7.0f} us/connect"
            )
        verdict = "ok" if max(cpu_overhead, rate_overhead) <= OVERHEAD_TARGET else "OVER TARGET"
        print(
            f"  plugin overhead: broker CPU/connect {cpu_overhead:+.1%}, "
            f"connects/s {rate_overhead:+.1%}"
            f"  (target <= {OVERHEAD_TARGET:.0%}: {verdict})"
        )
    print(f"revoke -> disconnect, {revocations} revocations timed per size, one run:")
    for r in rounds:
        if not r.latencies:
            print(f"  {r.connected:6d} connected: no revocation completed")
            continue
        p50, p99 = percentile(r.latencies, 0.50), percentile(r.latencies, 0.99)
        verdict = "ok" if p99 <= P99_TARGET_MS else "OVER TARGET"
        print(
            f"  {r.connected:6d} connected: p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   "
            f"max {max(r.latencies):6.1f} ms   mean {statistics.fmean(r.latencies):6.1f} ms"
            f"   (target p99 <= {P99_TARGET_MS:.0f} ms: {verdict})"
            f"   broker CPU {r.broker_cpu_ms:.2f} ms/revocation"
            f"   client full GCs {r.gc_pause_ms:.0f} ms"
        )
    if len(rounds) > 1 and rounds[0].latencies and rounds[-1].latencies:
        growth = percentile(rounds[-1].latencies, 0.99) / percentile(rounds[0].latencies, 0.99)
        print(
            f"  p99 at {rounds[-1].connected} / p99 at {rounds[0].connected} connected: "
            f"{growth:.2f}x (1.0x = a kick's cost does not depend on how many are connected)"
        )
    failed = plugin_r.failed + bare_r.failed + revoke_failed
    if failed:
        print(f"FAILED: {failed} connect(s) or revocation(s) did not complete")
    return 1 if failed else 0


def _sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("positive device counts, comma-separated")
    return sizes


def _mosquitto_version() -> str:
    try:
        out = subprocess.run(
            ["/usr/sbin/mosquitto", "-h"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except OSError:
        return "mosquitto ?"
    match = re.search(r"mosquitto version (\S+)", out)
    return f"mosquitto {match.group(1)}" if match else "mosquitto ?"


if __name__ == "__main__":
    sys.exit(main())
