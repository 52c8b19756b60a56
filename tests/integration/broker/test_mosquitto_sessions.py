"""One session per device across two Mosquitto nodes (plugin + sidecar each, peers).

Two real brokers on loopback follow one fleet store; each node's settings list
the other as a peer. A device that connects to node B while its session on
node A is up must end with one session: A's (the older) is closed, B's stays.
The announcement travels plugin B -> sidecar B -> node A's listener -> plugin A;
nothing is shared between the nodes but the network.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.records import RevocationReason
from tests.integration.est.conftest import Fleet, running_fleet
from tests.support.binaries import need_binary
from tests.support.mosquitto_broker import BrokerNode, BrokerNodes, Session, fleet_broker
from tests.support.ports import free_port

pytestmark = [pytest.mark.needs_binary("mosquitto"), pytest.mark.needs_binary("gcc")]

TAKEOVER_DEADLINE = 2.0  # seconds from the newer CONNACK to the older session's close
SIDECAR_CN = "fleet:sidecar"


@dataclasses.dataclass
class Device:
    device_id: str
    cert: Path
    key: Path


@dataclasses.dataclass
class Pair:
    fleet: Fleet
    a: BrokerNode
    b: BrokerNode
    sidecar_cert: Path
    sidecar_key: Path
    metrics_a: str  # node a's sidecar /metrics

    def enroll(self) -> Device:
        device = self.fleet.new_device()
        key, csr = self.fleet.csr(device.device_id)
        cert = self.fleet.issued(self.fleet.enroll(device, csr), device.device_id)
        return Device(device.device_id, cert, key)

    def connect(self, node: BrokerNode, device: Device) -> Session:
        session = Session(
            node.port,
            ca=self.fleet.server.root_pem,
            cert=device.cert,
            key=device.key,
            client_id=device.device_id,
        )
        assert session.open(), f"{device.device_id} could not connect: {session.connack}"
        return session

    def peer_link(self, node: BrokerNode, client_id: str = f"{SIDECAR_CN}@test") -> Session:
        """What another node's sidecar opens on ``node``: the sidecar certificate."""
        return Session(
            node.port,
            ca=self.fleet.server.root_pem,
            cert=self.sidecar_cert,
            key=self.sidecar_key,
            client_id=client_id,
        )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    need_binary("mosquitto")
    need_binary("gcc")
    base = tmp_path_factory.mktemp("sessions")
    plugin = Path(fleet_broker("mosquitto", "build", "--out", base / "plugin").stdout.strip())
    with running_fleet(base) as fleet:
        nodes = BrokerNodes.issue(fleet.server.data_dir, base, plugin)
        port_a, port_b, metrics = free_port(), free_port(), free_port()
        a = nodes.node(
            base / "a",
            port=port_a,
            extra=f'node_name = "a"\npeers = ["127.0.0.1:{port_b}"]\n'
            f'metrics_address = "127.0.0.1:{metrics}"',
        )
        b = nodes.node(
            base / "b", port=port_b, extra=f'node_name = "b"\npeers = ["127.0.0.1:{port_a}"]'
        )
        try:
            for each in (a, b):
                fleet_broker("mosquitto", "sync", "--config", each.settings, "--once")
                each.start_broker()
            for each in (a, b):
                each.start_sidecar()
            for each in (a, b):
                each.wait_sidecar_log("session link to peer broker")
            yield Pair(
                fleet,
                a,
                b,
                nodes.sidecar_cert,
                nodes.sidecar_key,
                f"http://127.0.0.1:{metrics}/metrics",
            )
        finally:
            for each in (a, b):
                each.stop()


def _tails(pair: Pair) -> str:
    return "".join(
        f"\n--- {path.parent.name}/{path.name}:\n"
        + "\n".join(path.read_text(errors="replace").splitlines()[-15:])
        for node in (pair.a, pair.b)
        for path in (node.broker_log, node.sidecar_log)
    )


def _still_serves(pair: Pair, session: Session, device: Device) -> None:
    """A round trip through the broker on the session: it is alive, not merely unclosed."""
    topic = f"devices/{device.device_id}/ping"
    assert session.subscribe(topic)
    session.publish(topic, b"still here")
    deadline = time.monotonic() + 5
    while (topic, b"still here") not in session.messages:
        assert time.monotonic() < deadline, "no round trip on the newer session" + _tails(pair)
        time.sleep(0.01)
    assert not session.disconnected.is_set()


def _wait_metric(url: str, name: str) -> None:
    """Until the sidecar's /metrics shows ``name`` above zero (it asks every heartbeat)."""
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            for line in response.read().decode().splitlines():
                if line.startswith(f"{name} ") and float(line.split()[1]) > 0:
                    return
        assert time.monotonic() < deadline, f"{name} stayed at zero"
        time.sleep(0.1)


