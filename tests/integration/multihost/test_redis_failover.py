"""A Sentinel failover of a Redis store drops acknowledged revocations; WAIT prevents it.

Redis replicates asynchronously, and the primary acknowledges a write before
any replica has it: even with ``appendonly yes`` + ``appendfsync always`` on
every node (durable against a restart), a failover can promote a replica that
never saw an acknowledged revocation, which silently re-admits a compromised
device. The test makes the loss deterministic instead of waiting for an
unlucky moment: the replica is cut off the network, revocations are made and
acknowledged by fleet's Redis store on the primary, then the primary's machine
is lost and Sentinel promotes the replica. Every one of those revocations is
gone.

The guard (a write is acknowledged only when ``WAIT 1`` says a replica has
it; ``store.redis.min_replicas`` in fleet's Redis store) is shown on the same
failover with the Redis protocol: while the replica is cut off, WAIT reports
0 replicas, so nothing is acknowledged, and every write it did acknowledge is
on the promoted replica.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from fleet.records import DeviceState, ManifestEntry, RevocationReason
from fleet.store.factory import open_store
from fleet.store.protocol import Store
from tests.support.netns import Host, network
from tests.support.redis_sentinel import ReplicatedRedis, start_replicated_redis

pytestmark = [
    pytest.mark.needs_binary("ip"),
    pytest.mark.needs_binary("redis-server"),
    pytest.mark.needs_binary("redis-sentinel"),
]

T = TypeVar("T")
REVOCATIONS = 5
GUARD_TIMEOUT_MS = 300


def _on_store(client: Host, url: str, action: Callable[[Store], Awaitable[T]]) -> T:
    async def body() -> T:
        store = await open_store(url)
        try:
            return await action(store)
        finally:
            await store.close()

    return client.call(lambda: asyncio.run(body()))


def _wait(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.1)


def _guarded_write(redis_set: ReplicatedRedis, key: str) -> bool:
    """SET then WAIT 1: True when acknowledged (a replica has it), as the guard does."""
    conn = redis_set.client(redis_set.primary)
    try:
        conn.set(key, "revoked")
        return int(conn.execute_command("WAIT", 1, GUARD_TIMEOUT_MS)) >= 1
    finally:
        conn.close()


def test_sentinel_failover_loses_acknowledged_revocations_unless_writes_wait_for_a_replica(
    tmp_path: Path,
) -> None:
    with network() as net:
        fleet_node = net.add_host("fleet-a", 11)
        redis_set = start_replicated_redis(net, tmp_path)
        primary_url = redis_set.url(redis_set.primary)
        names = [f"victim-{i}" for i in range(2 * REVOCATIONS)]
        now = dt.datetime.now(dt.UTC)
        entries = [ManifestEntry(name, f"{i:064x}", "m1", "b1") for i, name in enumerate(names)]
        _on_store(fleet_node, primary_url, lambda s: s.import_manifest(entries, now))
        started = time.monotonic()
        _wait(lambda: redis_set.ready(fleet_node), 30, "sentinels to see the replica and peers")
        print(f"replica and sentinels ready in {time.monotonic() - started:.1f} s")

        # Before the partition: revocations acknowledged and replicated.
        early, late = names[:REVOCATIONS], names[REVOCATIONS:]
        for name in early:
            _on_store(
                fleet_node,
                primary_url,
                lambda s, n=name: s.revoke_device(n, RevocationReason.KEY_COMPROMISE, now),
            )
        guarded_before = [
            key
            for key in (f"guard:before:{i}" for i in range(REVOCATIONS))
            if fleet_node.call(lambda k=key: _guarded_write(redis_set, k))
        ]
        assert len(guarded_before) == REVOCATIONS, "WAIT 1 refused with the replica connected"
        _wait(lambda: redis_set.replica_caught_up(fleet_node), 10, "the replica to catch up")

        # The replica is cut off; the primary keeps acknowledging.
        net.cut(redis_set.replica.name)
        acknowledged = []
        for name in late:
            event = _on_store(
                fleet_node,
                primary_url,
                lambda s, n=name: s.revoke_device(n, RevocationReason.KEY_COMPROMISE, now),
            )
            assert event is not None
            acknowledged.append(name)
        guarded_during = [
            key
            for key in (f"guard:during:{i}" for i in range(REVOCATIONS))
            if fleet_node.call(lambda k=key: _guarded_write(redis_set, k))
        ]

        # The primary's machine is lost; Sentinel promotes the replica.
        redis_set.lose_primary()
        net.mend(redis_set.replica.name)
        took = redis_set.wait_promoted(fleet_node, redis_set.replica.address)
        promoted_url = redis_set.url(redis_set.replica)

        async def states(store: Store) -> dict[str, DeviceState]:
            return {n: (await store.get_device(n)).state for n in names}

        after = _on_store(fleet_node, promoted_url, states)
        lost = [n for n in acknowledged if after[n] is not DeviceState.REVOKED]
        kept_early = [n for n in early if after[n] is DeviceState.REVOKED]

        def present(keys: list[str]) -> list[str]:
            conn = redis_set.client(redis_set.replica)
            try:
                return [k for k in keys if conn.exists(k)]
            finally:
                conn.close()

        guarded_kept = fleet_node.call(lambda: present(guarded_before))
        print(
            f"promoted in {took:.1f} s; without the guard {len(lost)} of {len(acknowledged)} "
            f"acknowledged revocations lost ({len(kept_early)} of {len(early)} made before the "
            f"partition kept); with WAIT 1: {len(guarded_during)} acknowledged while the replica "
            f"was cut off, {len(guarded_kept)} of {len(guarded_before)} acknowledged before kept"
        )
        # Without the guard: every revocation acknowledged during the partition is gone,
        # and those devices are simply active again on the new primary.
        assert lost == acknowledged
        assert kept_early == early
        # With it: nothing was acknowledged that the replica did not have; nothing lost.
        assert guarded_during == []
        assert guarded_kept == guarded_before
