"""scale_out.py's enrollment rows: devices enrolling through the balancer, CPU per
enrollment of the fleet nodes' and the store's process trees, node B stopped
and started under HAProxy's health checks."""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from broker_revoke import cpu_seconds

from device_agent.errors import Transient
from tests.support.cluster import Cluster, enroll
from tests.support.process import stop_process

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
