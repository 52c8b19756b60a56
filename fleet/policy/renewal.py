"""Decide a re-enrollment (pure).

The caller has already verified the presented certificate against the fleet
issuing CA (signature, chain, validity). What remains is the fleet's own
record: the certificate must be one we issued to this device and not revoked,
and the device must be active. A certificate that chains to our CA but is not
in our records means the CA key signed something we did not record: refused
and flagged.
"""

from __future__ import annotations

from fleet.kernel.reasons import Reason
from fleet.policy.enrollment import Action, Decision
from fleet.store.records import CertificateRecord, CertificateStatus, Device, DeviceState

_STATE_REASONS = {
    DeviceState.REVOKED: Reason.DEVICE_REVOKED,
    DeviceState.SUSPENDED: Reason.DEVICE_SUSPENDED,
    DeviceState.REJECTED: Reason.DEVICE_REJECTED,
    DeviceState.PENDING: Reason.AWAITING_APPROVAL,
    DeviceState.REGISTERED: Reason.DEVICE_NOT_ENROLLED,
}


def decide_renewal(
    device_id: str, record: CertificateRecord | None, device: Device | None
) -> Decision:
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
    return Decision(Action.ISSUE, Reason.RENEWAL, frozenset({DeviceState.ACTIVE}))
