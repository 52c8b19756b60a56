"""Several fleet and broker nodes as real hosts (network namespaces), behind HAProxy.

The picture is tests/support/cluster.py's (and the README's "Scale out"): devices
reach everything through the balancer with TLS end to end; the two fleet
nodes and the two broker sidecars share one store (Redis). CRL numbers come
from the store's counter, so they never go back across nodes, and a device
on two broker nodes ends with one session. The same cluster on PostgreSQL,
through a promotion of its standby, is test_postgres_cluster.py.
The kill -9 test runs last: it takes node A down for good.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time

import pytest

from tests.support.cluster import Cluster, enroll, wait_log
from tests.support.cluster_checks import (
    check_revoke_on_a_kicks_and_b_answers,
    crl,
    crl_number,
    mqtt,
    revoke_in_store,
)
from tests.support.storm import check_storm, run_storm

pytestmark = [
    pytest.mark.needs_binary("ip"),
    pytest.mark.needs_binary("haproxy"),
    pytest.mark.needs_binary("redis-server"),
    pytest.mark.needs_binary("mosquitto"),
    pytest.mark.needs_binary("gcc"),
]

SEED = int(os.environ.get("FLEET_TEST_SEED", random.randrange(1 << 30)))


def test_enroll_through_the_balancer_revoke_on_a_kick_anywhere_b_answers_revoked(
    cluster: Cluster,
) -> None:
    check_revoke_on_a_kicks_and_b_answers(cluster, ["kick-1", "kick-2"])


def test_crl_numbers_never_go_back_for_a_client_alternating_nodes(cluster: Cluster) -> None:
    names = [f"crl-{i}" for i in range(8)]
    cluster.add_devices(names)
    seen: list[tuple[str, int]] = []
    stop = threading.Event()

    def revoke_all() -> None:
        for name in names:
            revoke_in_store(cluster, name)
            time.sleep(0.05)
        stop.set()

    revoker = threading.Thread(target=revoke_all)
    revoker.start()
    try:
        while not stop.is_set() or len(seen) < 20:
            for node in ("fleet-a", "fleet-b"):
                seen.append((node, crl_number(crl(cluster, node))))
    finally:
        revoker.join()
    backwards = [(a, b) for a, b in itertools.pairwise(seen) if b[1] < a[1]]
    print(f"{len(seen)} CRLs fetched, {len(backwards)} steps back, e.g. {backwards[:3]}")
    assert not backwards
    # Nothing revoked any more: the nodes settle on one CRL (a background signing
    # under way may add a number), then serve it in turn. Before, each found the
    # other's number higher and signed a new one on every request.
    deadline = time.monotonic() + 10
    while crl_number(crl(cluster, "fleet-a")) != crl_number(crl(cluster, "fleet-b")):
        assert time.monotonic() < deadline, "the nodes never settled on one CRL"
    settled = [crl_number(crl(cluster, node)) for node in ("fleet-a", "fleet-b") * 4]
    assert len(set(settled)) == 1, f"signed again with nothing new: {settled}"


def test_a_device_connecting_to_broker_b_while_on_broker_a_ends_with_one_session(
    cluster: Cluster,
) -> None:
    boots = cluster.add_devices(["twice-1"])
    device = enroll(cluster, "twice-1", boots["twice-1"])
    on_a = mqtt(cluster, device, cluster.brokers["broker-a"].host.address)
    on_b = mqtt(cluster, device, cluster.brokers["broker-b"].host.address)
    try:
        # MQTT: a new connection with a client id in use closes the older session.
        assert on_a.disconnected.wait(3), "the older session on broker A is still open"
        assert not on_b.disconnected.is_set(), "the newer session on broker B was closed"
    finally:
        on_a.close()
        on_b.close()


# -- kill -9 a fleet node during an enrollment storm -------------------------------------

STORM_DEVICES = int(os.environ.get("FLEET_STORM_DEVICES", "120"))  # bench: 1,000


def test_kill_a_fleet_node_during_an_enrollment_storm_loses_no_acknowledged_certificate(
    cluster: Cluster,
) -> None:
    print(f"seed {SEED} (FLEET_TEST_SEED), {STORM_DEVICES} devices")
    names = [f"storm-{i:04d}" for i in range(STORM_DEVICES)]
    random.Random(SEED).shuffle(names)
    boots = cluster.add_devices(names)  # shuffled: the order they storm in
    storm = run_storm(cluster, boots, kill_after=STORM_DEVICES // 3, threads=12, seed=SEED)
    print(
        f"{storm.before_kill} enrolled before kill -9 of node A; then "
        f"{len(storm.received) - storm.before_kill} more through node B; "
        f"{len(storm.retried)} retried after an error; {len(storm.held)} held for approval"
    )
    # A device whose reply died with node A retried with the same key and got the
    # recorded certificate again: nobody is left waiting for an admin.
    assert not storm.held, f"held for approval after a lost reply: {sorted(storm.held)}"
    assert len(storm.received) == STORM_DEVICES
    assert storm.retried, "no device saw node A die: the kill came too late to test anything"
    assert storm.retried & set(storm.received), "no device retried onto node B"
    # The balancer's health check took node A out (so new devices stop trying it).
    wait_log(cluster.balancer_log, "fleet_nodes/fleet-a is DOWN", None, timeout=5)
    check_storm(cluster, storm, names, via="fleet-b")
