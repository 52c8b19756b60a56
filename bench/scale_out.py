"""Scale out on real hosts: enrollments/s and CPU per enrollment with 1 and 2 fleet nodes
per store engine, and revoke -> kick latency with many devices over 2 broker nodes.

The multi-host cluster of tests/support/cluster.py (network namespaces, needs
root): HAProxy with docs/haproxy/fleet.cfg in front of two `fleet serve`
nodes and two Mosquitto nodes (plugin + sidecar), the store on its own host.
One cluster per engine, one after the other:

  sqlite      one file on the machine's disk: 1 node only (a SQLite file is
              not shared between hosts)
  redis       redis-server persisting every write (appendonly yes,
              appendfsync always)
  postgresql  a primary and a synchronous standby (`fleet db upgrade` first);
              skipped with the reason where fleet cannot open it yet

enroll      ``--enrollments`` first enrollments (the device agent's EST
            client, ``--threads`` at once over ``--client-processes`` forked
            processes, from the device host) through the balancer, with node
            B stopped (1 node), then again with node B back and marked up by
            HAProxy (2 nodes). Reported: enrollments/s (wall), CPU per
            enrollment of the `fleet serve` processes (utime+stime from /proc
            of each node's process tree) and of the store's server
            processes, separately.
kick        on ``--kick-engine``'s cluster: ``--devices`` enrolled devices hold
            an MQTT session, half on broker node A and half on node B (each
            connected straight to its node: the balancer's maxconn stays
            that of docs/haproxy/fleet.cfg); each broker's RLIMIT_NOFILE is
            raised with prlimit. ``--revocations`` of them are revoked one by
            one through the store, as `fleet device revoke` does, alternating
            nodes, timed from the store's acknowledgement to the moment the
            device's TCP connection is closed by its broker. The devices'
            side is one asyncio process (this one) on the device host.

    .venv/bin/python bench/scale_out.py                                # all engines, 10,000 devices
    .venv/bin/python bench/scale_out.py --devices 2000 --enrollments 300
    .venv/bin/python bench/scale_out.py --engines redis --devices 20 --enrollments 10

Targets (issue 14): revoke -> kick p99 <= 100 ms with the devices spread over 2
broker nodes (a verdict line). Enrollment figures are printed side by side,
not judged. Asserts no timing; exits 1 if an enrollment or a revocation
failed, 2 if the cluster cannot be built here (not root, no `ip netns`).
"""

# ruff: noqa: E402 -- the repository root goes on sys.path before the project imports

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import multiprocessing
import os
import platform
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.support when run as bench/scale_out.py

# RevocationReason as broker_revoke imports it: the domain model's module moves
# (fleet.store.records -> fleet.records on main) and this follows it.
from broker_revoke import (
    P99_TARGET_MS,
    Device,
    RevocationReason,
    cpu_seconds,
    mqtt_connect,
    percentile,
)

from device_agent.errors import Transient
from fleet.store.factory import open_store
from tests.support.cluster import MQTT_PORT, STORE_ENGINES, Cluster, build_cluster, enroll
from tests.support.netns import network
from tests.support.process import stop_process

ENGINES = ("sqlite", "redis", "postgresql")
ONE_NODE_ONLY = {"sqlite"}


# -- CPU of process trees -------------------------------------------------------------


def tree_cpu(pids: list[int]) -> float:
    """utime+stime (s) of ``pids`` and every live descendant (workers, PostgreSQL backends)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    total, todo, seen = 0.0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            total += cpu_seconds(pid)
        except (OSError, ValueError):
            continue  # exited meanwhile
        todo.extend(parents.get(pid, []))
    return total


def fleet_pids(cluster: Cluster) -> list[int]:
    return [
        n.proc.pid for n in cluster.nodes.values() if n.proc is not None and n.proc.poll() is None
    ]


def store_pids(cluster: Cluster) -> list[int]:
    """The store's server processes (primary and standby hosts); none for SQLite."""
    hosts = [h for name, h in cluster.net.hosts.items() if name.startswith("store")]
    return [p.pid for h in hosts for p in h.procs if p.poll() is None]


# -- enrollment ------------------------------------------------------------------------


@dataclasses.dataclass
class EnrollFigures:
    engine: str
    nodes: int
    enrolled: int
    failed: int
    retried: int
    seconds: float
    fleet_cpu: float
    store_cpu: float | None

    @property
    def rate(self) -> float:
        return self.enrolled / self.seconds if self.seconds else 0.0

    def per_enrollment_ms(self, cpu: float) -> float:
        return 1000 * cpu / self.enrolled if self.enrolled else float("nan")


