"""Every change to amqtt internals, in one place: amqtt 0.12.1 made fit for mTLS devices.

amqtt has no API for what an mTLS broker needs (authenticate before touching
sessions, close a connection, enforce keep-alive), so this module subclasses
its broker and protocol handler and overrides private methods. Each override
names the defect it closes (numbers as in ../shared/notes/amqtt-0.12.1.md) and
was written against amqtt **0.12.1** exactly: :func:`require_amqtt_version`
refuses to start with any other version, because a private method that moved
or changed would silently reopen a hole. Each defect has an attack test in
tests/integration/broker/test_amqtt_defects.py.

1. no-certificate clients got CONNACK 0 (CERT_OPTIONAL hard-coded)
   -> ``_create_ssl_context`` returns our context (CERT_REQUIRED).
2. clean_session=False resumed a stored Session and auth saw its OLD ssl_object
   -> authentication runs on THIS connection's certificate (tracked per
   connection, see gate.CURRENT_CONNECTION) before any session is looked up;
   a resumed session gets the new ssl_object.
3. session bookkeeping before authentication (a failed CONNECT with a victim's
   client id wiped or kicked the victim)
   -> ``_initialize_client_session`` authenticates first and refuses with
   CONNACK 5 before reading or changing ``_sessions``.
4. takeover with clean_session=True left the old connection up
   -> the old connection is closed (and its disconnect handled) before the
   new session replaces it; same path for clean_session=False.
5. sessions of rejected CONNECTs never expired
   -> a rejected CONNECT never creates a session; persistent sessions expire
   after ``session_expiry_interval``; a revoked device's sessions are deleted.
6. message loss under subscribe churn (dict iterated while awaiting)
   -> ``_run_broadcast`` iterates snapshots; retained-message replay at
   connect neither iterates a live dict across awaits nor suspends; filters
   nobody subscribes any more are deleted (stock keeps them forever, so churn
   made every broadcast slower until deliveries fell behind by minutes).
7. keep-alive not enforced (``handle_read_timeout`` was ``pass``)
   -> the connection is closed after 1.5 x keep-alive without a packet, so
   dead devices time out and their wills fire.
Found while hardening (not in the note):
9. at connect amqtt replays retained messages for EVERY filter anyone
   subscribed to, to the connecting client, without an ACL check: device A
   received device B's retained messages -> only the session's own
   subscriptions are replayed, each message through the ACL.
10. after a clean_session=False takeover the old connection's disconnect
   handling marked the shared session "disconnected" while the new connection
   was live -> the old connection is fully closed before the session resumes.
11. the Last Will was published without any topic check: device A's will on
   ``devices/B/cmd`` (retained) reached B and stayed retained -> the Will topic
   meets the PUBLISH rule at CONNECT (gate.authorize); a CONNECT whose will the
   device may not publish is refused ("not authorized", ``will_not_allowed``).
   A revoked (kicked) session's will is dropped. Attacked in test_amqtt_will.py.
12. a PUBLISH whose topic name holds a wildcard raised MQTTError while it was
   being decoded; the reader loop logged "Message discarded" and read on in the
   middle of the packet, so the connection hung (no PUBACK, no PINGRESP, no
   close) -> such a PUBLISH is a protocol violation that closes the connection
   (MQTT-3.3.2-2), as any other undecodable packet does.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import math
import ssl
from collections.abc import Awaitable
from typing import Any

from amqtt.broker import Broker  # type: ignore[import-untyped]
from amqtt.errors import AMQTTError, MQTTError, NoDataError  # type: ignore[import-untyped]
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket  # type: ignore[import-untyped]
from amqtt.mqtt.constants import QOS_1, QOS_2  # type: ignore[import-untyped]
from amqtt.mqtt.protocol.broker_handler import (  # type: ignore[import-untyped]
    BrokerProtocolHandler,
)
from amqtt.mqtt.publish import PublishVariableHeader  # type: ignore[import-untyped]

from broker_plugins.amqtt.gate import CURRENT_CONNECTION, Connection, ConnectionGate
from fleet.kernel.errors import ConfigError
from fleet.records import RevocationEvent, RevocationKind

AMQTT_VERSION = "0.12.1"
KEEPALIVE_FACTOR = 1.5  # MQTT-3.1.2-24: one and a half times the keep-alive
SESSION_DEVICE_ID = "fleet.device_id"
SESSION_SERIAL = "fleet.serial"
SESSION_CONNECTION = "fleet.connection"
_OLD_CONNECTION_CLOSE_SECONDS = 5.0

log = logging.getLogger("fleet.broker")


def require_amqtt_version() -> None:
    """Refuse to run on an amqtt these overrides were not written and tested against."""
    found = importlib.metadata.version("amqtt")
    if found != AMQTT_VERSION:
        raise ConfigError(
            f"fleet-broker amqtt was hardened against amqtt {AMQTT_VERSION}, found {found}",
            hint=f"Install exactly amqtt=={AMQTT_VERSION} (pip install amqtt=={AMQTT_VERSION}).",
        )


class ProtocolViolation(Exception):
    """A client broke MQTT in a way that leaves its stream unreadable: close it."""


_stock_publish_header = PublishVariableHeader.from_stream.__func__


async def _publish_header_or_close(cls: Any, reader: Any, fixed_header: Any) -> Any:
    # Defect 12: amqtt's reader loop swallows MQTTError and reads on mid-packet. Any
    # other exception ends the loop and closes the connection, which is what MQTT
    # requires of a PUBLISH with a wildcard in its topic name.
    try:
        return await _stock_publish_header(cls, reader, fixed_header)
    except MQTTError as exc:
        raise ProtocolViolation(str(exc)) from exc


PublishVariableHeader.from_stream = classmethod(_publish_header_or_close)


class HardenedHandler(BrokerProtocolHandler):  # type: ignore[misc]
    """amqtt's broker protocol handler with keep-alive enforcement (defect 7)."""

    fleet_connection: Connection | None = None

    def handle_read_timeout(self) -> None:
        # amqtt 0.12.1: the reader waits 1.5 x keep-alive (we set session.keep_alive
        # so) for the next fixed header, then calls this, which was a no-op.
        # Aborting the transport ends the reader with EOF: an abnormal disconnect,
        # so the will fires as MQTT requires.
        conn = self.fleet_connection
        if conn is not None and conn.kicked is None:
            log.info(
                "session closed: keep-alive expired",
                extra={
                    "fields": {
                        "event": "keepalive_expired",
                        "device_id": conn.device_id,
                        "serial": None if conn.serial is None else f"{conn.serial:x}",
                    }
                },
            )
            conn.kicked = "keepalive"
            if not conn.transport.is_closing():
                conn.transport.abort()


