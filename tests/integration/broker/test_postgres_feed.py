"""`fleet-broker amqtt` following a PostgreSQL store: LISTEN/NOTIFY kicks the revoked
session at once, and a broker that lost its database catches up from the feed
sequence when it is back (no revocation missed while notifications were lost).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleet.store.postgres import upgrade_schema
from tests.support.amqtt_broker import AmqttEnv, expect_refused
from tests.support.postgres import PostgresServer


@pytest.fixture
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        upgrade_schema(server.url)
        yield server
    finally:
        server.stop()
        server.remove()


@pytest.fixture
def env(tmp_path: Path, pg: PostgresServer) -> Iterator[AmqttEnv]:
    from tests.integration.est.conftest import running_fleet

    with running_fleet(tmp_path / "fleet", env={"FLEET_STORE_URL": pg.url}) as fleet:
        running = AmqttEnv(fleet, fleet.work)
        try:
            yield running
        finally:
            running.stop_broker()


def wait_until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_revocation_on_postgresql_kicks_the_session_and_refuses_reconnects(
    env: AmqttEnv, pg: PostgresServer
) -> None:
    env.start_broker(store_url=pg.url)
    device_id, cert, key = env.enroll()
    other_id, other_cert, other_key = env.enroll()
    device = env.connected(device_id, cert, key)
    started = time.monotonic()
    env.revoke_device(device_id)
    assert device.disconnected.wait(2), "revoked session still open"
    kicked = time.monotonic() - started
    device.close()
    print(f"revoke -> disconnect {1000 * kicked:.0f} ms over LISTEN/NOTIFY")
    expect_refused(env.device(device_id, cert, key))
    env.connected(other_id, other_cert, other_key).close()


def test_a_broker_that_lost_the_database_catches_up_from_the_sequence(
    env: AmqttEnv, pg: PostgresServer
) -> None:
    """The broker's LISTEN connection dies with the server; revocations are made
    while it is reconnecting (their NOTIFYs reach nobody); it still sees them."""
    env.start_broker(store_url=pg.url, max_staleness=30.0)
    assert env.broker is not None
    cache = env.broker.broker.cache
    assert cache is not None
    victims = [env.enroll() for _ in range(3)]
    pg.stop(mode="immediate")
    pg.start()  # same port and data; the broker's listener is gone
    for victim_id, _, _ in victims:
        env.revoke_device(victim_id)
    for victim_id, cert, key in victims:
        wait_until(
            lambda v=victim_id: cache.is_device_revoked(v),  # type: ignore[misc]
            15,
            f"{victim_id} revoked in the broker",
        )
        expect_refused(env.device(victim_id, cert, key))