def test_connecting_to_another_node_closes_the_older_session(pair: Pair) -> None:
    device = pair.enroll()
    on_a = pair.connect(pair.a, device)
    on_b: Session | None = None
    back_on_a: Session | None = None
    try:
        on_b = pair.connect(pair.b, device)
        connected_b = time.monotonic()
        assert on_a.disconnected.wait(TAKEOVER_DEADLINE + 3), "A kept its session" + _tails(pair)
        took = on_a.disconnected_at - connected_b
        print(f"takeover A -> B: older session closed {1000 * took:.1f} ms after B's CONNACK")
        assert took <= TAKEOVER_DEADLINE
        pair.a.wait_broker_log(f"older session closed: device={device.device_id} ")
        _still_serves(pair, on_b, device)
        _wait_metric(pair.metrics_a, "fleet_mosquitto_sessions_taken_over_total")

        # And back: the newest wins whichever node it is on.
        back_on_a = pair.connect(pair.a, device)
        assert on_b.disconnected.wait(TAKEOVER_DEADLINE + 3), "B kept its session" + _tails(pair)
        _still_serves(pair, back_on_a, device)
    finally:
        for session in (on_a, on_b, back_on_a):
            if session is not None:
                session.close()


def test_a_revocation_is_logged_as_a_closed_session_only_where_there_was_one(
    pair: Pair,
) -> None:
    device = pair.enroll()
    session = pair.connect(pair.a, device)
    marks = pair.a.log_mark(), pair.b.log_mark()
    try:
        now = dt.datetime.now(dt.UTC)
        revoked = pair.fleet.server.store(
            lambda s: s.revoke_device(device.device_id, RevocationReason.KEY_COMPROMISE, now)
        )
        assert revoked is not None
        assert session.disconnected.wait(5), "A kept the revoked session" + _tails(pair)
        closed = rf"revoked device={device.device_id} seq=\d+: session closed"
        pair.a.wait_broker_log(closed, after=marks[0])
        # B learns the revocation too, but it held no session: an operator looking
        # for the node that held the device must not be sent to B.
        pair.b.wait_broker_log(rf"revoked device={device.device_id} seq=\d+ \(device\)",
                               after=marks[1])  # fmt: skip
        b_log = pair.b.broker_log.read_bytes()[marks[1] :].decode(errors="replace")
        assert not re.search(closed, b_log), b_log
    finally:
        session.close()


def test_a_late_announcement_does_not_close_a_newer_session(pair: Pair) -> None:
    device, bystander = pair.enroll(), pair.enroll()
    session = pair.connect(pair.a, device)
    other = pair.connect(pair.a, bystander)
    link = pair.peer_link(pair.a)
    try:
        assert link.open(), f"the peer link was refused: {link.connack}"
        # Announced as admitted elsewhere a minute ago: older than the session here.
        stale_ms = int(time.time() * 1000) - 60_000
        link.publish("$CONTROL/fleet/v1", f"session {device.device_id} {stale_ms}".encode())
        # The PUBACK comes after the plugin's callback ran: it has decided by now.
        _still_serves(pair, session, device)

        # A newer one closes it, and only it: the check above could have failed.
        fresh_ms = int(time.time() * 1000) + 1000
        link.publish("$CONTROL/fleet/v1", f"session {device.device_id} {fresh_ms}".encode())
        assert session.disconnected.wait(5), "a newer announcement was ignored" + _tails(pair)
        assert not other.disconnected.is_set()
    finally:
        for each in (session, other, link):
            each.close()


def test_a_peer_link_may_only_announce_sessions(pair: Pair) -> None:
    device = pair.enroll()
    session = pair.connect(pair.b, device)
    link = pair.peer_link(pair.b)
    try:
        assert link.open(), f"the peer link was refused: {link.connack}"
        mark = pair.b.log_mark()
        # One message: the plugin drops a link whose command failed, so a second
        # publish would race that disconnect.
        commands = f"revoke 999999 device {device.device_id}\nheartbeat 999999"
        link.publish("$CONTROL/fleet/v1", commands.encode())
        pair.b.wait_broker_log(r"fleet: 2 of 2 control command\(s\) failed", after=mark)
        _still_serves(pair, session, device)
        assert f"revoked device={device.device_id}" not in pair.b.broker_log.read_text()
    finally:
        session.close()
        link.close()


@pytest.mark.parametrize("client_id", [f"{SIDECAR_CN}@", f"{SIDECAR_CN}@a/b", f"{SIDECAR_CN}x"])
def test_a_sidecar_certificate_needs_its_own_or_a_peer_client_id(
    pair: Pair, client_id: str
) -> None:
    mark = pair.a.log_mark()
    link = pair.peer_link(pair.a, client_id)
    try:
        assert not link.open(), f"{client_id!r} was let in"
    finally:
        link.close()
    pair.a.wait_broker_log("reason=client_id_mismatch", after=mark)


def test_a_peer_that_is_down_locks_nobody_out_and_takeover_resumes(pair: Pair) -> None:
    device = pair.enroll()
    pair.b.stop_broker()
    try:
        # Node a's announcement of this admission has nowhere to go: it is not needed.
        on_a = pair.connect(pair.a, device)
        _still_serves(pair, on_a, device)
    finally:
        mark_a = pair.a.sidecar_log.stat().st_size
        mark_b = pair.b.sidecar_log.stat().st_size
        pair.b.start_broker()
    on_b: Session | None = None
    try:
        # Both sidecars reconnect by themselves: a's peer link, and b's link to its broker.
        pair.a.wait_sidecar_log("session link to peer broker", after=mark_a, timeout=20)
        pair.b.wait_sidecar_log("resynced the plugin", after=mark_b, timeout=20)
        on_b = pair.connect(pair.b, device)
        assert on_a.disconnected.wait(TAKEOVER_DEADLINE + 3), "no takeover after" + _tails(pair)
        _still_serves(pair, on_b, device)
    finally:
        on_a.close()
        if on_b is not None:
            on_b.close()
