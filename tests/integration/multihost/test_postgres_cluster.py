"""The scale-out cluster on PostgreSQL: fleet itself through a promotion of the standby.

The hosts of tests/support/cluster.py with the store role on PostgreSQL: a
primary and a synchronous standby (tests/support/postgres_replication.py),
the schema applied by ``fleet db upgrade``, both fleet nodes and both broker
sidecars on one URL naming both servers (``target_session_attrs=read-write``).

The failover test revokes devices one by one through node A's admin API
while the primary's postmaster is killed (kill -9) and the standby promoted;
a revocation counts only once node A answered 200. Afterwards every counted
revocation is in the store as node B reads it (admin API and /crl): 0 lost.
The fleet nodes keep their PIDs (never restarted): they serve revocations
and enrollments again by themselves, and the broker sidecars, following the
feed on the new primary, kick a device revoked after the promotion.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.cluster import Cluster, build_cluster, enroll
from tests.support.cluster_checks import (
    admin_token,
    api_device_state,
    api_revoke,
    check_revoke_on_a_kicks_and_b_answers,
    crl,
    mqtt,
    wait_until,
)
from tests.support.netns import network

pytestmark = [
    pytest.mark.needs_binary("ip"),
    pytest.mark.needs_binary("haproxy"),
    pytest.mark.needs_binary("postgres"),
    pytest.mark.needs_binary("mosquitto"),
    pytest.mark.needs_binary("gcc"),
]

FAILOVER_DEVICES = 24
# From `pg_ctl promote` returning to node A's next acknowledged revocation: the
# store's pool finds the new primary by itself (psycopg_pool backs off 1, 2, 4 s).
RESUMED_WITHIN = 20.0
CAUGHT_UP_WITHIN = 10.0  # node B and the brokers, once node A writes again


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with network() as net:
        yield build_cluster(net, tmp_path_factory.mktemp("pgcluster"), engine="postgresql")


def test_on_postgresql_revoke_on_a_kick_anywhere_b_answers_revoked(cluster: Cluster) -> None:
    check_revoke_on_a_kicks_and_b_answers(cluster, ["pg-kick-1", "pg-kick-2"])


class Revoker:
    """Revokes ``names`` one by one through node A's admin API; ``acknowledged`` holds
    those node A answered 200 for. A refused or unanswered call is in doubt: never
    counted, retried after a short pause."""

    def __init__(self, cluster: Cluster, token: str, names: list[str]) -> None:
        self.cluster = cluster
        self.token = token
        self.pending = list(names)
        self.acknowledged: list[str] = []
        self.refused = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return len(self.acknowledged), self.refused

    def run(self) -> None:
        while self.pending and not self.stop.is_set():
            status = api_revoke(self.cluster, "fleet-a", self.token, self.pending[0])
            with self.lock:
                if status == 200:
                    self.acknowledged.append(self.pending.pop(0))
                else:
                    self.refused += 1
            time.sleep(0.05 if status == 200 else 0.2)


def test_promoting_the_standby_during_revocations_loses_none_and_nodes_reconnect(
    cluster: Cluster,
) -> None:
    pair = cluster.store.postgres
    assert pair is not None
    pids = {name: node.proc.pid for name, node in cluster.nodes.items() if node.proc}
    token = admin_token(cluster)
    names = [f"failover-{i:02d}" for i in range(FAILOVER_DEVICES)]
    boots = cluster.add_devices(names)
    with ThreadPoolExecutor(4) as pool:
        devices = {d.device_id: d for d in pool.map(lambda n: enroll(cluster, n, boots[n]), names)}

    revoker = Revoker(cluster, token, names)
    thread = threading.Thread(target=revoker.run)
    thread.start()
    try:
        wait_until(lambda: revoker.counts()[0] >= 4, 30, "4 revocations before the failover")
        killed_pid = pair.kill_primary()
        at_kill = revoker.counts()
        # Node A refuses revocations while there is no primary (not acknowledged).
        wait_until(lambda: revoker.counts()[1] > at_kill[1], 15, "a refusal without a primary")
        at_promote = revoker.counts()
        promoted = time.monotonic()
        pair.promote()
        wait_until(
            lambda: revoker.counts()[0] > at_promote[0],
            RESUMED_WITHIN,
            "node A acknowledging a revocation on the promoted standby",
        )
        resumed = time.monotonic() - promoted
        wait_until(lambda: not thread.is_alive(), 30, "every revocation acknowledged")
    finally:
        revoker.stop.set()
        thread.join(30)

    acknowledged = list(revoker.acknowledged)
    # The nodes were never restarted: same processes, still running.
    for name, node in cluster.nodes.items():
        assert node.proc is not None
        assert node.proc.poll() is None, f"{name} died"
        assert node.proc.pid == pids[name], f"{name} was restarted"

    # Every acknowledged revocation is in the store, as node B reads it.
    def b_caught_up() -> bool:
        revoked = crl(cluster, "fleet-b")
        return all(
            revoked.get_revoked_certificate_by_serial_number(devices[n].serial) is not None
            for n in acknowledged
        )

    crl_took = wait_until(b_caught_up, CAUGHT_UP_WITHIN, "node B's CRL to list every revocation")
    states = {n: api_device_state(cluster, "fleet-b", token, n) for n in acknowledged}
    revoked_crl = crl(cluster, "fleet-b")
    lost = [
        n
        for n in acknowledged
        if states[n] != "revoked"
        or revoked_crl.get_revoked_certificate_by_serial_number(devices[n].serial) is None
    ]

    # Enrollment through the balancer works again, and a device revoked now is
    # kicked: the broker sidecars follow the feed on the new primary.
    started = time.monotonic()
    late = enroll(
        cluster, "after-failover", cluster.add_devices(["after-failover"])["after-failover"]
    )
    enrolled_took = time.monotonic() - started
    session = mqtt(cluster, late)
    try:
        asked = time.monotonic()
        assert api_revoke(cluster, "fleet-a", token, late.device_id) == 200
        assert session.disconnected.wait(CAUGHT_UP_WITHIN), "not kicked after the promotion"
        kicked = session.disconnected_at - asked
    finally:
        session.close()

    print(
        f"{len(acknowledged)} revocations acknowledged by node A ({at_kill[0]} before kill -9 "
        f"of the primary's postmaster, PID {killed_pid}; {at_promote[0] - at_kill[0]} between "
        f"the kill and the promotion); {revoker.refused} calls refused or unanswered; "
        f"{len(lost)} lost. Node A acknowledged again {resumed:.1f} s after `pg_ctl promote` "
        f"began; node B's CRL listed them all {crl_took:.2f} s after the last; an enrollment "
        f"through the balancer took {enrolled_took:.2f} s; a device revoked on node A was "
        f"kicked {kicked:.3f} s later. Fleet nodes never restarted (PIDs {sorted(pids.values())})."
    )
    assert lost == []
