"""Decide a first enrollment (pure).

The decision takes the authenticated identity (bootstrap certificate or
one-time token), the device record if any, and the policy settings, and
returns what to do. It never touches storage: the caller applies the
decision with the store's compare-and-set operations, so a concurrent change
turns into a conflict rather than a wrong certificate.

Rules, in order (DESIGN.md §2):

1. Revoked, suspended or rejected devices are refused on every path.
2. A device waiting for approval stays pending (202).
3. A manifest device presenting another bootstrap certificate than the pinned
   one is refused.
4. An enrolled device presenting a bootstrap certificate again is a possible
   clone: held for approval (a factory reset is the legitimate case) or
   refused, by policy — flagged either way.
5. An unknown device (not in the manifest) is held or refused, by policy.
6. A known device that may enroll (manifest or approved) is issued a certificate.

A one-time token is an admin's explicit grant for one device, so it enrolls a
registered or an active device (re-provisioning), but never a refused one.
"""

from __future__ import annotations

import dataclasses
import enum

from fleet.kernel.reasons import Reason
from fleet.store.records import Device, DeviceState


class UnknownDevices(enum.StrEnum):
    HOLD = "hold"
    REJECT = "reject"


class BootstrapReuse(enum.StrEnum):
    HOLD = "hold"
    REJECT = "reject"


@dataclasses.dataclass(frozen=True, slots=True)
class EnrollmentPolicy:
    unknown_devices: UnknownDevices = UnknownDevices.HOLD
    bootstrap_reuse: BootstrapReuse = BootstrapReuse.HOLD


@dataclasses.dataclass(frozen=True, slots=True)
class BootstrapCredential:
    """A bootstrap certificate that chained to a trusted manufacturer CA."""

    device_id: str
    sha256: str


@dataclasses.dataclass(frozen=True, slots=True)
class TokenCredential:
    """A one-time enrollment token that the store accepted for ``device_id``."""

    device_id: str


Credential = BootstrapCredential | TokenCredential


class Action(enum.StrEnum):
    ISSUE = "issue"  # sign and record (compare-and-set on ``expected``)
    HOLD_NEW = "hold_new"  # create the device as pending, pinned to this bootstrap; 202
    HOLD = "hold"  # move the device to pending, answer 202
    WAIT = "wait"  # already pending, answer 202
    REFUSE = "refuse"  # answer 403


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str  # reason code for the audit log, metrics and the 403 body
    expected: frozenset[DeviceState] = frozenset()  # states ISSUE may act from
    flagged: bool = False  # a possible clone: audit it and notify


_REFUSED_STATES = {
    DeviceState.REVOKED: Reason.DEVICE_REVOKED,
    DeviceState.SUSPENDED: Reason.DEVICE_SUSPENDED,
    DeviceState.REJECTED: Reason.DEVICE_REJECTED,
}


def decide_enrollment(
    credential: Credential, device: Device | None, policy: EnrollmentPolicy
) -> Decision:
    if device is not None and device.state in _REFUSED_STATES:
        return Decision(Action.REFUSE, _REFUSED_STATES[device.state])
    if isinstance(credential, TokenCredential):
        return _decide_token(device)
    return _decide_bootstrap(credential, device, policy)


def _decide_token(device: Device | None) -> Decision:
    if device is None:
        return Decision(Action.REFUSE, Reason.UNKNOWN_DEVICE)
    if device.state is DeviceState.PENDING:
        # The admin who made the token approved the device by doing so.
        return Decision(Action.ISSUE, Reason.TOKEN, frozenset({DeviceState.PENDING}))
    return Decision(
        Action.ISSUE, Reason.TOKEN, frozenset({DeviceState.REGISTERED, DeviceState.ACTIVE})
    )


def _decide_bootstrap(
    credential: BootstrapCredential, device: Device | None, policy: EnrollmentPolicy
) -> Decision:
    if device is None:
        if policy.unknown_devices is UnknownDevices.HOLD:
            return Decision(Action.HOLD_NEW, Reason.UNKNOWN_DEVICE_HELD)
        return Decision(Action.REFUSE, Reason.UNKNOWN_DEVICE)
    if device.bootstrap_sha256 is not None and device.bootstrap_sha256 != credential.sha256:
        return Decision(Action.REFUSE, Reason.BOOTSTRAP_PIN_MISMATCH, flagged=True)
    if device.state is DeviceState.PENDING:
        return Decision(Action.WAIT, Reason.AWAITING_APPROVAL)
    if device.state is DeviceState.ACTIVE:
        if policy.bootstrap_reuse is BootstrapReuse.HOLD:
            return Decision(Action.HOLD, Reason.BOOTSTRAP_REUSED_HELD, flagged=True)
        return Decision(Action.REFUSE, Reason.BOOTSTRAP_REUSED, flagged=True)
    # A registered device without a pin was approved by an admin without one
    # (e.g. `fleet device approve` of a token-only device).
    reason = Reason.BOOTSTRAP_PINNED if device.bootstrap_sha256 is not None else Reason.APPROVED
    return Decision(Action.ISSUE, reason, frozenset({DeviceState.REGISTERED}))
