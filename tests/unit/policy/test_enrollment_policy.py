"""The enrollment and renewal decisions, as pure functions over records."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from fleet.policy.enrollment import (
    Action,
    BootstrapCredential,
    BootstrapReuse,
    EnrollmentPolicy,
    TokenCredential,
    UnknownDevices,
    decide_enrollment,
)
from fleet.policy.renewal import decide_renewal
from fleet.store.records import CertificateRecord, CertificateStatus, Device, DeviceState

T0 = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
PIN = "a" * 64
OTHER = "b" * 64
HOLD = EnrollmentPolicy()
REJECT = EnrollmentPolicy(UnknownDevices.REJECT, BootstrapReuse.REJECT)


def device(state: DeviceState, pin: str | None = PIN) -> Device:
    return Device("dev-1", state, T0, T0, bootstrap_sha256=pin)


def boot(sha: str = PIN) -> BootstrapCredential:
    return BootstrapCredential("dev-1", sha)


def test_pinned_manifest_device_is_issued_from_registered_only() -> None:
    decision = decide_enrollment(boot(), device(DeviceState.REGISTERED), HOLD)
    assert decision.action is Action.ISSUE
    assert decision.reason == "bootstrap_pinned"
    assert decision.expected == {DeviceState.REGISTERED}


def test_another_bootstrap_than_the_pinned_one_is_refused_and_flagged() -> None:
    decision = decide_enrollment(boot(OTHER), device(DeviceState.REGISTERED), HOLD)
    assert (decision.action, decision.reason, decision.flagged) == (
        Action.REFUSE,
        "bootstrap_pin_mismatch",
        True,
    )


@pytest.mark.parametrize(
    ("policy", "action", "reason"),
    [(HOLD, Action.HOLD_NEW, "unknown_device_held"), (REJECT, Action.REFUSE, "unknown_device")],
)
def test_unknown_device_follows_the_policy(
    policy: EnrollmentPolicy, action: Action, reason: str
) -> None:
    decision = decide_enrollment(boot(), None, policy)
    assert (decision.action, decision.reason) == (action, reason)


@pytest.mark.parametrize(
    ("policy", "action", "reason"),
    [(HOLD, Action.HOLD, "bootstrap_reused_held"), (REJECT, Action.REFUSE, "bootstrap_reused")],
)
def test_second_bootstrap_enrollment_is_a_possible_clone(
    policy: EnrollmentPolicy, action: Action, reason: str
) -> None:
    decision = decide_enrollment(boot(), device(DeviceState.ACTIVE), policy)
    assert (decision.action, decision.reason, decision.flagged) == (action, reason, True)


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (DeviceState.REVOKED, "device_revoked"),
        (DeviceState.SUSPENDED, "device_suspended"),
        (DeviceState.REJECTED, "device_rejected"),
    ],
)
@pytest.mark.parametrize("credential", [boot(), TokenCredential("dev-1")])
def test_refused_states_are_refused_on_every_path(
    state: DeviceState, reason: str, credential: BootstrapCredential | TokenCredential
) -> None:
    decision = decide_enrollment(credential, device(state), HOLD)
    assert (decision.action, decision.reason) == (Action.REFUSE, reason)


def test_pending_device_keeps_waiting() -> None:
    assert decide_enrollment(boot(), device(DeviceState.PENDING), HOLD).action is Action.WAIT


def test_a_token_is_an_admin_grant() -> None:
    token = TokenCredential("dev-1")
    assert decide_enrollment(token, None, HOLD).action is Action.REFUSE
    pending = decide_enrollment(token, device(DeviceState.PENDING), HOLD)
    assert (pending.action, pending.expected) == (Action.ISSUE, {DeviceState.PENDING})
    active = decide_enrollment(token, device(DeviceState.ACTIVE), HOLD)
    assert active.expected == {DeviceState.REGISTERED, DeviceState.ACTIVE}


def record(**changes: object) -> CertificateRecord:
    base = CertificateRecord(1, "dev-1", T0, T0 + dt.timedelta(days=30), T0, "pem")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_renewal_of_a_good_certificate_of_an_active_device() -> None:
    decision = decide_renewal("dev-1", record(), device(DeviceState.ACTIVE))
    assert (decision.action, decision.expected) == (Action.ISSUE, {DeviceState.ACTIVE})


@pytest.mark.parametrize(
    ("cert", "dev", "reason", "flagged"),
    [
        (None, device(DeviceState.ACTIVE), "certificate_unknown", True),
        (record(device_id="dev-2"), device(DeviceState.ACTIVE), "identity_mismatch", True),
        (
            record(status=CertificateStatus.REVOKED),
            device(DeviceState.ACTIVE),
            "certificate_revoked",
            False,
        ),
        (record(), None, "unknown_device", True),
        (record(), device(DeviceState.SUSPENDED), "device_suspended", False),
        (record(), device(DeviceState.REVOKED), "device_revoked", False),
        (record(), device(DeviceState.PENDING), "awaiting_approval", False),
    ],
)
def test_renewal_refusals(
    cert: CertificateRecord | None, dev: Device | None, reason: str, flagged: bool
) -> None:
    decision = decide_renewal("dev-1", cert, dev)
    assert (decision.action, decision.reason, decision.flagged) == (Action.REFUSE, reason, flagged)
