"""Each amqtt 0.12.1 defect from ../shared/notes/amqtt-0.12.1.md, attacked on the hardened broker.

Numbers follow the note (1-7) and broker_plugins/amqtt/_hardening.py (9, 10, 12:
found while hardening; 11, the will, is in test_amqtt_will.py). Every test here fails
on the stock amqtt broker.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.amqtt_broker import (
    NOT_AUTHORIZED,
    AmqttEnv,
    Device,
    amqtt_env,
    client_context,
    raw_connect,
    wait_closed,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AmqttEnv]:
    with amqtt_env(tmp_path_factory.mktemp("amqtt-defects")) as running:
        yield running


def amqtt_broker(env: AmqttEnv) -> Any:
    assert env.broker is not None
    assert env.broker.broker.broker is not None
    return env.broker.broker.broker


def inject(env: AmqttEnv, topic: str, payload: bytes, qos: int = 1) -> None:
    """What a backend does: a message into a device's tree (broker-internal publish)."""
    broker = amqtt_broker(env)
    assert env.broker is not None
    env.broker.call(lambda: broker.internal_message_broadcast(topic, payload, qos))


def test_defect1_client_without_certificate_gets_no_connack(env: AmqttEnv) -> None:
    device_id, _, _ = env.enroll()
    assert env.broker is not None
    try:
        sock, rc = raw_connect(env.broker.port, client_context(env.ca), device_id)
        sock.close()
    except OSError:
        rc = None
    assert rc is None
    assert device_id not in amqtt_broker(env).sessions


def test_defect2_persistent_session_cannot_be_resumed_with_another_certificate(
    env: AmqttEnv,
) -> None:
    victim_id, victim_cert, victim_key = env.enroll()
    _, thief_cert, thief_key = env.enroll()
    victim = env.connected(victim_id, victim_cert, victim_key, clean_session=False)
    assert victim.subscribe(f"devices/{victim_id}/cmd", qos=1) == [1]
    victim.close()
    time.sleep(0.2)
    inject(env, f"devices/{victim_id}/cmd", b"secret-1")
    # The thief resumes the victim's session with its own (valid) certificate.
    thief = env.device(victim_id, thief_cert, thief_key, clean_session=False)
    got = thief.connect()
    stolen = thief.receive(timeout=0.5)
    thief.close()
    assert got == NOT_AUTHORIZED
    assert stolen is None
    # The victim's session and queue survived the attempt.
    victim = env.device(victim_id, victim_cert, victim_key, clean_session=False)
    assert victim.connect() == 0
    assert victim.receive() == (f"devices/{victim_id}/cmd", b"secret-1")
    victim.close()


def test_defect3_refused_connect_with_victims_id_neither_kicks_nor_wipes_it(
    env: AmqttEnv,
) -> None:
    victim_id, victim_cert, victim_key = env.enroll()
    _, thief_cert, thief_key = env.enroll()
    victim = env.connected(victim_id, victim_cert, victim_key)
    assert victim.subscribe(f"devices/{victim_id}/#") == [1]
    for clean in (True, False):
        thief = env.device(victim_id, thief_cert, thief_key, clean_session=clean)
        assert thief.connect() == NOT_AUTHORIZED
        thief.close()
    time.sleep(0.2)
    assert not victim.disconnected.is_set()
    victim.publish(f"devices/{victim_id}/t", b"still here")
    assert victim.receive() == (f"devices/{victim_id}/t", b"still here")
    victim.close()


@pytest.mark.parametrize("clean_session", [True, False])
def test_defect4_10_takeover_closes_the_old_connection(env: AmqttEnv, clean_session: bool) -> None:
    device_id, cert, key = env.enroll()
    old = env.connected(device_id, cert, key, clean_session=clean_session)
    assert old.subscribe(f"devices/{device_id}/#") == [1]
    new = env.connected(device_id, cert, key, clean_session=clean_session)
    assert old.disconnected.wait(2), "the old connection is still up after a takeover"
    old.close()
    if clean_session:
        assert new.subscribe(f"devices/{device_id}/#") == [1]
    # The session is live for the new connection (defect 10: not left "disconnected").
    new.publish(f"devices/{device_id}/t", b"after takeover")
    assert new.receive() == (f"devices/{device_id}/t", b"after takeover")
    session, _handler = amqtt_broker(env).sessions[device_id]
    assert session.transitions.is_connected()
    new.close()


def test_defect5_refused_connect_leaves_no_session(env: AmqttEnv) -> None:
    _, cert, key = env.enroll()
    target_id, target_cert, target_key = env.enroll()
    for clean in (False, True):
        attacker = env.device(target_id, cert, key, clean_session=clean)
        assert attacker.connect() == NOT_AUTHORIZED
        attacker.close()
    assert target_id not in amqtt_broker(env).sessions
    # The real device is not locked out of a persistent session.
    real = env.device(target_id, target_cert, target_key, clean_session=False)
    assert real.connect() == 0
    real.close()


