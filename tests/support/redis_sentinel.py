"""Redis replication under Sentinel on separate hosts (netns.py), for failover tests.

A primary and one replica (both AOF with ``appendfsync always``: the
durability a single Redis can give) and three sentinels with quorum 2, each
on its own host. Redis replication is asynchronous: a write the primary
acknowledged may not have reached the replica Sentinel promotes.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import redis

from tests.support.binaries import need_binary
from tests.support.cluster import start_redis
from tests.support.netns import Host, Network

MASTER_NAME = "fleet"
SENTINEL_PORT = 26379
DOWN_AFTER_MS = 1000


@dataclasses.dataclass
class ReplicatedRedis:
    net: Network
    primary: Host
    replica: Host
    sentinels: list[Host]

    def client(self, host: Host) -> redis.Redis:
        """A one-connection client of the Redis on ``host`` (use it inside ``host.call``
        of a host on the same switch)."""
        return redis.Redis(
            host=host.address,
            port=6379,
            single_connection_client=True,
            socket_connect_timeout=1,
            socket_timeout=5,
        )

    def url(self, host: Host) -> str:
        return f"redis://{host.address}:6379/0"

    def replica_caught_up(self, client: Host) -> bool:
        """Whether the replica has applied everything the primary has (from ``client``)."""

        def check() -> bool:
            primary = self.client(self.primary).info("replication")
            replica = self.client(self.replica).info("replication")
            return bool(
                replica.get("master_link_status") == "up"
                and replica.get("slave_repl_offset") == primary.get("master_repl_offset")
            )

        return client.call(check)

    def promoted(self, client: Host, address: str) -> bool:
        """Whether every sentinel names ``address`` as the primary and that Redis says
        it is one (asked from ``client``)."""

        def ask() -> bool:
            for sentinel in self.sentinels:
                try:
                    with _sentinel(sentinel) as conn:
                        named = conn.sentinel_get_master_addr_by_name(MASTER_NAME)
                except redis.RedisError:
                    return False
                if not named or _text(named[0]) != address:
                    return False
            with redis.Redis(host=address, port=6379, socket_connect_timeout=1) as conn:
                return bool(conn.info("replication").get("role") == "master")

        return client.call(ask)

    def ready(self, client: Host) -> bool:
        """The replica is in sync, and every sentinel knows it and the two other
        sentinels (needed to elect the one that runs a failover)."""

        def ask() -> bool:
            if self.client(self.replica).info("replication").get("master_link_status") != "up":
                return False
            for sentinel in self.sentinels:
                with _sentinel(sentinel) as conn:
                    replicas = conn.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
                    peers = conn.execute_command("SENTINEL", "SENTINELS", MASTER_NAME)
                if len(replicas) != 1 or len(peers) != len(self.sentinels) - 1:
                    return False
            return True

        return client.call(ask)

    def lose_primary(self) -> None:
        """The primary's machine is gone: unplugged first (so its kernel cannot hand the
        replica anything more), then its redis-server killed with SIGKILL."""
        self.net.cut(self.primary.name)
        for proc in self.primary.procs:
            proc.kill()
            proc.wait(10)

    def wait_promoted(self, client: Host, address: str, timeout: float = 40) -> float:
        started = time.monotonic()
        while not self.promoted(client, address):
            assert time.monotonic() - started < timeout, "Sentinel did not promote the replica"
            time.sleep(0.1)
        return time.monotonic() - started


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _sentinel(host: Host) -> redis.Redis:
    return redis.Redis(host=host.address, port=SENTINEL_PORT, socket_connect_timeout=1)


def start_replicated_redis(net: Network, work: Path, first_octet: int = 41) -> ReplicatedRedis:
    """Primary, replica and three sentinels on new hosts of ``net``; stopped with it."""
    primary = net.add_host("redis-1", first_octet)
    replica = net.add_host("redis-2", first_octet + 1)
    start_redis(primary, work / "redis-1")
    start_redis(replica, work / "redis-2", "--replicaof", primary.address, "6379")
    exe = need_binary("redis-sentinel")
    sentinels = []
    for i in range(3):
        host = net.add_host(f"sentinel-{i + 1}", first_octet + 10 + i)
        directory = work / host.name
        directory.mkdir(parents=True)
        conf = directory / "sentinel.conf"  # sentinel rewrites it: its own copy
        conf.write_text(
            f"bind {host.address}\n"
            f"port {SENTINEL_PORT}\n"
            "protected-mode no\n"
            f"dir {directory}\n"
            f"sentinel monitor {MASTER_NAME} {primary.address} 6379 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} 3000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        log = directory / "sentinel.log"
        proc = host.popen([exe, conf], log=log)
        host.wait_listening(SENTINEL_PORT, proc, log)
        sentinels.append(host)
    return ReplicatedRedis(net, primary, replica, sentinels)
