"""One simulated device: a state directory (its flash), the real agent, the real MQTT session.

No shortcuts: enrollment and renewal are ``device_agent.agent.Agent`` over EST
against the running server, and the broker connection is
``device_agent.mqtt.MqttSession`` over mutual TLS with the certificate the
agent installed. The simulator only decides *when* things happen.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

from device_agent.agent import Agent, RenewResult, bootstrap_auth
from device_agent.est_client import Auth, TokenAuth
from device_agent.mqtt import MqttSession, SessionSettings
from device_agent.mqtt_tls import TlsIdentity
from device_agent.renewal import RenewalPolicy
from device_agent.state import AgentConfig, Identity, StateDir
from fleet.kernel.clock import Clock


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int


class SimDevice:
    """A device with its own state directory; enroll, connect, publish, renew, disconnect."""

    def __init__(
        self,
        device_id: str,
        state_dir: Path,
        *,
        server: str,
        ca_fingerprint: str,
        bootstrap_cert: Path | None = None,
        bootstrap_key: Path | None = None,
        clock: Clock | None = None,
        policy: RenewalPolicy | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = 15.0,
    ) -> None:
        self.device_id = device_id
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self.config = AgentConfig(
            server=server,
            ca_fingerprint=ca_fingerprint,
            device_id=device_id,
            bootstrap_cert=None if bootstrap_cert is None else str(bootstrap_cert),
            bootstrap_key=None if bootstrap_key is None else str(bootstrap_key),
        )
        self.state = StateDir(state_dir)
        self.agent = Agent(
            self.state,
            clock=clock,
            policy=policy,
            rand=self.rng.random,
            sleep=sleep,
            timeout=timeout,
        )
        self.session: MqttSession | None = None
        self.identity: Identity | None = None
        self.telemetry_seq = 0

    # -- EST -----------------------------------------------------------------------------
    def enroll(self, *, token: str | None = None, max_wait: float = 0.0) -> Identity:
        """First enrollment: with the bootstrap certificate, or a one-time ``token``."""
        auth: Auth | None
        if token is not None:
            auth = TokenAuth(self.device_id, token)
        else:
            auth = bootstrap_auth(self.config)
        if auth is None:
            raise ValueError(f"{self.device_id} has neither a bootstrap certificate nor a token")
        self.identity = self.agent.enroll(self.config, auth, max_wait=max_wait)
        return self.identity

    def renew(self, *, force: bool = False) -> RenewResult:
        result = self.agent.renew(force=force)
        self.identity = result.identity
        return result

    @property
    def serial(self) -> str | None:
        return None if self.identity is None else f"{self.identity.serial:x}"

    # -- MQTT ----------------------------------------------------------------------------
    def _tls_identity(self) -> TlsIdentity:
        if self.identity is None:
            raise ValueError(f"{self.device_id} has no operational certificate yet")
        return TlsIdentity(self.identity.cert_path, self.identity.key)

    def connect(
        self,
        broker: BrokerAddress,
        *,
        heartbeat: float = 60.0,
        reconnect_min: float = 1.0,
        reconnect_max: float = 30.0,
    ) -> MqttSession:
        """Start the MQTT session (it connects, and reconnects, in its own thread)."""
        settings = SessionSettings(
            host=broker.host,
            port=broker.port,
            device_id=self.device_id,
            trust=self.state.cacerts_path.read_bytes(),
            heartbeat_interval=heartbeat,
            reconnect_min=reconnect_min,
            reconnect_max=reconnect_max,
            connect_timeout=5.0,
            flush_timeout=1.0,
            clock=self.agent.clock,
        )
        self.session = MqttSession(settings, self._tls_identity(), rng=self.rng)
        self.session.start()
        return self.session

    def publish_telemetry(self, **values: float) -> dict[str, object]:
        """Queue one telemetry reading (QoS 1) on devices/<id>/telemetry."""
        if self.session is None:
            raise ValueError(f"{self.device_id} is not connected")
        self.telemetry_seq += 1
        body: dict[str, object] = {
            "device_id": self.device_id,
            "seq": self.telemetry_seq,
            "serial": self.session.serial,
            **values,
        }
        self.session.publish("telemetry", json.dumps(body))
        return body

    def reconnect_with_current_identity(self, timeout: float = 10.0) -> bool:
        """After a renewal: the session reconnects presenting the new certificate."""
        if self.session is None:
            raise ValueError(f"{self.device_id} is not connected")
        return self.session.swap_identity(self._tls_identity(), timeout=timeout)

    def disconnect(self, timeout: float = 5.0) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.stop(timeout)