def test_defect6_no_message_loss_under_subscribe_churn(env: AmqttEnv) -> None:
    receiver_id, r_cert, r_key = env.enroll()
    churners = [env.connected(*env.enroll()) for _ in range(8)]
    receiver = env.connected(receiver_id, r_cert, r_key)
    # QoS 0 end to end: amqtt 0.12.1 also races PUBACKs against its own waiter
    # registration (see "remaining" in the report), which is not what this tests.
    assert receiver.subscribe(f"devices/{receiver_id}/#", qos=0) == [0]
    stop = threading.Event()

    def churn(device: Device) -> None:
        device_id = str(device.client._client_id.decode())
        n = 0
        while not stop.is_set():
            n += 1
            device.client.subscribe(f"devices/{device_id}/c/{n}", 0)
            device.client.unsubscribe(f"devices/{device_id}/c/{n - 1}")
            if n % 20 == 0:
                time.sleep(0.001)

    threads = [threading.Thread(target=churn, args=(d,), daemon=True) for d in churners]
    for t in threads:
        t.start()
    sent = 300
    got: set[int] = set()
    try:
        for i in range(sent):
            receiver.client.publish(f"devices/{receiver_id}/n", str(i).encode(), qos=0)
            if i % 10 == 0:
                time.sleep(0.002)
            message = receiver.receive(timeout=0)
            if message is not None:
                got.add(int(message[1]))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
    # Churn has stopped: whatever is still missing now was lost, not late.
    deadline = time.monotonic() + 15
    while len(got) < sent and time.monotonic() < deadline:
        message = receiver.receive(timeout=0.5)
        if message is not None:
            got.add(int(message[1]))
    for d in [*churners, receiver]:
        d.close()
    assert len(got) == sent, f"lost {sent - len(got)} of {sent} deliveries under churn"


def test_defect7_silent_client_is_closed_after_one_and_a_half_keepalives(
    env: AmqttEnv,
) -> None:
    device_id, cert, key = env.enroll()
    assert env.broker is not None
    will_topic = f"devices/{device_id}/status"
    sock, rc = raw_connect(
        env.broker.port,
        client_context(env.ca, cert, key),
        device_id,
        keepalive=1,
        will=(will_topic, b"gone"),
        will_retain=True,
    )
    assert rc == 0
    closed_after = wait_closed(sock, timeout=5)
    sock.close()
    assert closed_after is not None, "a silent client was never timed out"
    assert 1.0 <= closed_after <= 3.5
    # Its will fired (retained here so that it can be observed).
    deadline = time.monotonic() + 2
    while will_topic not in amqtt_broker(env).retained_messages and time.monotonic() < deadline:
        time.sleep(0.05)
    assert amqtt_broker(env).retained_messages[will_topic].data == b"gone"


def test_defect7_client_that_pings_stays_connected(env: AmqttEnv) -> None:
    device_id, cert, key = env.enroll()
    device = env.connected(device_id, cert, key, keepalive=1)
    time.sleep(2.5)
    assert not device.disconnected.is_set()
    device.close()


def test_defect9_retained_messages_of_other_devices_are_not_replayed(env: AmqttEnv) -> None:
    a_id, a_cert, a_key = env.enroll()
    b_id, b_cert, b_key = env.enroll()
    a = env.connected(a_id, a_cert, a_key)
    assert a.subscribe(f"devices/{a_id}/#") == [1]
    a.publish(f"devices/{a_id}/state", b"a-private", retain=True)
    assert a.receive() is not None
    b = env.connected(b_id, b_cert, b_key)
    assert b.subscribe(f"devices/{b_id}/#") == [1]
    leaked = b.receive(timeout=0.7)
    # A's own retained message comes back to A on a new subscription.
    a2 = env.connected(a_id, a_cert, a_key)
    assert a2.subscribe(f"devices/{a_id}/state") == [1]
    own = a2.receive()
    for d in (a, b, a2):
        d.close()
    assert leaked is None, f"device {b_id} received {leaked}"
    assert own == (f"devices/{a_id}/state", b"a-private")


@pytest.mark.parametrize("topic", ["devices/{id}/+", "devices/{id}/#", "#"])
def test_defect12_publish_to_a_wildcard_topic_closes_the_connection(
    env: AmqttEnv, topic: str
) -> None:
    device_id, cert, key = env.enroll()
    assert env.broker is not None
    sock, rc = raw_connect(env.broker.port, client_context(env.ca, cert, key), device_id)
    try:
        assert rc == 0
        name = topic.format(id=device_id).encode()
        body = struct.pack("!H", len(name)) + name + struct.pack("!H", 7) + b"payload"
        sock.sendall(bytes([0x32, len(body)]) + body)  # PUBLISH, QoS 1
        sock.sendall(b"\xc0\x00")  # PINGREQ: a hung reader would never answer or close
        assert wait_closed(sock, 5) is not None, "the broker kept a protocol-violating client"
    finally:
        sock.close()
    # The broker still serves everybody else.
    other_id, other_cert, other_key = env.enroll()
    env.connected(other_id, other_cert, other_key).close()
