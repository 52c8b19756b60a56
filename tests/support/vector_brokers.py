"""Running the trust vectors against a real broker over real MQTT (amqtt and Mosquitto alike).

A runner gives a :class:`BrokerUnderTest` (its port and how to read its
refusal log and see a connection end); :func:`check_admission` and
:func:`check_acl` do the rest the same way for every broker.

How each outcome is observed:

* admission: CONNACK 0 is "allow"; a CONNACK refusal must come with a refusal
  log line for this certificate's serial whose reason is the expected one; a
  TLS refusal (alert in or right after the handshake) passes only where the
  table names this enforcer in the case's ``tls_layer``. Python's asyncio TLS
  server closes a refused handshake without sending its alert, so a close with
  no CONNACK and no decision of the plugin in the log counts as a TLS refusal.
* subscribe: the SUBACK code (0x80 is a denial; so is a closed connection,
  the broker's answer to a malformed filter).
* publish: a subscriber of the tree the topic lies in (the publisher itself,
  or the other device) sees the message or not. Absence is proven with a
  sentinel: after the probe (PUBACK, or PINGRESP for QoS 0) the subscriber
  publishes a sentinel to its own tree and waits for it; the probe, had it
  been routed, would have been delivered first.
* will: the device connects with the will and drops the TCP connection
  without DISCONNECT; once the broker has handled the drop, the subscriber
  (the other device) proves presence or absence the same way. For the own
  tree the observer is the device's own persistent session, resumed; amqtt
  sends a resumed session's queue after newer messages, so there the will is
  awaited for ``OFFLINE_QUEUE_WAIT`` seconds instead. A CONNACK refusal is a
  denial.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import ssl
from collections.abc import Callable
from typing import Protocol

from cryptography.hazmat.primitives.serialization import Encoding

from fleet.records import (
    CertificateRecord,
    DeviceState,
    ManifestEntry,
    RevocationReason,
)
from fleet.store.protocol import Store
from tests.support.mqtt_raw import SUBACK_FAILURE, ConnectOutcome, Message, RawClient, Will
from tests.support.mqtt_raw import client_context as raw_context
from tests.support.vectors import TABLE
from tests.vectors.generate import Generated
from tests.vectors.table import AclCase, AdmissionCase

# How long a resumed session is given to receive its queued will. Only a will the
# broker does NOT deliver to the device's own tree waits this long.
OFFLINE_QUEUE_WAIT = 3.0


class BrokerUnderTest(Protocol):
    name: str  # the enforcer's key in the table's tls_layer
    port: int

    def log_mark(self) -> int: ...

    def refusal_reason(self, serial_hex: str | None, client_id: str, after: int) -> str:
        """The reason of the refusal logged after ``after`` for this serial (or AssertionError)."""
        ...

    def decision_logged(self, serial_hex: str | None, client_id: str, after: int) -> bool:
        """Whether the plugin logged any decision (allow or refuse) for this connection."""
        ...

    def wait_dropped(self, client_id: str, after: int) -> None:
        """Return once the broker has handled the end of ``client_id``'s connection."""
        ...


# -- revocation state ---------------------------------------------------------------------


async def seed_revocations(store: Store, generated: Generated, *, stale_only: bool) -> None:
    """Record and revoke what the table's cases say is revoked (``stale_only``: stale cases)."""
    now = dt.datetime.now(dt.UTC)
    for case in TABLE.admission:
        wanted = {"certificate", "device"} & set(case.revocation)
        if not wanted or (("stale" in case.revocation) != stale_only):
            continue
        device_id = case.device_id
        assert device_id is not None, f"{case.id}: a revoked case needs one valid CN"
        leaf = generated.leaves[case.id].cert
        await store.import_manifest([ManifestEntry(device_id, "00" * 32)], now)
        if "certificate" in wanted:
            # The record lets the store revoke this serial; "device" alone leaves the
            # serial unknown to the store, so only the device id is revoked.
            await store.record_certificate(
                CertificateRecord(
                    serial=leaf.serial_number,
                    device_id=device_id,
                    not_before=leaf.not_valid_before_utc,
                    not_after=leaf.not_valid_after_utc,
                    issued_at=now,
                    pem=leaf.public_bytes(Encoding.PEM).decode(),
                ),
                expected={DeviceState.REGISTERED},
                now=now,
            )
            await store.revoke_certificate(leaf.serial_number, RevocationReason.KEY_COMPROMISE, now)
        if "device" in wanted:
            await store.revoke_device(device_id, RevocationReason.KEY_COMPROMISE, now)


# -- admission ----------------------------------------------------------------------------


def case_context(generated: Generated, case_id: str | None) -> ssl.SSLContext:
    if case_id is None:
        return raw_context(generated.root)
    leaf = generated.leaves[case_id]
    return raw_context(generated.root, leaf.chain, leaf.key)


