"""`fleet-agent run`: keep the certificate renewed and the MQTT session up, for years.

Two threads. The MQTT session (``device_agent.mqtt``) owns the broker
connection. The main thread sleeps until the next renewal time the agent core
computes (2/3 of the lifetime with jitter, or the backoff after a failure),
renews, and hands the new identity to the session, which reconnects with it.
Signals only set flags and wake the main thread:

    SIGTERM, SIGINT   flush QoS 1 messages, disconnect, exit 0
    SIGUSR1           renew now (as ``fleet-agent renew --force``)
    SIGHUP            re-read the identity from the state directory (after an
                      out-of-band ``fleet-agent renew``) and reconnect if it changed

Failures never turn into a tight loop: after any failed renewal the next
attempt is at least the policy's backoff floor away (the core's exponential
backoff, or hours after a refusal, which may need an admin to act).

Every change of the broker connection is written to ``broker.json`` in the
state directory (atomically), so `fleet-agent status` in another process can
say "connected", "refused (reason), backing off until T" or "stopped".

Revocation ends the run: when the EST server answers ``certificate_revoked``
or ``device_revoked`` (at a renewal, or when asked because the broker's
refusal looked like a revocation: a TLS alert ``certificate revoked``, or
"not authorized" right after the broker closed a live session), the agent
disconnects, records it and exits ``EXIT_REVOKED`` (6); the systemd unit does
not restart it. A broker refusal alone never ends it: the broker cannot say
why it refuses, and a broker with stale revocation state refuses everyone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import random
import signal
import threading
from collections.abc import Callable, Mapping
from types import FrameType

from device_agent.agent import Agent
from device_agent.errors import (
    EXIT_OK,
    AgentError,
    ConfigError,
    Pending,
    Refused,
    Revoked,
    Transient,
)
from device_agent.health import BrokerLink, BrokerState
from device_agent.mqtt import MqttSession, SessionSettings
from device_agent.mqtt_tls import TlsIdentity
from device_agent.renewal import backoff_delay
from device_agent.state import Identity

log = logging.getLogger("device_agent.run")

# Sleep at most this long between looks at the clock: a device clock that
# jumps (NTP at boot, suspend) is noticed within the hour.
MAX_SLEEP = 3600.0


@dataclasses.dataclass(frozen=True)
class RunSettings:
    mqtt_host: str
    mqtt_port: int
    heartbeat: float = 60.0
    keepalive: int = 60
    reconnect_min: float = 1.0
    reconnect_max: float = 300.0


SessionFactory = Callable[..., MqttSession]


def parse_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6 literals) → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--mqtt {value!r}: expected HOST:PORT, e.g. broker.example.com:8883")
    return host.removeprefix("[").removesuffix("]"), int(port)


class Runner:
    def __init__(
        self,
        agent: Agent,
        settings: RunSettings,
        *,
        session_factory: SessionFactory = MqttSession,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.agent = agent
        self.settings = settings
        self._session_factory = session_factory
        self._rand = rand
        self._wake = threading.Event()
        self._stop = False
        self._renew_now = False
        self._reload = False
        self._retry_not_before: dt.datetime | None = None
        self._status: Mapping[str, object] = {}
        self._confirm = False  # the broker's refusal looked like a revocation: ask EST
        self._exit_code = EXIT_OK
        self._revoked: Revoked | None = None

    # -- requests (signal handlers, tests) ---------------------------------------------
    def request_stop(self) -> None:
        self._stop = True
        self._wake.set()

    def request_renewal(self) -> None:
        self._renew_now = True
        self._wake.set()

    def request_reload(self) -> None:
        self._reload = True
        self._wake.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            if signum == signal.SIGUSR1:
                self.request_renewal()
            elif signum == signal.SIGHUP:
                self.request_reload()
            else:
                self.request_stop()

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
            signal.signal(signum, handler)

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> int:
        """Run until asked to stop; the exit code (0, or the error's when it cannot start)."""
        identity = self._initial_identity()
        if identity is None:
            return EXIT_OK  # stopped while waiting for a first identity
        config = self.agent.config()
        trust = self.agent.cacerts(config).root_pem()
        session = self._session_factory(
            SessionSettings(
                host=self.settings.mqtt_host,
                port=self.settings.mqtt_port,
                device_id=identity.device_id,
                trust=trust,
                heartbeat_interval=self.settings.heartbeat,
                keepalive=self.settings.keepalive,
                reconnect_min=self.settings.reconnect_min,
                reconnect_max=self.settings.reconnect_max,
                clock=self.agent.clock,
            ),
            _tls(identity),
            status=lambda: self._status,
            on_state=self._broker_changed,
        )
        self._update_status(identity)
        log.info(
            "running as %s (serial %x, valid until %s); MQTT broker %s:%d",
            identity.device_id, identity.serial, identity.not_after.isoformat(),
            self.settings.mqtt_host, self.settings.mqtt_port,
        )  # fmt: skip
        session.start()
        try:
            while not self._stop:
                identity = self._cycle(identity, session)
        finally:
            log.info("stopping: flushing queued messages and disconnecting")
            session.stop(timeout=session.settings.flush_timeout + 10)
            self._record_stopped()
        if self._revoked is not None:
            log.error(
                "stopped for good (exit %d): %s", self._exit_code, self._revoked.diagnostics()
            )
        else:
            log.info("stopped")
        return self._exit_code

    def _broker_changed(self, state: BrokerState, suspect_revoked: bool) -> None:
        """From the MQTT thread: record the connection state; wake the main thread to ask EST."""
        self.agent.state.save_broker(state)
        if suspect_revoked:
            self._confirm = True
            self._wake.set()

    def _record_stopped(self) -> None:
        revoked = self._revoked
        try:
            self.agent.state.save_broker(
                BrokerState(
                    state=BrokerLink.STOPPED,
                    broker=f"{self.settings.mqtt_host}:{self.settings.mqtt_port}",
                    since=dt.datetime.now(dt.UTC),
                    reason=revoked.reason if revoked else None,
                    detail=revoked.message if revoked else "",
                    pid=os.getpid(),
                )
            )
        except OSError as exc:
            log.warning("could not record the stop in %s: %s", self.agent.state.path, exc)

    def _initial_identity(self) -> Identity | None:
        """The identity to start with; recovers (re-bootstrap) with backoff when there is none."""
        failures = 0
        while not self._stop:
            identity = self.agent.identity()
            if identity is not None:
                return identity
            try:
                return self.agent.renew(force=True).identity
            except (ConfigError, Refused):
                raise  # a person has to act: the exit code says which kind
            except (Transient, Pending) as exc:
                failures += 1
                delay = self._delay_after_failure(exc, failures)
                log.warning("no usable identity yet (%s); retrying in %.0f s", exc.message, delay)
                self._wake.wait(delay)
                self._wake.clear()
        return None

    def _cycle(self, identity: Identity, session: MqttSession) -> Identity:
        """Sleep until something is due, do it; the identity in use afterwards."""
        now = self.agent.clock.now()
        if self._confirm:  # at once, unless the server asked us to back off
            status = self.agent.state.load_status()
            due = status.next_attempt if status.failures and status.next_attempt else now
        else:
            due = self.agent.next_wakeup(identity)
        if self._retry_not_before is not None:
            due = max(due, self._retry_not_before)
        delay = min(MAX_SLEEP, max(0.0, (due - now).total_seconds()))
        if delay > 0 and not (self._stop or self._renew_now or self._reload):
            log.debug("next renewal check in %.0f s (at %s)", delay, due.isoformat())
            self._wake.wait(delay)
        self._wake.clear()
        if self._stop:
            return identity
        if self._reload:
            self._reload = False
            return self._reload_identity(identity, session)
        forced = self._renew_now
        self._renew_now = False
        if not forced and self.agent.clock.now() < due:
            return identity  # woke early (MAX_SLEEP): look at the clock again
        confirming = self._confirm
        forced = forced or confirming
        if confirming:
            log.info("asking the EST server whether this device is still in good standing")
        return self._renew(identity, session, force=forced)

    def _renew(self, identity: Identity, session: MqttSession, *, force: bool) -> Identity:
        """Renew (a forced renewal also answers "are we revoked?": simplereenroll says so)."""
        try:
            result = self.agent.renew(force=force)
        except Revoked as exc:
            self._revoked = exc
            self._exit_code = exc.exit_code
            self._stop = True
            return identity
        except (Transient, Pending) as exc:
            # The core recorded the failure and its backoff (next_wakeup reads it).
            self._retry_not_before = self.agent.clock.now() + dt.timedelta(
                seconds=self.agent.policy.backoff_floor
            )
            log.warning("renewal failed: %s; the MQTT session carries on", exc.message)
            return identity  # self._confirm stays set: ask again after the backoff
        except AgentError as exc:
            # Refused (suspended, expired without a bootstrap credential) or a broken
            # state directory: nothing changes until a person acts (resume, approve,
            # repair), so ask again only rarely, in case one did.
            self._confirm = False
            delay = self._delay_after_failure(exc, 1)
            self._retry_not_before = self.agent.clock.now() + dt.timedelta(seconds=delay)
            log.error(
                "renewal failed: %s; keeping the current certificate (valid until %s); "
                "the next attempt is in %.1f h, in case an admin acts",
                exc.message, identity.not_after.isoformat(), delay / 3600,
            )  # fmt: skip
            if exc.hint:
                log.error("  next: %s", exc.hint)
            return identity
        self._confirm = False
        self._retry_not_before = None
        if not result.renewed:
            log.debug("%s", result.message)
            return identity
        log.info("%s; reconnecting to the broker with it", result.message)
        return self._swap(result.identity, session)

    def _reload_identity(self, identity: Identity, session: MqttSession) -> Identity:
        current = self.agent.identity()
        if current is None:
            log.error("SIGHUP: no usable identity in the state directory; keeping the one in use")
            return identity
        if current.serial == identity.serial:
            log.info("SIGHUP: identity unchanged (serial %x)", identity.serial)
            return identity
        log.info("SIGHUP: new identity on disk (serial %x)", current.serial)
        return self._swap(current, session)

    def _swap(self, identity: Identity, session: MqttSession) -> Identity:
        session.swap_identity(_tls(identity), timeout=0)  # the session logs the reconnect
        self._update_status(identity)
        return identity

    def _delay_after_failure(self, exc: AgentError, failures: int) -> float:
        policy = self.agent.policy
        if isinstance(exc, Transient | Pending):
            return backoff_delay(failures, policy, self._rand, retry_after=exc.retry_after)
        return max(policy.backoff_floor, policy.slow_retry * (0.75 + 0.25 * self._rand()))

    def _update_status(self, identity: Identity) -> None:
        self._status = {
            "not_after": identity.not_after.isoformat(),
            "next_renewal": self.agent.next_renewal(identity).isoformat(),
        }


def _tls(identity: Identity) -> TlsIdentity:
    return TlsIdentity(identity.cert_path, identity.key)


def run(agent: Agent, settings: RunSettings) -> int:
    """Run in the foreground with signal handlers; the process exit code.

    Raises ConfigError (exit 2) or Refused (exit 3) when it cannot start: no
    usable identity and none can be recovered without a person.
    """
    runner = Runner(agent, settings)
    runner.install_signal_handlers()
    return runner.run()
