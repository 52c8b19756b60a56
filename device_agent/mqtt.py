"""The device's MQTT session over mutual TLS (paho-mqtt 2.x).

One thread owns the paho client and its socket: it connects, reads and
writes, sends heartbeats, and applies commands (publish, identity swap, stop)
that other threads queue for it. Nothing else touches the client, so paho's
state is never shared between threads, and the thread sleeps in ``select()``
until the socket, a command or the next deadline (heartbeat, keepalive) needs
it: an idle session costs a few wakeups a minute.

Delivery is at-least-once for QoS 1: the session is persistent (MQTT 3.1.1,
clean session off, client id = device id) and paho keeps unacknowledged and
not-yet-sent QoS 1 messages in its outgoing queue across reconnects, resending
in-flight ones with DUP. An identity swap (after a renewal) is a clean
DISCONNECT, a certificate reload and a reconnect on the same client, so that
queue survives it.

The TLS identity and the context that presents it are in ``device_agent.mqtt_tls``;
the commands other threads queue for the loop are in ``device_agent.mqtt_commands``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import random
import select
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from device_agent.backoff import STABLE_AFTER, Backoff
from device_agent.health import (
    BrokerLink,
    BrokerState,
    classify_connack,
    classify_tls_failure,
    suspect_revoked,
)
from device_agent.mqtt_commands import CommandQueue, Publish, Stop, Swap
from device_agent.mqtt_tls import (
    TlsIdentity,
    broker_dates_problem,
    certificate_serial,
    tls_context,
)
from fleet.kernel.clock import Clock, SystemClock
from fleet.kernel.reasons import Reason

log = logging.getLogger("device_agent.mqtt")


def status_topic(device_id: str) -> str:
    return f"devices/{device_id}/status"


@dataclasses.dataclass(frozen=True)
class SessionSettings:
    host: str
    port: int
    device_id: str
    trust: bytes  # fleet root (PEM): the broker's certificate must chain to it
    heartbeat_interval: float = 60.0
    keepalive: int = 60
    reconnect_min: float = 1.0
    reconnect_max: float = 300.0
    connect_timeout: float = 10.0
    max_queued: int = 1000  # outgoing messages kept while offline; beyond, publish is refused
    flush_timeout: float = 5.0  # on stop: how long to wait for QoS 1 acknowledgements
    # Judges the broker certificate's dates (the agent's clock; OpenSSL leaves them to it).
    clock: Clock = dataclasses.field(default_factory=SystemClock)


# Called on the loop thread at every change of the connection: the new state, and
# whether this refusal looks like a revocation worth asking the EST server about.
StateListener = Callable[[BrokerState, bool], None]


class MqttSession:
    """A persistent MQTT session for one device. ``start()``, then ``stop()``; thread-safe API.

    ``on_state`` hears every change of the connection (connected, refused with a
    reason, unreachable, backing off until when); see ``device_agent.health``.
    """

    def __init__(
        self,
        settings: SessionSettings,
        identity: TlsIdentity,
        *,
        status: Callable[[], Mapping[str, object]] | None = None,
        rng: random.Random | None = None,
        on_state: StateListener | None = None,
    ) -> None:
        self.settings = settings
        self._status = status
        self._on_state = on_state
        self._identity = identity
        self._serial = certificate_serial(identity.cert)
        self._context = tls_context(identity, settings.trust)  # fails early on bad files
        self._backoff = Backoff(settings.reconnect_min, settings.reconnect_max, rng)
        self._commands = CommandQueue()
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._connected = threading.Event()
        self._stopped = threading.Event()
        # Loop-thread state below.
        self._client = self._make_client()
        self._retry_at = 0.0
        self._connected_at: float | None = None
        self._next_heartbeat = 0.0
        self._heartbeat_seq = 0
        self._started = time.monotonic()
        self._unacked: set[int] = set()  # message ids of QoS 1 messages not yet acknowledged
        self._swaps_waiting: list[threading.Event] = []
        self._stopping = False
        self._last_failure = ""
        # What the last failure was (refused / unreachable / disconnected) and its reason code.
        self._failure_kind: tuple[BrokerLink, Reason] | None = None
        self._ever_connected = False
        self._connack_seen = False  # on the current connection
        self._after_kick = False  # a live session was closed by the other side
        self._suspicion_armed = True  # one revocation check per episode of refusals
        self.connections = 0  # successful CONNACKs so far
        self.connect_attempts = 0

    # -- public, any thread -------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def serial(self) -> str:
        """Serial (hex) of the certificate the session presents on its next handshake."""
        return self._serial

    def start(self) -> None:
        self._thread.start()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def publish(self, suffix: str, payload: bytes | str, qos: int = 1) -> None:
        """Queue a message for ``devices/<id>/<suffix>``; kept across reconnects (QoS 1)."""
        data = payload.encode() if isinstance(payload, str) else payload
        self._commands.send(Publish(f"devices/{self.settings.device_id}/{suffix}", data, qos))

    def swap_identity(self, identity: TlsIdentity, timeout: float | None = None) -> bool:
        """Reconnect presenting ``identity``; True once the broker accepted it within ``timeout``.

        The files are checked (loaded into a throwaway context) before the live
        session is touched, so a bad pair raises here and the session keeps
        its current identity.
        """
        tls_context(identity, self.settings.trust)
        done = threading.Event()
        self._commands.send(Swap(identity, done))
        return done.wait(timeout)

    def stop(self, timeout: float | None = None) -> bool:
        """Flush QoS 1 messages (up to ``flush_timeout``), disconnect, end the thread."""
        if self._thread.is_alive():
            self._commands.send(Stop())
            self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        if stopped:
            self._commands.close()
        return stopped

    # -- loop thread ----------------------------------------------------------

    def _make_client(self) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.settings.device_id,
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        client.tls_set_context(self._context)
        client.connect_timeout = self.settings.connect_timeout
        client.max_queued_messages_set(self.settings.max_queued)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_log = self._on_log
        client.enable_logger(logging.getLogger("device_agent.mqtt.paho"))
        client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive)
        return client

    def _run(self) -> None:
        try:
            self._emit(BrokerLink.CONNECTING)
            while self._apply_commands():
                if self._client.socket() is None:
                    wait = self._retry_at - time.monotonic()
                    if wait > 0:
                        self._commands.sleep(wait)
                    else:
                        self._connect()
                else:
                    self._service(self._deadline())
            self._shutdown()
        except Exception:
            log.exception("MQTT session thread failed; the agent will exit")
            raise
        finally:
            self._connected.clear()
            self._stopped.set()

    def _connect(self) -> None:
        self.connect_attempts += 1
        self._connack_seen = False
        host, port = self.settings.host, self.settings.port
        try:
            self._client.reconnect()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._failure_kind = classify_tls_failure(str(exc))
            self._last_failure = f"connecting to broker {host}:{port} failed: {exc}"
            self._schedule_retry(self._last_failure)
            return
        # The handshake is done; CONNACK (or a TLS alert from a broker that
        # refuses our certificate) arrives on the socket.

    def _schedule_retry(self, reason: str) -> None:
        self._connected.clear()
        now = time.monotonic()
        if self._connected_at is not None and now - self._connected_at >= STABLE_AFTER:
            self._backoff.reset()
        self._connected_at = None
        delay = self._backoff.next_delay()
        self._retry_at = now + delay
        attempt = self._backoff.failures
        log.warning("%s; reconnecting in %.1f s (attempt %d)", reason, delay, attempt)
        link, code = self._failure_kind or (BrokerLink.UNREACHABLE, Reason.TRANSPORT_ERROR)
        suspect = (
            link is BrokerLink.REFUSED
            and self._suspicion_armed
            and suspect_revoked(
                code, after_kick=self._after_kick, ever_connected=self._ever_connected
            )
        )
        if suspect:
            self._suspicion_armed = False
            log.warning(
                "the broker's refusal (%s) may mean this device was revoked; asking the EST server",
                code,
            )
        self._emit(
            link,
            reason=code,
            detail=reason,
            retry_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay),
            attempts=attempt,
            suspect=suspect,
        )
        self._failure_kind = None

    def _emit(
        self,
        link: BrokerLink,
        *,
        reason: str | None = None,
        detail: str = "",
        retry_at: dt.datetime | None = None,
        attempts: int = 0,
        suspect: bool = False,
    ) -> None:
        if self._on_state is None:
            return
        state = BrokerState(
            state=link,
            broker=f"{self.settings.host}:{self.settings.port}",
            since=dt.datetime.now(dt.UTC),
            reason=reason,
            detail=detail,
            retry_at=retry_at,
            attempts=attempts,
            pid=os.getpid(),
        )
        try:
            self._on_state(state, suspect)
        except Exception:
            # Reporting must never take the session down; the log says what failed.
            log.exception("recording the broker connection state failed")

    def _deadline(self) -> float:
        # Wake for the heartbeat, and often enough for paho's keepalive check.
        timeout = max(1.0, self.settings.keepalive / 4)
        if self._connected.is_set():
            timeout = min(timeout, self._next_heartbeat - time.monotonic())
        return max(0.0, timeout)

    def _service(self, timeout: float) -> None:
        client = self._client
        sock = client.socket()
        assert sock is not None
        # TLS may hold decrypted bytes that select() cannot see.
        buffered = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        wlist = [sock] if client.want_write() else []
        readable, writable, _ = select.select(
            [sock, self._commands.waker], wlist, [], 0.0 if buffered else timeout
        )
        if sock in readable or buffered:
            client.loop_read()
        if self._commands.waker in readable:
            self._commands.drain_wakeups()
        if client.socket() is not None and (sock in writable or client.want_write()):
            client.loop_write()
        if client.socket() is not None:
            client.loop_misc()
        if client.socket() is None:
            if not self._stopping:
                reason, self._last_failure = self._last_failure, ""
                self._schedule_retry(reason or "connection to the broker lost")
            return
        if self._connected.is_set() and time.monotonic() >= self._next_heartbeat:
            self._heartbeat()

    def _apply_commands(self) -> bool:
        """Apply queued commands; False once a stop was asked for."""
        while (command := self._commands.pop()) is not None:
            if isinstance(command, Publish):
                self._publish(command.topic, command.payload, command.qos)
            elif isinstance(command, Swap):
                self._apply_swap(command)
            else:
                self._stopping = True
        return not self._stopping

    def _publish(self, topic: str, payload: bytes, qos: int) -> None:
        info = self._client.publish(topic, payload, qos)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            log.warning(
                "outgoing queue full (%d messages); dropped a message for %s",
                self.settings.max_queued,
                topic,
            )
        elif qos > 0:
            # Not info.is_published(): it raises for a message queued while offline.
            self._unacked.add(info.mid)

    def _apply_swap(self, swap: Swap) -> None:
        old = self._serial
        if self._client.socket() is not None:
            self._client.disconnect()
            self._write_pending(deadline=time.monotonic() + 2.0)
            # A DISCONNECT still unsent (broker gone) is dropped with the socket.
            self._client._sock_close()  # no public "close now" in paho
        self._connected.clear()
        swap.identity.key.load_into(self._context, swap.identity.cert)
        self._identity = swap.identity
        self._serial = certificate_serial(swap.identity.cert)
        self._swaps_waiting.append(swap.done)
        self._backoff.reset()
        self._connected_at = None
        self._after_kick = False  # we closed it
        self._failure_kind = None
        self._last_failure = ""
        self._retry_at = 0.0  # reconnect at once with the new certificate
        log.info("reconnecting with the renewed certificate (serial %s, was %s)", self._serial, old)

    def _write_pending(self, deadline: float) -> None:
        client = self._client
        while client.socket() is not None and client.want_write() and time.monotonic() < deadline:
            sock = client.socket()
            assert sock is not None
            select.select([], [sock], [], max(0.0, deadline - time.monotonic()))
            if client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break

    def _heartbeat(self) -> None:
        self._heartbeat_seq += 1
        body: dict[str, object] = {
            "device_id": self.settings.device_id,
            "seq": self._heartbeat_seq,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "uptime_s": round(time.monotonic() - self._started),
            "cert_serial": self._serial,
        }
        if self._status is not None:
            body.update(self._status())
        self._publish(status_topic(self.settings.device_id), json.dumps(body).encode(), 1)
        self._next_heartbeat = time.monotonic() + self.settings.heartbeat_interval

    def _shutdown(self) -> None:
        client = self._client
        if client.socket() is not None and self._connected.is_set():
            deadline = time.monotonic() + self.settings.flush_timeout
            while self._pending_acks() and time.monotonic() < deadline:
                if client.socket() is None:
                    break
                self._service(min(0.5, max(0.0, deadline - time.monotonic())))
            left = self._pending_acks()
            if left:
                log.warning("stopping with %d QoS 1 message(s) not acknowledged", left)
        if client.socket() is not None:
            client.disconnect()
            self._write_pending(deadline=time.monotonic() + 2.0)
            client._sock_close()  # no public "close now" in paho
        log.info("MQTT session closed")

    def _pending_acks(self) -> int:
        return len(self._unacked)

    # -- paho callbacks (run on the loop thread) ------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        self._connack_seen = True
        if reason.is_failure:
            self._last_failure = f"broker refused the connection: {reason}"
            self._failure_kind = (BrokerLink.REFUSED, classify_connack(reason.value, str(reason)))
            return
        problem = broker_dates_problem(client, self.settings.clock.now())
        if problem is not None:  # before anything is published: hang up and retry later
            self._last_failure = f"the broker's TLS certificate is refused: {problem.detail}"
            self._failure_kind = (BrokerLink.REFUSED, problem.reason)
            client.disconnect()
            return
        self.connections += 1
        self._connected_at = time.monotonic()
        self._last_failure = ""
        self._failure_kind = None
        self._ever_connected = True
        self._after_kick = False
        self._suspicion_armed = True
        self._connected.set()
        self._emit(BrokerLink.CONNECTED)
        log.info(
            "connected to %s:%d as %s (certificate serial %s, session present: %s)",
            self.settings.host,
            self.settings.port,
            self.settings.device_id,
            self._serial,
            flags.session_present,
        )
        for done in self._swaps_waiting:
            done.set()
        self._swaps_waiting.clear()
        self._next_heartbeat = 0.0  # announce ourselves at once

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected and not self._stopping:
            self._after_kick = True  # closed by the broker (or the network), not by us
            if self._failure_kind is None:
                self._failure_kind = (BrokerLink.DISCONNECTED, Reason.TRANSPORT_ERROR)
        if not (was_connected or self._connack_seen or self._failure_kind or self._stopping):
            # TLS 1.3: our handshake completed, then the broker hung up without a word
            # (how a broker that rejects the client certificate often ends it).
            self._failure_kind = (BrokerLink.REFUSED, Reason.TLS_FAILED)
            self._last_failure = (
                "the broker closed the connection before answering CONNECT "
                "(it may not accept this certificate)"
            )
        if not self._last_failure and reason.is_failure:
            self._last_failure = f"connection to the broker lost ({reason})"

    def _on_log(self, client: paho.Client, userdata: Any, level: int, text: str) -> None:
        # paho reports a TLS alert received after the handshake (TLS 1.3 sends the
        # server's verdict on our certificate then) only as a log line.
        if level != paho.MQTT_LOG_ERR or "alert" not in text.lower():
            return
        link, code = classify_tls_failure(text)
        if link is BrokerLink.REFUSED:
            self._failure_kind = (link, code)
            self._last_failure = f"the broker ended the TLS session: {text}"

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        self._unacked.discard(mid)
