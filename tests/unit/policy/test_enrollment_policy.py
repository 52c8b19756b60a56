"""The enrollment and renewal decisions, as pure functions over records."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

import pytest

from fleet.policy.enrollment import (
    Action,
    BootstrapCredential,
    BootstrapReuse,
    EnrollmentFacts,
    EnrollmentPolicy,
    TokenCredential,
    UnknownDevices,
    decide_enrollment,
)
from fleet.policy.renewal import RenewalOverlap, decide_renewal
from fleet.records import (
    CertificateRecord,
    CertificateStatus,
    Device,
    DeviceState,
    ReplacementRequest,
    ReplacementStatus,
)

T0 = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
PIN = "a" * 64
OTHER = "b" * 64
KEY = "c" * 64  # the key of the device's newest certificate
NEW_KEY = "d" * 64  # another key
HOLD = EnrollmentPolicy()
REJECT = EnrollmentPolicy(UnknownDevices.REJECT, BootstrapReuse.REJECT)
POLICIES = [
    EnrollmentPolicy(unknown, reuse) for unknown in UnknownDevices for reuse in BootstrapReuse
]


def device(state: DeviceState, pin: str | None = PIN) -> Device:
    return Device("dev-1", state, T0, T0, bootstrap_sha256=pin)


def boot(sha: str = PIN) -> BootstrapCredential:
    return BootstrapCredential("dev-1", sha)


def record(**changes: object) -> CertificateRecord:
    base = CertificateRecord(1, "dev-1", T0, T0 + dt.timedelta(days=30), T0, "pem")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def facts(
    key: str = NEW_KEY,
    *,
    certificates: tuple[CertificateRecord, ...] = (),
    replacement: ReplacementRequest | None = None,
    now: dt.datetime = T0 + dt.timedelta(minutes=1),
) -> EnrollmentFacts:
    latest = KEY if certificates else None
    return EnrollmentFacts(now, key, certificates, latest, replacement)


def enrolled(state: DeviceState = DeviceState.ACTIVE, pin: str | None = PIN) -> Device:
    """A device that enrolled with its bootstrap certificate at T0."""
    return dataclasses.replace(device(state, pin), enrolled_bootstrap_sha256=PIN, enrolled_at=T0)


def request(status: ReplacementStatus, key: str = NEW_KEY) -> ReplacementRequest:
    return ReplacementRequest("dev-1", PIN, key, T0, T0, status=status)


GOOD = record(serial=7)
# ISSUE decisions supersede the good, unexpired certificates the device holds.
HELD = (GOOD, record(serial=6, status=CertificateStatus.REVOKED))

# -- every device state x credential x policy setting, with no replay in play ------------------
# (state, credential) -> the decision's (action, reason) under each policy, as a function of it.
Expect = Callable[[EnrollmentPolicy], tuple[Action, str]]


def same(action: Action, reason: str) -> Expect:
    return lambda _policy: (action, reason)


def by_unknown(held: tuple[Action, str], refused: tuple[Action, str]) -> Expect:
    return lambda policy: held if policy.unknown_devices is UnknownDevices.HOLD else refused


def by_reuse(held: tuple[Action, str], refused: tuple[Action, str]) -> Expect:
    return lambda policy: held if policy.bootstrap_reuse is BootstrapReuse.HOLD else refused


ISSUE_PINNED = same(Action.ISSUE, "bootstrap_pinned")
MISMATCH = same(Action.REFUSE, "bootstrap_pin_mismatch")
REUSE = by_reuse(
    (Action.REQUEST_REPLACEMENT, "bootstrap_reused_held"), (Action.REFUSE, "bootstrap_reused")
)
CASES: dict[tuple[DeviceState | None, str], Expect] = {
    (None, "pinned"): by_unknown(
        (Action.HOLD_NEW, "unknown_device_held"), (Action.REFUSE, "unknown_device")
    ),
    (None, "token"): same(Action.REFUSE, "unknown_device"),
    (DeviceState.REGISTERED, "pinned"): ISSUE_PINNED,
    (DeviceState.REGISTERED, "other"): MISMATCH,
    (DeviceState.REGISTERED, "unpinned"): same(Action.ISSUE, "approved"),
    (DeviceState.REGISTERED, "token"): same(Action.ISSUE, "token"),
    (DeviceState.PENDING, "pinned"): same(Action.WAIT, "awaiting_approval"),
    (DeviceState.PENDING, "other"): MISMATCH,
    (DeviceState.PENDING, "unpinned"): same(Action.WAIT, "awaiting_approval"),
    (DeviceState.PENDING, "token"): same(Action.ISSUE, "token"),
    (DeviceState.ACTIVE, "pinned"): REUSE,
    (DeviceState.ACTIVE, "other"): MISMATCH,
    (DeviceState.ACTIVE, "unpinned"): REUSE,
    (DeviceState.ACTIVE, "token"): same(Action.ISSUE, "token"),
}
for _state, _reason in (
    (DeviceState.SUSPENDED, "device_suspended"),
    (DeviceState.REJECTED, "device_rejected"),
    (DeviceState.REVOKED, "device_revoked"),
):
    for _credential in ("pinned", "other", "unpinned", "token"):
        CASES[(_state, _credential)] = same(Action.REFUSE, _reason)


def _subject(state: DeviceState | None, credential: str) -> tuple[object, Device | None]:
    pin = None if credential == "unpinned" else PIN
    dev = None if state is None else enrolled(state, pin)
    if credential == "token":
        return TokenCredential("dev-1"), dev
    return boot(OTHER if credential == "other" else PIN), dev


@pytest.mark.parametrize(
    "policy", POLICIES, ids=lambda p: f"{p.unknown_devices}-{p.bootstrap_reuse}"
)
@pytest.mark.parametrize(("state", "credential"), list(CASES), ids=lambda v: str(v))
def test_every_state_credential_and_policy(
    state: DeviceState | None, credential: str, policy: EnrollmentPolicy
) -> None:
    cred, dev = _subject(state, credential)
    decision = decide_enrollment(cred, dev, policy, facts(certificates=HELD))  # type: ignore[arg-type]
    assert (decision.action, decision.reason) == CASES[(state, credential)](policy)
    # Only bootstrap trouble is flagged as a possible clone.
    assert decision.flagged == (decision.reason in {
        "bootstrap_pin_mismatch", "bootstrap_reused", "bootstrap_reused_held"
    })  # fmt: skip
    if decision.action is Action.ISSUE:
        assert decision.supersede == (7,)  # one good certificate per device
        assert decision.replacement_key is None
    else:
        assert decision.supersede == ()


def test_issue_states_and_what_is_superseded() -> None:
    registered = decide_enrollment(boot(), device(DeviceState.REGISTERED), HOLD, facts())
    assert (registered.expected, registered.supersede) == ({DeviceState.REGISTERED}, ())
    expired = record(serial=9, not_after=T0)
    issued = decide_enrollment(
        boot(), device(DeviceState.REGISTERED), HOLD, facts(certificates=(expired, GOOD))
    )
    assert issued.supersede == (7,)  # an expired certificate is left alone
    token = TokenCredential("dev-1")
    pending = decide_enrollment(token, device(DeviceState.PENDING), HOLD, facts())
    assert (pending.action, pending.expected) == (Action.ISSUE, {DeviceState.PENDING})
    active = decide_enrollment(token, enrolled(), HOLD, facts(certificates=HELD))
    assert active.expected == {DeviceState.REGISTERED, DeviceState.ACTIVE}
    assert active.supersede == (7,)


# -- an active device's bootstrap certificate again: replay, replacement, answers ---------------
@pytest.mark.parametrize(
    "policy", POLICIES, ids=lambda p: f"{p.unknown_devices}-{p.bootstrap_reuse}"
)
def test_lost_reply_retry_gets_the_recorded_certificate_under_every_policy(
    policy: EnrollmentPolicy,
) -> None:
    decision = decide_enrollment(boot(), enrolled(), policy, facts(KEY, certificates=HELD))
    assert (decision.action, decision.reason, decision.certificate) == (
        Action.REPLY_AGAIN,
        "reply_replayed",
        7,
    )
    assert not decision.flagged


@pytest.mark.parametrize("policy", [HOLD, REJECT], ids=["hold", "reject"])
@pytest.mark.parametrize(
    "case",
    ["outside_window", "latest_revoked", "other_key", "never_enrolled_by_bootstrap"],
)
def test_what_is_not_a_lost_reply(policy: EnrollmentPolicy, case: str) -> None:
    dev, known = enrolled(), facts(KEY, certificates=HELD)
    if case == "outside_window":
        known = dataclasses.replace(known, now=T0 + policy.replay_window + dt.timedelta(seconds=1))
    elif case == "latest_revoked":
        revoked = record(serial=7, status=CertificateStatus.REVOKED)
        known = dataclasses.replace(known, certificates=(revoked,))
    elif case == "other_key":
        known = dataclasses.replace(known, key_sha256=NEW_KEY)
    else:
        dev = dataclasses.replace(dev, enrolled_at=None)  # enrolled with a token
    decision = decide_enrollment(boot(), dev, policy, known)
    assert decision.action is not Action.REPLY_AGAIN
    assert decision.reason == ("bootstrap_reused_held" if policy is HOLD else "bootstrap_reused")


@pytest.mark.parametrize("policy", [HOLD, REJECT], ids=["hold", "reject"])
def test_a_replay_never_changes_the_active_device(policy: EnrollmentPolicy) -> None:
    decision = decide_enrollment(boot(), enrolled(), policy, facts(certificates=HELD))
    assert decision.action in {Action.REQUEST_REPLACEMENT, Action.REFUSE}
    assert decision.flagged
    assert decision.expected == frozenset()  # nothing issued, the device is not moved


@pytest.mark.parametrize("policy", [HOLD, REJECT], ids=["hold", "reject"])
@pytest.mark.parametrize(
    ("status", "key", "action", "reason"),
    [
        (ReplacementStatus.PENDING, NEW_KEY, None, None),  # counted again (or refused)
        (ReplacementStatus.PENDING, OTHER, None, None),
        (ReplacementStatus.APPROVED, NEW_KEY, Action.ISSUE, "replacement_approved"),
        (ReplacementStatus.APPROVED, OTHER, Action.REFUSE, "replacement_key_mismatch"),
        (ReplacementStatus.REJECTED, NEW_KEY, Action.REFUSE, "replacement_rejected"),
        (ReplacementStatus.REJECTED, OTHER, Action.REFUSE, "replacement_rejected"),
    ],
)
def test_the_admins_answer_on_a_replacement_request(
    policy: EnrollmentPolicy,
    status: ReplacementStatus,
    key: str,
    action: Action | None,
    reason: str | None,
) -> None:
    known = facts(NEW_KEY, certificates=HELD, replacement=request(status, key))
    decision = decide_enrollment(boot(), enrolled(), policy, known)
    if action is None:  # still pending: the bootstrap_reuse setting decides
        action, reason = REUSE(policy)
    assert (decision.action, decision.reason) == (action, reason)
    if action is Action.ISSUE:
        assert decision.expected == {DeviceState.ACTIVE}
        assert decision.replacement_key == NEW_KEY
        assert decision.supersede == (7,)
    else:
        assert decision.flagged


def test_a_lost_reply_wins_over_a_replacement_answer() -> None:
    known = facts(KEY, certificates=HELD, replacement=request(ReplacementStatus.REJECTED))
    assert decide_enrollment(boot(), enrolled(), HOLD, known).action is Action.REPLY_AGAIN


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


@pytest.mark.parametrize(
    ("overlap", "superseded"), [(RenewalOverlap.PREVIOUS, (5,)), (RenewalOverlap.NONE, (7, 5))]
)
def test_renewal_keeps_the_renewing_certificate_by_default_and_supersedes_older_ones(
    overlap: RenewalOverlap, superseded: tuple[int, ...]
) -> None:
    renewing = record(serial=7)
    held = (
        record(serial=8, issued_at=T0 + dt.timedelta(days=1)),  # a lost renewal reply: no
        renewing,
        record(serial=5),
        record(serial=4, not_after=T0),  # expired: left alone
        record(serial=3, status=CertificateStatus.REVOKED),
    )
    now = T0 + dt.timedelta(days=2)
    decision = decide_renewal(
        "dev-1", renewing, device(DeviceState.ACTIVE), certificates=held, now=now, overlap=overlap
    )
    assert decision.action is Action.ISSUE
    # 8 (issued, its reply lost) is superseded by the new one as well.
    assert set(decision.supersede) == {8, *superseded}


def test_a_pending_replacement_never_blocks_a_renewal() -> None:
    # Renewal does not even read the replacement request: the certificate proves the key.
    decision = decide_renewal("dev-1", record(), enrolled(), certificates=(record(),), now=T0)
    assert (decision.action, decision.supersede) == (Action.ISSUE, ())