class HardenedBroker(Broker):  # type: ignore[misc]
    """amqtt 0.12.1 ``Broker`` with the defects above closed. Construct inside a running loop."""

    def __init__(
        self, config: dict[str, Any], *, gate: ConnectionGate, ssl_context: ssl.SSLContext
    ) -> None:
        require_amqtt_version()
        super().__init__(config)
        self.fleet_gate = gate
        self._fleet_ssl_context = ssl_context
        self._fleet_tasks: set[asyncio.Task[Any]] = set()
        self.keepalive_timeouts = 0

    # -- defect 1 ----------------------------------------------------------------------
    def _create_ssl_context(self, listener: Any) -> ssl.SSLContext:
        # Stock: CERT_OPTIONAL, so a client without a certificate gets CONNACK 0.
        if self._fleet_ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise ConfigError("the broker TLS context must require client certificates")
        return self._fleet_ssl_context

    # -- connection tracking -----------------------------------------------------------
    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        peer_der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        peer = writer.get_extra_info("peername")
        remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        conn = Connection(transport=writer.transport, peer_der=peer_der, remote=remote)
        token = CURRENT_CONNECTION.set(conn)
        try:
            await super().stream_connected(reader, writer, listener_name)
        except Exception:
            log.exception("connection handling failed", extra={"fields": {"remote": remote}})
        finally:
            CURRENT_CONNECTION.reset(token)
            if not writer.transport.is_closing():
                writer.transport.abort()
            self.fleet_gate.release(conn)
            self._settle_session(conn)

    def _settle_session(self, conn: Connection) -> None:
        # A connection revoked between admission and CONNACK leaves amqtt's
        # session "connected" with no connection behind it (defect 5's cousin):
        # mark it disconnected so it expires (or resumes) like any other.
        session = conn.session
        if session is None or not session.transitions.is_connected():
            return
        entry = self._sessions.get(session.client_id)
        if entry is not None and entry[0] is session and entry[1].fleet_connection is conn:
            session.transitions.disconnect()
            if session.clean_session or conn.kicked == "revoked":
                self._spawn(self._cleanup_session(session.client_id))

    async def ws_connected(self, *args: Any, **kwargs: Any) -> None:
        # Only the mTLS TCP listener is configured; never serve websockets.
        raise AMQTTError("websocket listeners are not supported by fleet-broker")

    # -- defects 2, 3, 4, 5, 7, 10 -----------------------------------------------------
    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[Any, Any]:
        conn = CURRENT_CONNECTION.get()
        if conn is None:  # pragma: no cover - stream_connected always sets it
            await writer.close()
            raise AMQTTError("connection is not tracked")
        try:
            handler, incoming = await HardenedHandler.init_from_connect(
                reader, writer, self.plugins_manager
            )
        except MQTTError:
            await writer.close()
            raise
        except (AMQTTError, NoDataError) as exc:
            await writer.close()
            raise AMQTTError(exc) from exc
        handler.fleet_connection = conn

        # Defects 2 and 3: decide on THIS connection's certificate, before any
        # existing session is looked at, let alone changed. The plugins (our
        # FleetAuthPlugin) read the certificate from the connection, not the session.
        if not await super()._authenticate(incoming, None):
            await self._refuse(handler, writer)
            raise MQTTError(f"connect refused for client id {incoming.client_id!r}")

        client_id: str = incoming.client_id
        # Sessions bound to a certificate are not anonymous; the username is the
        # device id whatever the client sent (amqtt uses it in logs).
        incoming.username = conn.device_id
        incoming.password = None
        if incoming.keep_alive > 0:  # defect 7
            incoming.keep_alive = math.ceil(incoming.keep_alive * KEEPALIVE_FACTOR)

        existing = self._sessions.get(client_id)
        if existing is not None:
            # Defects 4 and 10: a takeover closes the previous connection
            # completely (its disconnect handled) before the new one proceeds.
            await self._close_previous_connection(existing[0], existing[1])
            if conn.kicked is not None:  # revoked while we waited
                raise MQTTError("connection closed during takeover")

        if incoming.clean_session:
            await self._delete_session(client_id)
            incoming.parent = 0
            session = incoming
        elif client_id in self._sessions:
            session, _ = self._sessions[client_id]
            # clean_session too: a device that last connected with a clean session and
            # now resumes a persistent one must keep its offline QoS 1 messages.
            for field in (
                "clean_session",
                "will_flag",
                "will_message",
                "will_topic",
                "will_qos",
                "will_retain",
            ):
                setattr(session, field, getattr(incoming, field))
            session.keep_alive = incoming.keep_alive
            session.username = incoming.username
            session.password = None
            # Defect 2: never keep the previous connection's TLS object.
            session.ssl_object = incoming.ssl_object
            session.parent = 1
        else:
            incoming.parent = 0
            session = incoming
        session.attributes[SESSION_DEVICE_ID] = conn.device_id
        session.attributes[SESSION_SERIAL] = conn.serial
        session.attributes[SESSION_CONNECTION] = conn
        conn.session = session

        def drop_will() -> None:
            # A revoked device publishes nothing more, not even its will.
            if conn.kicked == "revoked":
                session.will_flag = False

        conn.on_kick = drop_will
        return handler, session

    async def _refuse(self, handler: Any, writer: Any) -> None:
        with contextlib.suppress(Exception):
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
        with contextlib.suppress(Exception):
            await writer.close()

    async def _close_previous_connection(self, old_session: Any, old_handler: Any) -> None:
        old_conn = old_session.attributes.get(SESSION_CONNECTION)
        if not old_session.transitions.is_connected():
            return
        self.fleet_gate.metrics.kicked.labels(cause="takeover").inc()
        if isinstance(old_conn, Connection):
            old_conn.close("takeover")
        with contextlib.suppress(Exception):
            await old_handler.handle_connection_closed()
        if isinstance(old_conn, Connection):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(old_conn.finished.wait(), _OLD_CONNECTION_CLOSE_SECONDS)

    async def _authenticate(self, session: Any, listener: Any) -> bool:
        # amqtt calls this AFTER its session bookkeeping; the decision was taken
        # before it (above), so only report it — never re-run plugins on a
        # resumed session whose attributes belong to an earlier connection.
        conn = CURRENT_CONNECTION.get()
        return conn is not None and conn.authenticated and conn.kicked is None

    async def _handle_disconnect(
        self, client_session: Any, handler: Any, disconnect_waiter: Any
    ) -> None:
        current = self._sessions.get(client_session.client_id)
        if current is not None and current[0] is client_session and current[1] is not handler:
            # Defect 10: a newer connection owns this session now.
            await self._stop_handler(handler)
            return
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)

    # -- defect 5: revoked devices' sessions ------------------------------------------
    def forget_revoked(self, event: RevocationEvent) -> None:
        """Delete the stored sessions of a revoked device (cache subscriber)."""
        if event.kind is not RevocationKind.DEVICE or not event.device_id:
            return
        self._spawn(self._forget_device(event.device_id))

    async def _forget_device(self, device_id: str) -> None:
        for conn in self.fleet_gate.connections_of(device_id):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.finished.wait(), _OLD_CONNECTION_CLOSE_SECONDS)
        entry = self._sessions.get(device_id)
        if entry is not None and not entry[0].transitions.is_connected():
            await self._cleanup_session(device_id)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._fleet_tasks.add(task)
        task.add_done_callback(self._fleet_tasks.discard)

    # -- defects 6 and 9 ---------------------------------------------------------------
    async def _run_broadcast(self, running_tasks: Any) -> None:
        # Stock 0.12.1 iterates self._subscriptions and each subscriber list while
        # awaiting topic plugins: "dictionary changed size during iteration"
        # dropped deliveries. Iterate snapshots; the receive check is the
        # synchronous ACL (no await inside the loop).
        broadcast = await self._broadcast_queue.get()
        topic = broadcast["topic"]
        for k_filter, subscriptions in list(self._subscriptions.items()):
            if not self._matches(topic, k_filter):
                continue
            for target_session, sub_qos in list(subscriptions):
                qos = broadcast.get("qos", sub_qos)
                if not self._may_receive(target_session, topic):
                    continue
                state = target_session.transitions.state
                if (
                    state != "connected"
                    and not target_session.clean_session
                    and qos in (QOS_1, QOS_2)
                    and not target_session.is_anonymous
                ):
                    await self._retain_broadcast_message(broadcast, qos, target_session)
                    continue
                if state != "connected":
                    continue
                handler = self._get_handler(target_session)
                if handler:
                    running_tasks.append(
                        asyncio.ensure_future(
                            handler.mqtt_publish(topic, broadcast["data"], qos, retain=False)
                        )
                    )

    def _del_subscription(self, a_filter: str, session: Any) -> int:
        # Stock 0.12.1 leaves an empty list behind for every filter ever
        # unsubscribed: under churn the dict grows without bound and every
        # broadcast walks all of it (deliveries fall minutes behind; memory grows).
        deleted: int = super()._del_subscription(a_filter, session)
        if a_filter in self._subscriptions and not self._subscriptions[a_filter]:
            del self._subscriptions[a_filter]
        return deleted

    async def _del_all_subscriptions(self, session: Any) -> None:
        for a_filter in list(self._subscriptions):
            self._del_subscription(a_filter, session)

    def _may_receive(self, session: Any, topic: str) -> bool:
        device_id = session.attributes.get(SESSION_DEVICE_ID)
        return isinstance(device_id, str) and self.fleet_gate.acl.may_receive(device_id, topic)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Any
    ) -> None:
        # Called by stock code (a) after a SUBSCRIBE was granted and (b) at connect
        # for EVERY filter in self._subscriptions, whoever subscribed it (defect 9),
        # inside a loop over that live dict (defect 6). So: only the session's own
        # subscriptions, each message through the ACL, and no suspension here.
        topic_filter, qos = subscription
        subscribers = self._subscriptions.get(topic_filter, ())
        if not any(s.client_id == session.client_id for s, _ in subscribers):
            return
        handler = self._get_handler(session)
        if handler is None:
            return
        for topic, retained in list(self._retained_messages.items()):
            if self._matches(topic, topic_filter) and self._may_receive(session, topic):
                self._spawn(
                    handler.mqtt_publish(
                        retained.topic, retained.data, min(qos, retained.qos or qos), retain=True
                    )
                )

    def find_port(self, listener_name: str = "default") -> int:
        """The TCP port a listener is bound to (useful with port 0)."""
        server = self._servers[listener_name].instance
        port: int = server.sockets[0].getsockname()[1]
        return port

    async def shutdown(self) -> None:
        await super().shutdown()
        for task in list(self._fleet_tasks):
            task.cancel()
        await asyncio.gather(*self._fleet_tasks, return_exceptions=True)
