"""The connection gate: decision core + live-connection registry + refusal log and metrics.

The gate is the one place where a TLS connection becomes a device session. It
asks the trust kernel's ``admit_client``, then checks the CONNECT's Last Will
against the kernel's topic ACL (``may_publish``, the rule a PUBLISH meets),
registers every admitted connection by certificate serial and device id, and
closes those connections (transport abort, so no further byte is read from or
written to them) when the revocation cache reports an event. Admission and
registration happen in one synchronous step, so a revocation event cannot
slip between "decided" and "registered".

A Will on a topic the device may not publish to (another device's tree, a
``$`` topic, a wildcard) refuses the whole CONNECT with "not authorized" and
reason ``will_not_allowed``. Mosquitto's choices are refusing the connection
or silently dropping the will; refusing is the safer one: nothing is stored
that could ever be published, and a misconfigured device learns at once
instead of losing its will unnoticed.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fleet.kernel.acl import TopicAcl
from fleet.kernel.admission import (
    Allow,
    Decision,
    Deny,
    RevocationView,
    TrustPolicy,
    admit_client,
)
from fleet.kernel.reasons import BROKER_REFUSALS, Reason
from fleet.records import RevocationEvent, RevocationKind

log = logging.getLogger("fleet.broker")

_K = TypeVar("_K")


@dataclasses.dataclass(eq=False)
class Connection:
    """One TLS connection to the broker, from handshake to close."""

    transport: asyncio.WriteTransport
    peer_der: bytes | None  # this connection's leaf certificate, DER
    remote: str
    device_id: str | None = None
    serial: int | None = None
    authenticated: bool = False
    kicked: str | None = None  # why the broker closed it ("revoked", "keepalive", ...)
    finished: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    # Set by the broker: run just before a kick closes the transport (drop the will...).
    on_kick: Callable[[], None] | None = None
    session: Any = None  # the broker's session object, once admitted

    def close(self, why: str) -> None:
        if self.kicked is None:
            self.kicked = why
        if self.on_kick is not None:
            self.on_kick()
        if not self.transport.is_closing():
            self.transport.abort()


# The connection the current task serves (set by the broker for each client task).
CURRENT_CONNECTION: contextvars.ContextVar[Connection | None] = contextvars.ContextVar(
    "fleet_broker_connection", default=None
)


class BrokerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.refused = Counter(
            "fleet_broker_connects_refused", "Refused connects by reason", ["reason"], registry=r
        )
        for reason in (*BROKER_REFUSALS, Reason.WILL_NOT_ALLOWED):
            self.refused.labels(reason=reason.value)
        self.allowed = Counter("fleet_broker_connects_allowed", "Admitted connects", registry=r)
        self.live = Gauge("fleet_broker_live_connections", "Admitted, open connections", registry=r)
        self.kicked = Counter(
            "fleet_broker_sessions_closed", "Sessions the broker closed, by cause", ["cause"],
            registry=r,
        )  # fmt: skip
        self.revoke_to_kick = Histogram(
            "fleet_broker_revoke_to_disconnect_seconds",
            "From the revocation (store time) to the live session being closed",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )


class ConnectionGate:
    def __init__(
        self,
        *,
        policy: TrustPolicy,
        acl: TopicAcl,
        revocations: RevocationView,
        metrics: BrokerMetrics | None = None,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.policy = policy
        self.acl = acl
        self.revocations = revocations
        self.metrics = metrics or BrokerMetrics()
        self._now = now
        self._by_serial: dict[int, set[Connection]] = {}
        self._by_device: dict[str, set[Connection]] = {}

    # -- admission ---------------------------------------------------------------------
    def authorize(
        self, conn: Connection, client_id: str, *, will_topic: str | None = None
    ) -> Decision:
        """Decide, log a refusal, register an admission — all without yielding.

        ``will_topic`` is the CONNECT's Will topic (None without a Will).
        """
        leaf: x509.Certificate | None = None
        if conn.peer_der:
            try:
                leaf = x509.load_der_x509_certificate(conn.peer_der)
            except ValueError:
                leaf = None
        decision: Decision = admit_client(
            leaf, client_id, revocations=self.revocations, policy=self.policy, now=self._now()
        )
        if (
            isinstance(decision, Allow)
            and will_topic is not None
            and not self.acl.may_publish(decision.device_id, will_topic)
        ):
            decision = Deny(
                Reason.WILL_NOT_ALLOWED,
                f"will topic {will_topic[:128]!r} is not one the device may publish to",
                device_id=decision.device_id,
                serial=decision.serial,
            )
        if isinstance(decision, Deny):
            self.refuse(conn, client_id, decision)
            return decision
        conn.device_id, conn.serial = decision.device_id, decision.serial
        conn.authenticated = True
        self._by_serial.setdefault(decision.serial, set()).add(conn)
        self._by_device.setdefault(decision.device_id, set()).add(conn)
        self.metrics.allowed.inc()
        self.metrics.live.set(self.live_count())
        log.info(
            "connect allowed",
            extra={
                "fields": {
                    "event": "connect_allowed",
                    "device_id": decision.device_id,
                    "serial": f"{decision.serial:x}",
                    "remote": conn.remote,
                }
            },
        )
        return decision

    def refuse(self, conn: Connection, client_id: str, deny: Deny) -> None:
        self.metrics.refused.labels(reason=deny.reason.value).inc()
        log.warning(
            "connect refused",
            extra={
                "fields": {
                    "event": "connect_refused",
                    "reason": deny.reason.value,
                    "device_id": deny.device_id,
                    "serial": None if deny.serial is None else f"{deny.serial:x}",
                    "client_id": client_id[:128],
                    "remote": conn.remote,
                    "detail": deny.detail,
                }
            },
        )

    def release(self, conn: Connection) -> None:
        """Forget a connection that has ended (idempotent)."""
        conn.finished.set()
        if conn.serial is not None:
            _discard(self._by_serial, conn.serial, conn)
        if conn.device_id is not None:
            _discard(self._by_device, conn.device_id, conn)
        self.metrics.live.set(self.live_count())

    def live_count(self) -> int:
        return sum(len(c) for c in self._by_serial.values())

    def connections_of(self, device_id: str) -> set[Connection]:
        return set(self._by_device.get(device_id, ()))

    # -- revocation -------------------------------------------------------------------
    def on_revoked(self, event: RevocationEvent) -> None:
        """Close every live connection the event revokes (cache subscriber)."""
        targets: set[Connection] = set()
        for serial in event.serials:
            targets |= self._by_serial.get(serial, set())
        if event.device_id and self.revocations.is_device_revoked(event.device_id):
            targets |= self._by_device.get(event.device_id, set())
        started = time.monotonic()
        reason = (
            Reason.DEVICE_REVOKED
            if event.kind is RevocationKind.DEVICE
            else Reason.CERTIFICATE_REVOKED
        )
        for conn in targets:
            conn.close("revoked")
            self.metrics.kicked.labels(cause="revoked").inc()
            log.warning(
                "session closed: revoked",
                extra={
                    "fields": {
                        "event": "session_kicked",
                        "reason": reason.value,
                        "device_id": conn.device_id,
                        "serial": None if conn.serial is None else f"{conn.serial:x}",
                        "feed_seq": event.seq,
                        "revocation_reason": event.reason.value,
                    }
                },
            )
        if targets:
            lag = (self._now() - event.at).total_seconds() + (time.monotonic() - started)
            self.metrics.revoke_to_kick.observe(max(lag, 0.0))


def _discard(index: dict[_K, set[Connection]], key: _K, conn: Connection) -> None:
    conns = index.get(key)
    if conns is None:
        return
    conns.discard(conn)
    if not conns:
        del index[key]


__all__ = ["CURRENT_CONNECTION", "Allow", "BrokerMetrics", "Connection", "ConnectionGate"]
