"""What the agent says about itself (pure: no I/O).

`fleet-agent status` must tell the truth: a device the server revoked is
``revoked``, not ``ok`` because its certificate has not expired yet, and an
agent the broker keeps refusing is not ``ok`` either. Three inputs decide it:

- the certificate on disk (``ok``, ``renewal_due``, ``expired``, or none);
- the reason code of the server's last refusal or hold (``status.json``),
  cleared by the next success;
- the broker connection as `fleet-agent run` last recorded it
  (``broker.json``, written at every change by the running agent).

The broker says little: a TLS alert (``certificate revoked``, ``unknown ca``)
or a CONNACK "not authorized" that never says why. So a broker refusal alone
never makes the agent conclude "revoked"; it makes it *suspect* it
(:func:`suspect_revoked`), and `run` asks the EST server, whose 403 carries
the reason code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping
from typing import Any

from device_agent.errors import REVOKED_REASONS
from device_agent.renewal import EXPIRED_REASONS, Phase
from fleet.kernel.reasons import Reason


class BrokerLink(enum.StrEnum):
    CONNECTING = "connecting"  # first attempt under way
    CONNECTED = "connected"
    REFUSED = "refused"  # the broker answered: TLS alert or CONNACK refusal
    UNREACHABLE = "unreachable"  # no answer: connection refused, timeout, DNS
    DISCONNECTED = "disconnected"  # a session that was up ended (kicked, broker restart)
    STOPPED = "stopped"  # `run` exited (``reason`` says why when it was not asked to)


@dataclasses.dataclass(frozen=True)
class BrokerState:
    """The MQTT connection as `fleet-agent run` last saw it."""

    state: BrokerLink
    broker: str  # HOST:PORT
    since: dt.datetime
    reason: str | None = None  # a fleet.kernel.reasons.Reason value
    detail: str = ""  # what the broker or the TLS stack said
    retry_at: dt.datetime | None = None  # backing off until then
    attempts: int = 0  # failed attempts in a row
    pid: int | None = None

    def summary(self) -> str:
        text = {
            BrokerLink.CONNECTING: f"connecting to {self.broker}",
            BrokerLink.CONNECTED: f"connected to {self.broker}",
            BrokerLink.REFUSED: f"refused by {self.broker} ({self.reason}: {self.detail})",
            BrokerLink.UNREACHABLE: f"cannot reach {self.broker} ({self.detail})",
            BrokerLink.DISCONNECTED: f"disconnected from {self.broker} ({self.detail})",
            BrokerLink.STOPPED: "fleet-agent run stopped"
            + (f" ({self.reason}: {self.detail})" if self.reason else ""),
        }[self.state]
        if self.retry_at is not None:
            text += f"; backing off until {self.retry_at.isoformat(timespec='seconds')}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "broker": self.broker,
            "since": self.since.isoformat(),
            "reason": self.reason,
            "detail": self.detail,
            "retry_at": self.retry_at.isoformat() if self.retry_at else None,
            "attempts": self.attempts,
            "pid": self.pid,
            "summary": self.summary(),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> BrokerState:
        """Raises ValueError/KeyError/TypeError on a malformed record."""
        retry_at = raw.get("retry_at")
        pid = raw.get("pid")
        return cls(
            state=BrokerLink(raw["state"]),
            broker=str(raw["broker"]),
            since=dt.datetime.fromisoformat(raw["since"]),
            reason=raw.get("reason"),
            detail=str(raw.get("detail") or ""),
            retry_at=dt.datetime.fromisoformat(retry_at) if retry_at else None,
            attempts=int(raw.get("attempts") or 0),
            pid=int(pid) if pid is not None else None,
        )


# -- what a broker refusal means --------------------------------------------------------

_TLS_ALERTS = (
    ("certificate revoked", Reason.CERTIFICATE_REVOKED),
    ("certificate expired", Reason.CERTIFICATE_EXPIRED),
    ("unknown ca", Reason.UNKNOWN_ISSUER),
    ("unsupported certificate", Reason.NOT_CLIENT_CERT),
)


def classify_tls_failure(text: str) -> tuple[BrokerLink, Reason]:
    """A connection failure's text (an OSError/SSLError message) -> what happened."""
    lowered = text.lower()
    for needle, reason in _TLS_ALERTS:
        if needle in lowered:
            return BrokerLink.REFUSED, reason
    if "alert" in lowered or "certificate verify failed" in lowered:
        return BrokerLink.REFUSED, Reason.TLS_FAILED
    return BrokerLink.UNREACHABLE, Reason.TRANSPORT_ERROR


