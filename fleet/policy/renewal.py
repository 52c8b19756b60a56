"""Decide a re-enrollment (pure).

The caller has already verified the presented certificate against the fleet
issuing CA (signature, chain, validity). What remains is the fleet's own
record: the certificate must be one we issued to this device and not revoked,
and the device must be active. A certificate that chains to our CA but is not
in our records means the CA key signed something we did not record: refused
and flagged.
"""

from __future__ import annotations

from fleet.policy.enrollment import Action, Decision
from fleet.store.records import CertificateRecord, CertificateStatus, Device, DeviceState

_STATE_REASONS = {
    DeviceState.REVOKED: "device_revoked",
    DeviceState.SUSPENDED: "device_suspended",
    DeviceState.REJECTED: "device_rejected",
    DeviceState.PENDING: "awaiting_approval",
    DeviceState.REGISTERED: "device_not_enrolled",
}


def decide_renewal(
    device_id: str, record: CertificateRecord | None, device: Device | None
) -> Decision:
    if record is None:
        return Decision(Action.REFUSE, "certificate_unknown", flagged=True)
    if record.device_id != device_id:
        return Decision(Action.REFUSE, "identity_mismatch", flagged=True)
    if record.status is CertificateStatus.REVOKED:
        return Decision(Action.REFUSE, "certificate_revoked")
    if device is None:
        return Decision(Action.REFUSE, "unknown_device", flagged=True)
    if device.state is not DeviceState.ACTIVE:
        return Decision(Action.REFUSE, _STATE_REASONS[device.state])
    return Decision(Action.ISSUE, "renewal", frozenset({DeviceState.ACTIVE}))
