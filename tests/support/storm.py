"""An enrollment storm through the balancer with a fleet node killed (kill -9) in it.

Each device is a thread on the device host running the device agent's EST
client; a transient error (the node died under it, the balancer had nowhere to
send it) is retried after a short jittered pause, through the balancer again,
with the same key (as the agent does: an unfinished enrollment keeps its key),
so a reply lost after the record is answered again, not held as a clone.
``check_storm`` then proves that no acknowledged certificate was lost: every
certificate a device received is in the store, good, and signed by the
issuing CA.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from device_agent.errors import Pending, Transient
from fleet.records import CertificateRecord, CertificateStatus
from fleet.store.protocol import Store
from tests.support.cluster import Cluster, Enrolled, enroll
from tests.support.fleet_server import run_store


@dataclasses.dataclass
class Storm:
    devices: int
    received: dict[str, Enrolled] = dataclasses.field(default_factory=dict)
    retried: set[str] = dataclasses.field(default_factory=set)
    # Held for an admin (a bootstrap reuse). Should stay empty: when node A recorded
    # the certificate and died before the reply, the retry with the same key gets
    # that certificate again.
    held: set[str] = dataclasses.field(default_factory=set)
    before_kill: int = 0
    killed_after: float = 0.0  # seconds into the storm
    seconds: float = 0.0


def run_storm(
    cluster: Cluster,
    boots: dict[str, tuple[Path, Path]],
    *,
    kill: str = "fleet-a",
    kill_after: int,
    threads: int,
    seed: int,
    give_up: float = 120,
) -> Storm:
    """Enroll the devices of ``boots`` (name -> bootstrap cert and key, in the manifest
    already) with ``threads`` at once; kill -9 node ``kill`` once ``kill_after`` devices
    have finished."""
    storm = Storm(len(boots))
    lock = threading.Lock()
    finished = threading.Semaphore(0)
    rng = random.Random(seed)

    def device(name: str) -> None:
        deadline = time.monotonic() + give_up
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            while True:
                try:
                    got = enroll(cluster, name, boots[name], key)
                except Transient:
                    if time.monotonic() > deadline:
                        raise
                    with lock:
                        storm.retried.add(name)
                        pause = 0.1 + rng.random() * 0.2
                    time.sleep(pause)
                    continue
                except Pending:
                    with lock:
                        storm.held.add(name)
                    return
                with lock:
                    storm.received[name] = got
                return
        finally:
            finished.release()

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(device, name) for name in boots]
        for _ in range(kill_after):
            if not finished.acquire(timeout=give_up):
                raise AssertionError("the storm stalled before the kill")
        cluster.nodes[kill].kill()
        storm.killed_after = time.monotonic() - started
        storm.before_kill = len(storm.received)
        for future in futures:
            future.result()
    storm.seconds = time.monotonic() - started
    return storm


def check_storm(cluster: Cluster, storm: Storm, names: list[str], *, via: str) -> None:
    """Every certificate a device received is in the store (read on node ``via``), good,
    and signed by the issuing CA; every held device has a certificate on record."""
    issuing = x509.load_pem_x509_certificate(cluster.issuing_pem.read_bytes())
    node = cluster.nodes[via]

    async def records(store: Store) -> dict[str, list[CertificateRecord]]:
        return {name: await store.list_certificates(name) for name in names}

    stored = node.host.call(lambda: run_store(node.config, records, node.env))
    for name, got in storm.received.items():
        cert = x509.load_pem_x509_certificate(got.cert.read_bytes())
        cert.verify_directly_issued_by(issuing)
        matching = [r for r in stored[name] if r.serial == got.serial]
        assert matching, f"{name}'s certificate {got.serial:x} is not in the store"
        assert matching[0].status is CertificateStatus.GOOD
        assert x509.load_pem_x509_certificate(matching[0].pem.encode()) == cert
    for name in storm.held:
        assert stored[name], f"{name} is held but no certificate was ever recorded for it"