def check_admission(broker: BrokerUnderTest, generated: Generated, case: AdmissionCase) -> str:
    """Connect with the case's certificate and client id; assert the table's outcome.

    Returns how the broker decided ("allow", "plugin:<reason>", "tls") for reporting.
    """
    ctx = case_context(generated, case.id if case.cert is not None else None)
    serial = generated.leaves[case.id].serial_hex if case.cert is not None else None
    mark = broker.log_mark()
    outcome = RawClient.connect(broker.port, ctx, case.client_id)
    if outcome.client is not None:
        outcome.client.disconnect()
    where = f"{case.id} ({case.description})"
    if case.expect == "allow":
        assert outcome.kind == "accepted", (
            f"{where}: the kernel allows, {broker.name} gave {outcome}"
        )
        return "allow"
    assert outcome.kind != "accepted", f"{where}: {broker.name} ADMITTED; expected {case.expect}"
    if outcome.kind == "refused":
        reason = broker.refusal_reason(serial, case.client_id, mark)
        assert reason == case.expect, (
            f"{where}: {broker.name} refused with reason {reason!r}, "
            f"the kernel says {case.expect!r}"
        )
        return f"plugin:{reason}"
    # No CONNACK. A TLS alert says the TLS layer refused; so does a bare close when the
    # plugin logged no decision (Python's asyncio server closes without sending its alert).
    tls = outcome.kind == "tls" or not broker.decision_logged(serial, case.client_id, mark)
    why = case.tls_layer.get(broker.name)
    assert tls, f"{where}: {broker.name} decided but sent no CONNACK ({outcome})"
    assert why, (
        f"{where}: {broker.name} refused at the TLS layer ({outcome}); the table expects "
        f"{case.expect!r} from the plugin and lists no TLS-layer exception for {broker.name}"
    )
    return "tls"


# -- ACL --------------------------------------------------------------------------------


@dataclasses.dataclass
class Actors:
    """The two ACL devices of one case, and every connection the case opened."""

    broker: BrokerUnderTest
    generated: Generated
    opened: list[tuple[RawClient, str]] = dataclasses.field(default_factory=list)

    def ctx(self, who: str) -> ssl.SSLContext:
        return case_context(self.generated, f"acl-{who}")

    def device_id(self, who: str) -> str:
        return TABLE.acl_self if who == "self" else TABLE.acl_other

    def connect(self, who: str, **kwargs: object) -> ConnectOutcome:
        outcome = RawClient.connect(self.broker.port, self.ctx(who), self.device_id(who), **kwargs)  # type: ignore[arg-type]
        if outcome.client is not None:
            self.opened.append((outcome.client, who))
        return outcome

    def connected(self, who: str, **kwargs: object) -> RawClient:
        outcome = self.connect(who, **kwargs)
        assert outcome.client is not None, f"ACL device {who} could not connect: {outcome}"
        return outcome.client

    def subscriber(self, who: str, **kwargs: object) -> RawClient:
        client = self.connected(who, **kwargs)
        codes = client.subscribe(f"devices/{self.device_id(who)}/#", 1)
        assert codes is not None, f"ACL device {who} could not subscribe to its own tree"
        assert codes[0] != SUBACK_FAILURE, f"{who} was refused its own tree"
        return client

    def close_cleanly(self, client: RawClient, who: str) -> None:
        """DISCONNECT and wait until the broker has handled it (the next case starts clean)."""
        if client.closed:  # the broker closed it (and logged that) already
            return
        mark = self.broker.log_mark()
        client.disconnect()
        self.broker.wait_dropped(self.device_id(who), mark)

    def finish(self, *, strict: bool) -> None:
        """Close what the case left open, so the next case starts from nothing.

        ``strict``: a connection the broker does not let go of is an error (the
        case itself passed); otherwise the case's own failure is what is reported.
        """
        for client, who in self.opened:
            try:
                self.close_cleanly(client, who)
            except AssertionError:
                if strict:
                    raise


def owner_of(topic: str) -> str:
    """Whose subscription would receive ``topic``: the other device's tree, else our own."""
    other = f"devices/{TABLE.acl_other}"
    return "other" if topic == other or topic.startswith(other + "/") else "self"


def _seen(payload: bytes) -> Callable[[Message], bool]:
    return lambda m: m.payload == payload


def delivered_before_sentinel(observer: RawClient, observer_id: str, probe: bytes) -> bool:
    """Publish a sentinel to the observer's own tree; True if ``probe`` arrived before it."""
    sentinel = b"sentinel:" + secrets.token_hex(8).encode()
    assert observer.publish(f"devices/{observer_id}/sentinel", sentinel, qos=1), (
        "the observer lost its connection"
    )
    assert observer.wait_for(_seen(sentinel), 5) is not None, "the sentinel never came back"
    return any(m.payload == probe for m in observer.messages)


