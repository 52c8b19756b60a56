"""The Last Will is checked against the topic ACL at CONNECT, like a PUBLISH.

Attack: device A connects with a will on ``devices/B/cmd`` (retained, QoS 1)
and drops the connection; stock amqtt publishes the will without asking the
topic plugin, so B receives A's message and the broker keeps it retained.
fleet-broker refuses such a CONNECT ("not authorized", reason
``will_not_allowed``): refusing is safer than silently dropping the will,
because the device learns at once that its configuration is wrong.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.amqtt_broker import (
    AmqttEnv,
    amqtt_env,
    client_context,
    raw_connect,
    wait_closed,
)

# CONNACK return code 5 of MQTT 3.1.1 on the wire ("not authorized").
CONNACK_NOT_AUTHORIZED = 5


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AmqttEnv]:
    with amqtt_env(tmp_path_factory.mktemp("amqtt-will")) as running:
        yield running


def amqtt_broker(env: AmqttEnv) -> Any:
    assert env.broker is not None
    assert env.broker.broker.broker is not None
    return env.broker.broker.broker


def connect_with_will(
    env: AmqttEnv, device_id: str, cert: Any, key: Any, will_topic: str
) -> tuple[ssl.SSLSocket | None, int | None]:
    assert env.broker is not None
    try:
        return raw_connect(
            env.broker.port,
            client_context(env.ca, cert, key),
            device_id,
            will=(will_topic, b"from-" + device_id.encode()),
            will_retain=True,
        )
    except (OSError, ssl.SSLError):
        return None, None


def drop(sock: ssl.SSLSocket | None) -> None:
    """End the connection without DISCONNECT: an abnormal close, so a will would fire."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def test_will_into_another_devices_tree_is_refused_and_never_delivered(
    env: AmqttEnv, caplog: pytest.LogCaptureFixture
) -> None:
    a_id, a_cert, a_key = env.enroll()
    b_id, b_cert, b_key = env.enroll()
    assert env.broker is not None
    target = f"devices/{b_id}/cmd"
    b = env.connected(b_id, b_cert, b_key)
    try:
        assert b.subscribe(f"devices/{b_id}/#") == [1]
        caplog.set_level(logging.INFO, logger="fleet.broker")
        before = env.broker.refused("will_not_allowed")
        sock, rc = connect_with_will(env, a_id, a_cert, a_key, target)
        drop(sock)
        # A message B does receive, sent after A dropped: had A's will been
        # published, it would have arrived first (one broadcast queue).
        b.publish(f"devices/{b_id}/marker", b"marker")
        assert b.receive() == (f"devices/{b_id}/marker", b"marker"), "B received A's will"
        assert b.receive(timeout=0.3) is None
    finally:
        b.close()
    assert target not in amqtt_broker(env).retained_messages, "A's will is retained in B's tree"
    assert rc == CONNACK_NOT_AUTHORIZED, f"A's CONNECT with a will on {target} got {rc}"
    assert a_id not in amqtt_broker(env).sessions
    assert env.broker.refused("will_not_allowed") == before + 1
    refusals = [
        r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "fields", {}).get("event") == "connect_refused"
    ]
    assert refusals[-1]["reason"] == "will_not_allowed"
    assert refusals[-1]["device_id"] == a_id
    # Over MQTT too: a fresh subscription of B's gets no retained message from A.
    b = env.connected(b_id, b_cert, b_key)
    try:
        assert b.subscribe(target) == [1]
        assert b.receive(timeout=0.5) is None
    finally:
        b.close()


@pytest.mark.parametrize(
    "will_topic",
    [
        "devices/{other}/cmd",
        "devices/{other}",
        "devices/+/cmd",
        "devices/{me}/#",
        "devices",
        "$SYS/broker/{me}",
        "$CONTROL/fleet/v1",
    ],
)
def test_will_outside_the_devices_publish_rights_is_refused(env: AmqttEnv, will_topic: str) -> None:
    me, cert, key = env.enroll()
    topic = will_topic.format(me=me, other=f"{me}x")
    assert env.broker is not None
    before = env.broker.refused("will_not_allowed")
    sock, rc = connect_with_will(env, me, cert, key, topic)
    drop(sock)
    assert rc != 0, f"CONNECT with a will on {topic!r} was admitted"
    if rc is not None:  # amqtt may already reject a wildcard will while decoding
        assert rc == CONNACK_NOT_AUTHORIZED
        assert env.broker.refused("will_not_allowed") == before + 1
    assert me not in amqtt_broker(env).sessions
    assert topic not in amqtt_broker(env).retained_messages


def test_will_in_the_devices_own_tree_is_published(env: AmqttEnv) -> None:
    device_id, cert, key = env.enroll()
    status = f"devices/{device_id}/status"
    sock, rc = connect_with_will(env, device_id, cert, key, status)
    assert rc == 0
    drop(sock)
    # The device comes back and reads its own retained will.
    deadline = time.monotonic() + 5
    while status not in amqtt_broker(env).retained_messages:
        assert time.monotonic() < deadline, "the will was not published"
        time.sleep(0.05)
    device = env.connected(device_id, cert, key)
    try:
        assert device.subscribe(status) == [1]
        assert device.receive() == (status, b"from-" + device_id.encode())
    finally:
        device.close()


def test_revoked_sessions_will_is_dropped(env: AmqttEnv) -> None:
    device_id, cert, key = env.enroll()
    status = f"devices/{device_id}/status"
    sock, rc = connect_with_will(env, device_id, cert, key, status)
    assert rc == 0
    assert sock is not None
    try:
        env.revoke_device(device_id)
        # Kicked: the broker closes the connection, which would normally fire the will.
        assert wait_closed(sock, timeout=5) is not None, "the revoked session is still open"
    finally:
        drop(sock)
    deadline = time.monotonic() + 5
    while device_id in amqtt_broker(env).sessions:
        assert time.monotonic() < deadline, "the revoked device's session was not deleted"
        time.sleep(0.05)
    assert status not in amqtt_broker(env).retained_messages