def enroll_all(
    cluster: Cluster, boots: dict[str, tuple[Path, Path]], threads: int
) -> tuple[int, int, int]:
    """Enroll ``boots`` through the balancer: (enrolled, failed, retried after a
    transient error such as a connection the balancer sent to a stopped node)."""
    lock = threading.Lock()
    counts = {"ok": 0, "failed": 0, "retried": 0}

    def one(name: str) -> None:
        for _attempt in range(5):
            try:
                enroll(cluster, name, boots[name])
            except Transient:
                with lock:
                    counts["retried"] += 1
                time.sleep(0.1)
                continue
            except Exception as error:  # counted and shown: a figure, not a crash
                print(f"  enrollment of {name} failed: {error}", flush=True)
                break
            with lock:
                counts["ok"] += 1
            return
        with lock:
            counts["failed"] += 1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, boots))
    return counts["ok"], counts["failed"], counts["retried"]


_FORKED: Cluster | None = None  # the cluster, inherited by forked client processes


def _enroll_chunk(job: tuple[dict[str, tuple[Path, Path]], int]) -> tuple[int, int, int]:
    assert _FORKED is not None
    return enroll_all(_FORKED, *job)


def enroll_in_processes(
    cluster: Cluster, boots: dict[str, tuple[Path, Path]], threads: int, processes: int
) -> tuple[int, int, int]:
    """``enroll_all`` split over ``processes`` forked client processes (one Python process
    is GIL-bound well below what the nodes serve), ``threads`` devices at once in all."""
    global _FORKED
    if processes <= 1:
        return enroll_all(cluster, boots, threads)
    _FORKED = cluster
    names = list(boots)
    jobs = [
        ({n: boots[n] for n in names[i::processes]}, max(1, threads // processes))
        for i in range(processes)
    ]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        results = pool.map(_enroll_chunk, jobs)
    return (
        sum(r[0] for r in results),
        sum(r[1] for r in results),
        sum(r[2] for r in results),
    )


def measure_enrollments(
    cluster: Cluster,
    engine: str,
    nodes: int,
    boots: dict[str, tuple[Path, Path]],
    threads: int,
    processes: int,
) -> EnrollFigures:
    fleet, store = fleet_pids(cluster), store_pids(cluster)
    fleet_before, store_before = tree_cpu(fleet), tree_cpu(store)
    started = time.perf_counter()
    enrolled, failed, retried = enroll_in_processes(cluster, boots, threads, processes)
    seconds = time.perf_counter() - started
    return EnrollFigures(
        engine,
        nodes,
        enrolled,
        failed,
        retried,
        seconds,
        tree_cpu(fleet) - fleet_before,
        tree_cpu(store) - store_before if store else None,
    )


def balancer_says(cluster: Cluster, text: str, count: int, timeout: float = 30) -> None:
    """Wait until HAProxy's log holds ``text`` ``count`` times (a server marked up/down)."""
    deadline = time.monotonic() + timeout
    while cluster.balancer_log.read_text(errors="replace").count(text) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"HAProxy never said {text!r} ({count}x)")
        time.sleep(0.1)


def stop_node_b(cluster: Cluster) -> None:
    node = cluster.nodes["fleet-b"]
    assert node.proc is not None
    stop_process(node.proc, grace=5)
    node.proc = None
    balancer_says(cluster, "fleet_nodes/fleet-b is DOWN", 1)


def start_node_b(cluster: Cluster) -> None:
    cluster.nodes["fleet-b"].start()
    balancer_says(cluster, "fleet_nodes/fleet-b is UP", 1)


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
        context = ssl.create_default_context(cafile=str(cluster.root_pem))
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        context.load_cert_chain(cert, key)
        devices.append(Device(name, cert, key, context))
    return devices


async def kick_latency(
    cluster: Cluster, devices: list[Device], victims: list[Device], nofile: int
) -> KickFigures:
    """Runs on the device host: every device connected (alternating broker nodes), then
    each victim revoked through the store and its close timed."""
    brokers = list(cluster.brokers.values())
    home = {d.device_id: brokers[i % 2] for i, d in enumerate(devices)}
    closed: dict[str, float] = {}
    events = {d.device_id: asyncio.Event() for d in devices}
    watchers: list[asyncio.Task[None]] = []
    semaphore = asyncio.Semaphore(50)

    async def hold(device: Device) -> bool:
        async with semaphore:
            streams = await mqtt_connect(MQTT_PORT, device, home[device.device_id].host.address)
        if streams is None:
            return False
        reader, writer = streams

        async def watch() -> None:
            try:
                while await reader.read(4096):
                    pass
            except (OSError, ssl.SSLError):
                pass
            closed[device.device_id] = time.perf_counter()
            events[device.device_id].set()
            writer.close()

        watchers.append(asyncio.get_running_loop().create_task(watch()))
        return True

    started = time.perf_counter()
    held = await asyncio.gather(*(hold(d) for d in devices))
    connect_seconds = time.perf_counter() - started
    if not all(held):
        raise RuntimeError(f"{held.count(False)} of {len(devices)} devices could not connect")
    print(f"  {len(devices)} devices connected in {connect_seconds:.1f} s", flush=True)
    await asyncio.sleep(1)  # let the brokers' connect work settle before timing kicks
    brokers_pids = [b.broker.pid for b in brokers if b.broker is not None]
    store = await open_store(cluster.store_url)
    latencies: dict[str, list[float]] = {b.host.name: [] for b in brokers}
    ack_ms: list[float] = []
    failed = 0
    cpu_before = sum(cpu_seconds(pid) for pid in brokers_pids)
    try:
        for device in victims:
            await asyncio.sleep(0.1)  # let the CRL refresh of the previous one settle
            asked = time.perf_counter()
            await store.revoke_device(
                device.device_id, RevocationReason.KEY_COMPROMISE, dt.datetime.now(dt.UTC)
            )
            acked = time.perf_counter()
            ack_ms.append(1000 * (acked - asked))
            try:
                await asyncio.wait_for(events[device.device_id].wait(), 5)
            except TimeoutError:
                failed += 1
                continue
            node = home[device.device_id].host.name
            latencies[node].append(1000 * (closed[device.device_id] - acked))
        cpu = sum(cpu_seconds(pid) for pid in brokers_pids) - cpu_before
    finally:
        await store.close()
    revoked = {d.device_id for d in victims}
    dropped = sum(e.is_set() for name, e in events.items() if name not in revoked)
    for task in watchers:
        task.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    return KickFigures(
        len(devices),
        nofile,
        latencies,
        ack_ms,
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


# -- one engine's cluster -------------------------------------------------------------------


@dataclasses.dataclass
class EngineRun:
    engine: str
    skipped: str = ""
    enroll: list[EnrollFigures] = dataclasses.field(default_factory=list)
    kick: KickFigures | None = None


def run_engine(engine: str, args: argparse.Namespace, kick: bool) -> EngineRun:
    run = EngineRun(engine)
    print(f"{engine}:", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"fleet-scale-{engine}-") as tmp, network() as net:
        try:
            cluster = build_cluster(net, Path(tmp), engine=engine, workers=args.workers)
        except Exception as error:  # the engine cannot start here: say why, go on
            run.skipped = _reason(error)
            print(f"  skipped: {run.skipped}", flush=True)
            return run
        phases = 1 if engine in ONE_NODE_ONLY else 2
        names = [f"{engine}-{i:05d}" for i in range(args.enrollments * (phases + 1))]
        kick_names = [f"kick-{i:05d}" for i in range(args.devices)] if kick else []
        boots = cluster.add_devices(names + kick_names)
        warmup, *batches = [names[i :: phases + 1] for i in range(phases + 1)]
        stop_node_b(cluster)
        enroll_all(cluster, {n: boots[n] for n in warmup}, args.threads)  # warm-up, not timed
        for nodes, batch in enumerate(batches, start=1):
            if nodes == 2:
                start_node_b(cluster)
            figures = measure_enrollments(
                cluster,
                engine,
                nodes,
                {n: boots[n] for n in batch},
                args.threads,
                args.client_processes,
            )
            run.enroll.append(figures)
            print(f"  {_enroll_line(figures)}", flush=True)
        if kick:  # on the nodes of the last row
            run.kick = measure_kicks(
                cluster, {n: boots[n] for n in kick_names}, args.revocations, args.threads
            )
    return run


def _reason(error: Exception) -> str:
    """The first line of an error, and the last line of the log it carries (if any)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


# -- report -----------------------------------------------------------------------------------


def _enroll_line(f: EnrollFigures) -> str:
    store = (
        f"{f.per_enrollment_ms(f.store_cpu):5.2f} ms" if f.store_cpu is not None else "in-process"
    )
    return (
        f"{f.engine:10s} {f.nodes} node(s): {f.enrolled:5d} enrolled in {f.seconds:6.1f} s"
        f" = {f.rate:6.1f} enrollments/s   fleet CPU {f.per_enrollment_ms(f.fleet_cpu):5.2f}"
        f" ms/enrollment   store CPU {store}/enrollment"
        f"   (failed {f.failed}, retried {f.retried})"
    )


def report(runs: list[EngineRun], args: argparse.Namespace) -> int:
    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), load average "
        f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}; devices, balancer,"
        f" fleet nodes, brokers and store all share this machine"
    )
    print(
        f"enrollments through HAProxy ({args.enrollments} per row, {args.threads} at once from"
        f" {args.client_processes} client process(es),"
        f" `fleet serve --workers {args.workers}` per node):"
    )
    failed = 0
    for run in runs:
        if run.skipped:
            print(f"  {run.engine:10s} skipped: {run.skipped}")
        for figures in run.enroll:
            print(f"  {_enroll_line(figures)}")
            failed += figures.failed
    by_key = {(f.engine, f.nodes): f for run in runs for f in run.enroll}
    for engine in ENGINES:
        one, two = by_key.get((engine, 1)), by_key.get((engine, 2))
        if one and two and one.rate:
            print(f"  {engine}: 2 nodes / 1 node = {two.rate / one.rate:.2f}x enrollments/s")
    for run in runs:
        kick = run.kick
        if kick is None:
            continue
        every = [ms for values in kick.latencies.values() for ms in values]
        print(
            f"revoke -> kick on {run.engine}, {kick.connected} devices connected over 2 broker"
            f" nodes (RLIMIT_NOFILE {kick.nofile} each), timed from the store's acknowledgement:"
        )
        for node, values in kick.latencies.items():
            if values:
                print(
                    f"  {node}: {len(values):4d} kicks  p50 {percentile(values, 0.5):6.1f} ms"
                    f"   p99 {percentile(values, 0.99):6.1f} ms   max {max(values):6.1f} ms"
                )
        if kick.ack_ms:
            print(
                f"  store acknowledgement of a revocation: p50 {percentile(kick.ack_ms, 0.5):.1f}"
                f" ms, p99 {percentile(kick.ack_ms, 0.99):.1f} ms"
            )
        print(
            f"  broker CPU {kick.broker_cpu_ms:.2f} ms/revocation (both nodes); bystanders"
            f" dropped {kick.bystanders_dropped}; kicks not seen within 5 s {kick.failed}"
        )
        failed += kick.failed
        if every:
            p50, p99 = percentile(every, 0.5), percentile(every, 0.99)
            verdict = "MET" if p99 <= P99_TARGET_MS and not kick.failed else "NOT MET"
            print(
                f"target: revoke -> kick p99 <= {P99_TARGET_MS:.0f} ms with {kick.connected}"
                f" devices over 2 broker nodes: p50 {p50:.1f} ms, p99 {p99:.1f} ms,"
                f" mean {statistics.fmean(every):.1f} ms ({verdict})"
            )
        else:
            print("target: revoke -> kick: no kick completed (NOT MET)")
    if args.json:
        args.json.write_text(
            json.dumps([dataclasses.asdict(run) for run in runs], indent=2, default=str)
        )
    if failed:
        print(f"FAILED: {failed} enrollment(s) or revocation(s) did not complete")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help=f"store engines, comma-separated, in order (default {','.join(ENGINES)})",
    )
    parser.add_argument("--enrollments", type=int, default=500, help="enrollments per row")
    parser.add_argument("--threads", type=int, default=16, help="devices enrolling at once")
    parser.add_argument("--workers", type=int, default=1, help="fleet serve --workers per node")
    parser.add_argument(
        "--client-processes",
        type=int,
        default=2,
        help="device client processes for the timed enrollments (default 2)",
    )
    parser.add_argument("--devices", type=int, default=10_000, help="devices connected (kick)")
    parser.add_argument("--revocations", type=int, default=100, help="revocations timed")
    parser.add_argument(
        "--kick-engine", default="redis", help="the engine whose cluster runs the kick ('none')"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in STORE_ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {unknown}; known: {', '.join(STORE_ENGINES)}")
    if args.kick_engine != "none" and args.kick_engine not in engines:
        parser.error(f"--kick-engine {args.kick_engine} is not in --engines")
    args.revocations = min(args.revocations, args.devices)
    # This process holds every device's session: its own descriptor limit first.
    need = args.devices + 4096
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
    runs = [run_engine(engine, args, kick=engine == args.kick_engine) for engine in engines]
    return report(runs, args)


if __name__ == "__main__":
    import pytest

    try:
        sys.exit(main())
    except pytest.skip.Exception as skipped:  # not root, no `ip netns`: say why
        print(f"cannot run: {skipped.msg}", file=sys.stderr)
        sys.exit(2)