def check_acl(broker: BrokerUnderTest, generated: Generated, case: AclCase) -> str:
    actors = Actors(broker, generated)
    operation = {"subscribe": _subscribe, "publish": _publish, "will": _will}[case.op]
    try:
        allowed, how = operation(actors, case)
    except BaseException:
        actors.finish(strict=False)
        raise
    actors.finish(strict=True)
    expected = case.expect == "allow"
    assert allowed == expected, (
        f"{case.id} ({case.description}): {broker.name} {'allowed' if allowed else 'denied'} "
        f"{case.op} {case.topic!r} ({how}); the kernel says {case.expect}"
    )
    return how


def _subscribe(actors: Actors, case: AclCase) -> tuple[bool, str]:
    client = actors.connected("self")
    codes = client.subscribe(case.topic, case.qos)
    actors.close_cleanly(client, "self")
    if codes is None:
        return False, "connection closed on SUBSCRIBE"
    granted = codes[0] != SUBACK_FAILURE
    if granted:
        assert codes[0] <= case.qos, f"granted QoS {codes[0]} above the {case.qos} asked"
    return granted, f"SUBACK {codes[0]:#x}"


def _publish(actors: Actors, case: AclCase) -> tuple[bool, str]:
    owner = owner_of(case.topic)
    observer = actors.subscriber(owner)
    publisher = observer if owner == "self" else actors.connected("self")
    probe = f"{case.id}:{secrets.token_hex(8)}".encode()
    acked = publisher.publish(case.topic, probe, qos=case.qos, retain=case.retain, timeout=2)
    answering = publisher.ping(2)  # the broker has read (and routed or dropped) the probe
    dropped = publisher.closed
    if publisher is observer and not answering:
        # Nothing was delivered before the broker closed (or stopped serving) the connection.
        assert not any(m.payload == probe for m in observer.messages)
        state = "disconnected" if dropped else "no longer answered (no PUBACK, no PINGRESP)"
        return False, f"publisher {state} after the probe"
    delivered = delivered_before_sentinel(observer, actors.device_id(owner), probe)
    if case.retain:  # leave no retained message behind for later cases
        observer.publish(case.topic, b"", qos=1, retain=True)
    if publisher is not observer:
        actors.close_cleanly(publisher, "self")
    actors.close_cleanly(observer, owner)
    how = "delivered" if delivered else "not delivered"
    if dropped:
        how += " (publisher disconnected)"
    elif case.qos and not acked:
        how += " (no PUBACK)"
    return delivered, how


def _will(actors: Actors, case: AclCase) -> tuple[bool, str]:
    owner = owner_of(case.topic)
    probe = f"{case.id}:{secrets.token_hex(8)}".encode()
    will = Will(case.topic, probe, qos=case.qos, retain=case.retain)
    if owner == "other":
        observer = actors.subscriber("other")
        outcome = actors.connect("self", will=will)
        if outcome.client is None:
            actors.close_cleanly(observer, "other")
            return False, f"CONNECT with this will refused: {outcome}"
        mark = actors.broker.log_mark()
        outcome.client.abort()
        actors.broker.wait_dropped(TABLE.acl_self, mark)
        delivered = delivered_before_sentinel(observer, TABLE.acl_other, probe)
        if case.retain:
            observer.publish(case.topic, b"", qos=1, retain=True)
        actors.close_cleanly(observer, "other")
        return delivered, "will delivered" if delivered else "will not delivered"
    # Our own tree: only our own (persistent) session can read it once we are gone.
    actors.close_cleanly(actors.subscriber("self", clean_session=False), "self")
    outcome = actors.connect("self", will=will, clean_session=False)
    if outcome.client is None:
        _forget_session(actors)
        return False, f"CONNECT with this will refused: {outcome}"
    mark = actors.broker.log_mark()
    outcome.client.abort()
    actors.broker.wait_dropped(TABLE.acl_self, mark)
    resumed = actors.connected("self", clean_session=False)
    # amqtt sends a resumed session's queue from a task of its own, after newer
    # messages: no sentinel can prove absence here, so wait for the will a while.
    delivered = resumed.wait_for(_seen(probe), OFFLINE_QUEUE_WAIT) is not None
    if case.retain:
        resumed.publish(case.topic, b"", qos=1, retain=True)
    actors.close_cleanly(resumed, "self")
    _forget_session(actors)
    return delivered, "will delivered" if delivered else "will not delivered"


def _forget_session(actors: Actors) -> None:
    """A clean-session connect and disconnect: no persistent session left for later cases."""
    actors.close_cleanly(actors.connected("self", clean_session=True), "self")