def classify_connack(code: int, text: str) -> Reason:
    """A refusing CONNACK (MQTT 3.1.1 return code, or the v5 reason paho maps it to)."""
    if code in (4, 5, 134, 135) or "authori" in text.lower():
        return Reason.AUTH_FAILED  # "not authorized": the broker never says why
    if code in (3, 136, 137):
        return Reason.SERVER_UNAVAILABLE
    return Reason.POLICY_REFUSED


def suspect_revoked(reason: Reason, *, after_kick: bool, ever_connected: bool) -> bool:
    """Whether a broker refusal is worth asking the EST server about.

    A TLS alert ``certificate revoked`` names it. A bare "not authorized" is
    suspicious right after the broker closed a live session (that is what a
    revocation looks like from the device) or before the first connection of
    this run (the device may have been revoked while it was off); anywhere
    else it is more likely a broker problem (stale revocation state) and the
    agent just backs off.
    """
    if reason is Reason.CERTIFICATE_REVOKED:
        return True
    return reason is Reason.AUTH_FAILED and (after_kick or not ever_connected)


# -- the device's state ----------------------------------------------------------------


class DeviceState(enum.StrEnum):
    OK = "ok"
    RENEWAL_DUE = "renewal_due"
    EXPIRED = "expired"
    NO_IDENTITY = "no_identity"
    PENDING_APPROVAL = "pending_approval"
    SUSPENDED = "suspended"
    REVOKED = "revoked"
    BROKER_REFUSED = "broker_refused"
    BROKER_UNREACHABLE = "broker_unreachable"


PENDING_REASON = Reason.ENROLLMENT_PENDING.value

_PHASES = {
    Phase.FRESH: DeviceState.OK,
    Phase.DUE: DeviceState.RENEWAL_DUE,
    Phase.EXPIRED: DeviceState.EXPIRED,
}


def certificate_state(phase: Phase | None) -> DeviceState:
    return DeviceState.NO_IDENTITY if phase is None else _PHASES[phase]


def device_state(
    phase: Phase | None, last_reason: str | None, broker: BrokerState | None
) -> DeviceState:
    """The one word `status` leads with; the most serious condition wins.

    ``broker`` only counts while `fleet-agent run` is running (the caller
    passes None otherwise): a refusal recorded by a run that has ended says
    nothing about now.
    """
    if last_reason in REVOKED_REASONS:
        return DeviceState.REVOKED
    if last_reason == Reason.DEVICE_SUSPENDED:
        return DeviceState.SUSPENDED
    if last_reason == PENDING_REASON:
        return DeviceState.PENDING_APPROVAL
    if phase is Phase.EXPIRED or last_reason in EXPIRED_REASONS:
        return DeviceState.EXPIRED
    if phase is None:
        return DeviceState.NO_IDENTITY
    if broker is not None and broker.retry_at is not None:
        if broker.state is BrokerLink.REFUSED:
            return DeviceState.BROKER_REFUSED
        if broker.state in (BrokerLink.UNREACHABLE, BrokerLink.DISCONNECTED):
            return DeviceState.BROKER_UNREACHABLE
    return certificate_state(phase)


# `fleet-agent status` exits with the code a command in that state would: 0 while the
# device holds a certificate it can use, otherwise what needs doing.
STATUS_EXIT = {
    DeviceState.NO_IDENTITY: 2,
    DeviceState.EXPIRED: 3,
    DeviceState.SUSPENDED: 3,
    DeviceState.PENDING_APPROVAL: 5,
    DeviceState.REVOKED: 6,
}
