"""`fleet-broker amqtt` following a REAL Redis store: the stale-feed policy when Redis
goes away, and resync when it comes back empty (it keeps nothing on disk here).

The fleet server and the broker share one redis-server on a free port; the test
stops and restarts that process on the same port.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.amqtt_broker import AmqttEnv, expect_refused
from tests.support.redis_server import RedisServer

STALENESS = 1.0


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    # Volatile on purpose: the tests restart it empty, the store-loss case.
    server = RedisServer(tmp_path / "redis", durable=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def env(tmp_path: Path, redis: RedisServer) -> Iterator[AmqttEnv]:
    from tests.integration.est.conftest import running_fleet

    with running_fleet(
        tmp_path / "fleet",
        env={"FLEET_STORE_URL": redis.url, "FLEET_STORE_REDIS_ALLOW_VOLATILE": "true"},
    ) as fleet:
        running = AmqttEnv(fleet, fleet.work)
        try:
            yield running
        finally:
            running.stop_broker()


def wait_until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def usable(env: AmqttEnv) -> bool:
    assert env.broker is not None
    cache = env.broker.broker.cache
    return cache is not None and cache.usable()


def contact_lost(env: AmqttEnv) -> bool:
    assert env.broker is not None
    cache = env.broker.broker.cache
    return cache is not None and cache.staleness_seconds() > STALENESS


def refused_with(env: AmqttEnv, reason: str, client_id: str, cert: Path, key: Path) -> None:
    assert env.broker is not None
    before = env.broker.refused(reason)
    expect_refused(env.device(client_id, cert, key))
    assert env.broker.refused(reason) == before + 1


def test_fail_closed_after_30_seconds_is_the_default(env: AmqttEnv, redis: RedisServer) -> None:
    env.start_broker(store_url=redis.url)
    assert env.broker is not None
    cache = env.broker.broker.cache
    assert cache is not None
    assert cache.settings.max_staleness == 30.0
    assert cache.settings.fail_open is False


def test_stale_feed_fails_closed_keeps_sessions_and_recovers(
    env: AmqttEnv, redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    env.start_broker(store_url=redis.url, max_staleness=STALENESS)
    assert env.broker is not None
    registry = env.broker.broker.metrics.registry
    live_id, live_cert, live_key = env.enroll()
    new_id, new_cert, new_key = env.enroll()
    live = env.connected(live_id, live_cert, live_key)
    try:
        assert live.subscribe(f"devices/{live_id}/#") == [1]
        port = redis.port
        redis.stop()
        wait_until(lambda: contact_lost(env), 10, "the feed to go stale")
        assert not usable(env)
        assert registry.get_sample_value("fleet_broker_revocation_usable") == 0.0
        staleness = registry.get_sample_value("fleet_broker_revocation_staleness_seconds")
        assert staleness is not None
        assert staleness > STALENESS
        caplog.set_level(logging.INFO, logger="fleet.broker")
        refused_with(env, "revocation_state_stale", new_id, new_cert, new_key)
        refusals = [
            r.fields  # type: ignore[attr-defined]
            for r in caplog.records
            if getattr(r, "fields", {}).get("event") == "connect_refused"
        ]
        assert refusals[-1]["reason"] == "revocation_state_stale"
        assert refusals[-1]["device_id"] == new_id
        # The session admitted on good data stays up and keeps working.
        assert not live.disconnected.is_set()
        live.publish(f"devices/{live_id}/t", b"still here")
        assert live.receive() == (f"devices/{live_id}/t", b"still here")

        redis.start(port=port)
        wait_until(lambda: usable(env), 10, "the feed to be fresh again")
        assert registry.get_sample_value("fleet_broker_revocation_usable") == 1.0
        env.connected(new_id, new_cert, new_key).close()
        assert not live.disconnected.is_set()
    finally:
        live.close()


def test_stale_feed_with_fail_open_admits(env: AmqttEnv, redis: RedisServer) -> None:
    env.start_broker(store_url=redis.url, max_staleness=STALENESS, fail_open=True)
    device_id, cert, key = env.enroll()
    revoked_id, revoked_cert, revoked_key = env.enroll()
    seq = env.revoke_device(revoked_id)
    assert env.broker is not None
    broker = env.broker
    assert broker.call(lambda: broker.broker.cache.wait_for_seq(seq, 5))  # type: ignore[union-attr]
    port = redis.port
    redis.stop()
    try:
        wait_until(lambda: contact_lost(env), 10, "the feed to go stale")
        assert usable(env)
        stale_before = broker.refused("revocation_state_stale")
        env.connected(device_id, cert, key).close()
        # Failing open decides on the last data known: what was revoked stays out.
        refused_with(env, "certificate_revoked", revoked_id, revoked_cert, revoked_key)
        assert broker.refused("revocation_state_stale") == stale_before
    finally:
        redis.start(port=port)


def test_redis_restart_empty_does_not_unrevoke(env: AmqttEnv, redis: RedisServer) -> None:
    env.start_broker(store_url=redis.url, max_staleness=STALENESS)
    assert env.broker is not None
    broker = env.broker
    device_id, cert, key = env.enroll()
    ok_id, ok_cert, ok_key = env.enroll()
    device = env.connected(device_id, cert, key)
    env.revoke_device(device_id)
    assert device.disconnected.wait(2), "revoked session still open"
    device.close()
    cache = broker.broker.cache
    assert cache is not None
    seq_before = cache.seq
    assert seq_before >= 1

    port = redis.port
    redis.stop()
    redis.start(port=port)  # empty: the revocation (and the feed) are gone from the store
    assert broker.call(lambda: cache.wait_for_seq(0, 1))  # trivially true; loop is alive
    resets = "fleet_broker_revocation_resyncs_total"
    wait_until(
        lambda: (
            (broker.broker.metrics.registry.get_sample_value(resets, {"cause": "feed_reset"}))
            is not None
        ),
        10,
        "the cache to notice the store reset",
    )
    wait_until(lambda: usable(env), 10, "the feed to be fresh again")
    refused_with(env, "certificate_revoked", device_id, cert, key)
    # The restarted store is empty: the fleet must be loaded again before new enrolments.
    from tests.integration.est.conftest import trust_manufacturer

    trust_manufacturer(env.fleet.server, env.fleet.manufacturer, "Acme")
    # A device that was never revoked still gets in.
    env.connected(ok_id, ok_cert, ok_key).close()


def test_redis_restart_then_new_revocations_past_our_seq_are_seen(
    env: AmqttEnv, redis: RedisServer
) -> None:
    """A restarted Redis whose new feed already passed our sequence is still a reset.

    The cache knew seq N; the store restarts empty and records N+1 new revocations
    before the cache probes it. Reading "events after N" would skip the first N.
    """
    env.start_broker(store_url=redis.url, max_staleness=30.0)
    assert env.broker is not None
    broker = env.broker
    first_id, _, _ = env.enroll()
    broker_seq = env.revoke_device(first_id)
    cache = broker.broker.cache
    assert cache is not None
    assert broker.call(lambda: cache.wait_for_seq(broker_seq, 5))

    port = redis.port
    redis.stop()
    redis.start(port=port)
    from tests.integration.est.conftest import trust_manufacturer

    trust_manufacturer(env.fleet.server, env.fleet.manufacturer, "Acme")
    victims = [env.enroll() for _ in range(broker_seq + 1)]
    for victim_id, _, _ in victims:
        env.revoke_device(victim_id)
    for victim_id, cert, key in victims:
        wait_until(
            lambda v=victim_id: cache.is_device_revoked(v),  # type: ignore[misc]
            10,
            f"{victim_id} revoked in the broker",
        )
        refused_with(env, "certificate_revoked", victim_id, cert, key)


# -- the broker's persisted revocation snapshot -------------------------------------------
#
# Revoke a device and one certificate of another device, then lose the store's
# contents (FLUSHALL, or a restart of this Redis, which keeps nothing) and
# restart the broker, in every order. The broker must keep both out each time:
# it merges the snapshot file it wrote into whatever the store says.


def flushall(redis: RedisServer) -> None:
    import redis as redis_client

    client = redis_client.Redis.from_url(redis.url)
    try:
        assert client.flushall()
        assert client.dbsize() == 0
    finally:
        client.close()


def revoke_certificate(env: AmqttEnv, cert: Path) -> int:
    import datetime as dt

    from cryptography import x509

    from fleet.records import RevocationReason

    serial = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
    event = env.fleet.server.store(
        lambda s: s.revoke_certificate(
            serial, RevocationReason.KEY_COMPROMISE, dt.datetime.now(dt.UTC)
        )
    )
    assert event is not None
    return event.seq


class Revoked:
    """A revoked device and a device with one revoked certificate, and how to check them."""

    def __init__(self, env: AmqttEnv) -> None:
        self.env = env
        self.device_id, self.device_cert, self.device_key = env.enroll()
        self.holder_id, self.revoked_cert, self.revoked_key = env.enroll()
        self.ok_id, self.ok_cert, self.ok_key = env.enroll()
        # Certificates the store never recorded (signed with the issuing CA key):
        # the revoked device's must still be refused by its device id; the other
        # device is not revoked, so its fresh certificate gets in.
        self.device_fresh = env.issuing(f"fresh-{self.device_id}", self.device_id)
        self.holder_fresh = env.issuing(f"fresh-{self.holder_id}", self.holder_id)

    def revoke(self) -> None:
        assert self.env.broker is not None
        broker = self.env.broker
        self.env.revoke_device(self.device_id)
        seq = revoke_certificate(self.env, self.revoked_cert)
        cache = broker.broker.cache
        assert cache is not None
        assert broker.call(lambda: cache.wait_for_seq(seq, 5))

    def check_kept_out(self, when: str) -> None:
        env = self.env
        assert env.broker is not None, when
        refused_with(env, "certificate_revoked", self.device_id, self.device_cert, self.device_key)
        refused_with(env, "device_revoked", self.device_id, *self.device_fresh)
        refused_with(
            env, "certificate_revoked", self.holder_id, self.revoked_cert, self.revoked_key
        )
        # Not a broker that refuses everybody: the others get in once it is fresh.
        wait_until(lambda: usable(env), 15, f"the revocation state to be usable ({when})")
        env.connected(self.holder_id, *self.holder_fresh).close()
        env.connected(self.ok_id, self.ok_cert, self.ok_key).close()


STORE_LOSS_ORDERS = {
    "flushall-then-broker-restart": ["flushall", "restart_broker"],
    "broker-down-during-flushall": ["stop_broker", "flushall", "start_broker"],
    "broker-restart-then-flushall": ["restart_broker", "flushall", "restart_broker"],
    "redis-restart-then-broker-restart": ["restart_redis", "restart_broker"],
    "broker-down-during-redis-restart": ["stop_broker", "restart_redis", "start_broker"],
    "broker-restart-then-redis-restart": ["restart_broker", "restart_redis", "restart_broker"],
}


@pytest.mark.parametrize("order", list(STORE_LOSS_ORDERS))
def test_store_loss_and_broker_restarts_never_readmit_revoked(
    env: AmqttEnv, redis: RedisServer, order: str
) -> None:
    env.start_broker(store_url=redis.url)
    revoked = Revoked(env)
    revoked.revoke()
    revoked.check_kept_out("before any loss")
    for step in STORE_LOSS_ORDERS[order]:
        if step == "flushall":
            flushall(redis)
        elif step == "restart_redis":
            port = redis.port
            redis.stop()
            redis.start(port=port)
        if step in ("restart_broker", "stop_broker"):
            env.stop_broker()
        if step in ("restart_broker", "start_broker"):
            env.start_broker(store_url=redis.url)
        if env.broker is not None:
            revoked.check_kept_out(f"after {step}")


def test_killed_broker_process_restarts_with_revocations_after_flushall(
    env: AmqttEnv, redis: RedisServer, tmp_path: Path
) -> None:
    """The real `fleet-broker amqtt`, killed with SIGKILL: the file written while it ran counts."""
    from tests.support.amqtt_broker import BrokerProcess, Device, client_context

    directory = tmp_path / "broker-process"
    directory.mkdir()
    broker = BrokerProcess(env.fleet.server, directory, redis.url).start()
    try:
        device_id, cert, key = env.enroll()
        holder_id, revoked_cert, revoked_key = env.enroll()
        ok_id, ok_cert, ok_key = env.enroll()
        env.revoke_device(device_id)
        seq = revoke_certificate(env, revoked_cert)

        def applied_and_on_disk() -> bool:
            return (broker.metric("fleet_broker_revocation_feed_seq") or 0) >= seq and (
                broker.metric("fleet_broker_revocation_snapshot_pending") == 0.0
            )

        wait_until(applied_and_on_disk, 10, "the revocations applied and written")
        broker.kill()
        flushall(redis)
        broker.start()
        wait_until(lambda: broker.metric("fleet_broker_revocation_usable") == 1.0, 10, "fresh")

        def connack(client_id: str, cert: Path, key: Path) -> int | None:
            device = Device(broker.port, client_id, client_context(env.ca, cert, key))
            try:
                return device.connect()
            finally:
                device.close()

        assert connack(device_id, cert, key) != 0, "revoked device admitted after kill + FLUSHALL"
        assert connack(holder_id, revoked_cert, revoked_key) != 0, "revoked certificate admitted"
        assert connack(ok_id, ok_cert, ok_key) == 0
        assert "connect_refused" in broker.log.read_text()
    finally:
        broker.stop()
