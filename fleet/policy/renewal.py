"""Decide a re-enrollment (pure).

The caller has already verified the presented certificate against the fleet
issuing CA (signature, chain, validity). What remains is the fleet's own
record: the certificate must be one we issued to this device and not revoked,
and the device must be active. A certificate that chains to our CA but is not
in our records means the CA key signed something we did not record: refused
and flagged.

A pending replacement request never blocks a renewal: the certificate proves
the key, and the request is an admin's question about someone else's.

Overlap: the certificate that authenticated the renewal stays good until the
device shows its successor (by renewing with it) or it expires
(``RenewalOverlap.PREVIOUS``, the default), so a lost reply costs nothing;
anything older still good is superseded then. ``RenewalOverlap.NONE``
supersedes the renewing certificate at once.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence

from fleet.kernel.reasons import Reason
from fleet.policy.enrollment import Action, Decision, EnrollmentFacts, superseded_by_new
from fleet.records import CertificateRecord, CertificateStatus, Device, DeviceState

_STATE_REASONS = {
    DeviceState.REVOKED: Reason.DEVICE_REVOKED,
    DeviceState.SUSPENDED: Reason.DEVICE_SUSPENDED,
    DeviceState.REJECTED: Reason.DEVICE_REJECTED,
    DeviceState.PENDING: Reason.AWAITING_APPROVAL,
    DeviceState.REGISTERED: Reason.DEVICE_NOT_ENROLLED,
}


class RenewalOverlap(enum.StrEnum):
    PREVIOUS = "previous"  # the renewing certificate stays good until its successor is used
    NONE = "none"  # the renewing certificate is superseded by the new one at once


def decide_renewal(
    device_id: str,
    record: CertificateRecord | None,
    device: Device | None,
    *,
    certificates: Sequence[CertificateRecord] = (),
    now: dt.datetime | None = None,
    overlap: RenewalOverlap = RenewalOverlap.PREVIOUS,
) -> Decision:
    """``certificates``: the device's, newest first; ``now`` is needed with them."""
    if record is None:
        return Decision(Action.REFUSE, Reason.CERTIFICATE_UNKNOWN, flagged=True)
    if record.device_id != device_id:
        return Decision(Action.REFUSE, Reason.IDENTITY_MISMATCH, flagged=True)
    if record.status is CertificateStatus.REVOKED:
        return Decision(Action.REFUSE, Reason.CERTIFICATE_REVOKED)
    if device is None:
        return Decision(Action.REFUSE, Reason.UNKNOWN_DEVICE, flagged=True)
    if device.state is not DeviceState.ACTIVE:
        return Decision(Action.REFUSE, _STATE_REASONS[device.state])
    keep = record.serial if overlap is RenewalOverlap.PREVIOUS else None
    supersede: tuple[int, ...] = ()
    if certificates:
        if now is None:
            raise ValueError("decide_renewal needs now= with certificates=")
        facts = EnrollmentFacts(now=now, key_sha256="", certificates=certificates)
        supersede = superseded_by_new(facts, keep=keep)
    return Decision(
        Action.ISSUE, Reason.RENEWAL, frozenset({DeviceState.ACTIVE}), supersede=supersede
    )
