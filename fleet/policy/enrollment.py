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
4. An active device presenting its bootstrap certificate again:
   a. with the key of the certificate it was just issued (within the replay
      window) lost our reply: it gets the recorded certificate back, under
      either ``bootstrap_reuse`` setting;
   b. with an admin's answer on its replacement request: the approved key is
      issued (superseding the old certificates), a rejected replay is refused;
   c. otherwise it is a possible clone or a factory reset: a pending
      replacement request beside the device (202) or a refusal, by policy —
      flagged either way. The device itself is never changed: its renewals go on.
5. An unknown device (not in the manifest) is held or refused, by policy.
6. A known device that may enroll (manifest or approved) is issued a certificate.

A one-time token is an admin's explicit grant for one device, so it enrolls a
registered or an active device (re-provisioning), but never a refused one.
Whatever enrolls a device supersedes the good certificates it held: a device
has one good operational certificate (renewal keeps the previous one, see
fleet.policy.renewal).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Sequence

from fleet.kernel.reasons import Reason
from fleet.records import (
    CertificateRecord,
    CertificateStatus,
    Device,
    DeviceState,
    Manufacturer,
    ReplacementRequest,
    ReplacementStatus,
)

# A device that lost the reply to its enrollment retries with the same
# bootstrap certificate and the same new key; within this window it gets the
# recorded certificate back instead of being taken for a clone.
REPLAY_WINDOW = dt.timedelta(minutes=15)


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
    replay_window: dt.timedelta = REPLAY_WINDOW


@dataclasses.dataclass(frozen=True, slots=True)
class BootstrapCredential:
    """A bootstrap certificate that chained to a trusted manufacturer CA."""

    device_id: str
    sha256: str
    manufacturer: str = ""  # the issuer (manufacturer CA) name, kept as evidence
    # The trusted manufacturer CA the verified chain ended at (what the device records).
    anchor: Manufacturer | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TokenCredential:
    """A one-time enrollment token that the store accepted for ``device_id``."""

    device_id: str


Credential = BootstrapCredential | TokenCredential


@dataclasses.dataclass(frozen=True, slots=True)
class EnrollmentFacts:
    """What the store knows that a decision needs, read just before deciding."""

    now: dt.datetime
    key_sha256: str  # SHA-256 of the SubjectPublicKeyInfo of the key to certify
    certificates: Sequence[CertificateRecord] = ()  # the device's, newest first
    # SHA-256 of the public key of ``certificates[0]`` (None when there is none).
    latest_key_sha256: str | None = None
    replacement: ReplacementRequest | None = None


class Action(enum.StrEnum):
    ISSUE = "issue"  # sign and record (compare-and-set on ``expected``)
    HOLD_NEW = "hold_new"  # create the device as pending, pinned to this bootstrap; 202
    REPLY_AGAIN = "reply_again"  # a lost reply: answer with the recorded ``certificate``
    REQUEST_REPLACEMENT = "request_replacement"  # note a replacement request beside it; 202
    WAIT = "wait"  # already pending, answer 202
    REFUSE = "refuse"  # answer 403


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str  # reason code for the audit log, metrics and the 403 body
    expected: frozenset[DeviceState] = frozenset()  # states ISSUE may act from
    flagged: bool = False  # a possible clone: audit it and notify
    # ISSUE: good certificates of the device this one supersedes (revoked, superseded).
    supersede: tuple[int, ...] = ()
    # ISSUE of an approved replacement: the approved key (the store consumes the approval).
    replacement_key: str | None = None
    certificate: int | None = None  # REPLY_AGAIN: serial of the certificate to answer with


_REFUSED_STATES = {
    DeviceState.REVOKED: Reason.DEVICE_REVOKED,
    DeviceState.SUSPENDED: Reason.DEVICE_SUSPENDED,
    DeviceState.REJECTED: Reason.DEVICE_REJECTED,
}


def decide_enrollment(
    credential: Credential,
    device: Device | None,
    policy: EnrollmentPolicy,
    facts: EnrollmentFacts,
) -> Decision:
    if device is not None and device.state in _REFUSED_STATES:
        return Decision(Action.REFUSE, _REFUSED_STATES[device.state])
    if isinstance(credential, TokenCredential):
        return _decide_token(device, facts)
    return _decide_bootstrap(credential, device, policy, facts)


def superseded_by_new(facts: EnrollmentFacts, *, keep: int | None = None) -> tuple[int, ...]:
    """The device's good, unexpired certificates (but ``keep``) that a new one supersedes.
    Expired ones are left alone: they no longer let anyone in, and a CRL need not list them."""
    return tuple(
        c.serial
        for c in facts.certificates
        if c.status is CertificateStatus.GOOD and c.not_after > facts.now and c.serial != keep
    )


def _decide_token(device: Device | None, facts: EnrollmentFacts) -> Decision:
    if device is None:
        return Decision(Action.REFUSE, Reason.UNKNOWN_DEVICE)
    if device.state is DeviceState.PENDING:
        # The admin who made the token approved the device by doing so.
        return Decision(
            Action.ISSUE,
            Reason.TOKEN,
            frozenset({DeviceState.PENDING}),
            supersede=superseded_by_new(facts),
        )
    return Decision(
        Action.ISSUE,
        Reason.TOKEN,
        frozenset({DeviceState.REGISTERED, DeviceState.ACTIVE}),
        supersede=superseded_by_new(facts),
    )


def _decide_bootstrap(
    credential: BootstrapCredential,
    device: Device | None,
    policy: EnrollmentPolicy,
    facts: EnrollmentFacts,
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
        return _decide_reuse(device, policy, facts)
    # A registered device without a pin was approved by an admin without one
    # (e.g. `fleet device approve` of a token-only device).
    reason = Reason.BOOTSTRAP_PINNED if device.bootstrap_sha256 is not None else Reason.APPROVED
    supersede = superseded_by_new(facts)
    return Decision(Action.ISSUE, reason, frozenset({DeviceState.REGISTERED}), supersede=supersede)


def _decide_reuse(device: Device, policy: EnrollmentPolicy, facts: EnrollmentFacts) -> Decision:
    """An active device's bootstrap certificate, presented again."""
    latest = facts.certificates[0] if facts.certificates else None
    if (
        latest is not None
        and latest.status is CertificateStatus.GOOD
        and facts.latest_key_sha256 == facts.key_sha256
        and device.enrolled_at is not None
        and facts.now - device.enrolled_at <= policy.replay_window
    ):
        return Decision(Action.REPLY_AGAIN, Reason.REPLY_REPLAYED, certificate=latest.serial)
    request = facts.replacement
    if request is not None and request.status is ReplacementStatus.REJECTED:
        return Decision(Action.REFUSE, Reason.REPLACEMENT_REJECTED, flagged=True)
    if request is not None and request.status is ReplacementStatus.APPROVED:
        if request.key_sha256 != facts.key_sha256:
            return Decision(Action.REFUSE, Reason.REPLACEMENT_KEY_MISMATCH, flagged=True)
        return Decision(
            Action.ISSUE,
            Reason.REPLACEMENT_APPROVED,
            frozenset({DeviceState.ACTIVE}),
            supersede=superseded_by_new(facts),
            replacement_key=request.key_sha256,
        )
    if policy.bootstrap_reuse is BootstrapReuse.HOLD:
        return Decision(Action.REQUEST_REPLACEMENT, Reason.BOOTSTRAP_REUSED_HELD, flagged=True)
    return Decision(Action.REFUSE, Reason.BOOTSTRAP_REUSED, flagged=True)
