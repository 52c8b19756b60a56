"""What the agent says about itself: device state, broker state, refusal classification."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest

from device_agent.errors import EXIT_CONFIG, EXIT_REFUSED, EXIT_REVOKED, ConfigError
from device_agent.health import (
    STATUS_EXIT,
    BrokerLink,
    BrokerState,
    DeviceState,
    classify_connack,
    classify_tls_failure,
    device_state,
    suspect_revoked,
)
from device_agent.keystore import require_private
from device_agent.renewal import Phase
from device_agent.state import StateDir, entries, undo_enrollment
from fleet.kernel.reasons import Reason

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def _broker(link: BrokerLink, *, retry: bool = True, reason: str | None = None) -> BrokerState:
    return BrokerState(
        state=link,
        broker="broker.example:8883",
        since=NOW,
        reason=reason,
        detail="CONNACK: Not authorized",
        retry_at=NOW + dt.timedelta(seconds=30) if retry else None,
        attempts=2,
        pid=4242,
    )


# -- device state ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "reason", "expected"),
    [
        (Phase.FRESH, None, DeviceState.OK),
        (Phase.DUE, None, DeviceState.RENEWAL_DUE),
        (Phase.EXPIRED, None, DeviceState.EXPIRED),
        (None, None, DeviceState.NO_IDENTITY),
        # The server's word beats what the certificate on disk looks like.
        (Phase.FRESH, "device_revoked", DeviceState.REVOKED),
        (Phase.FRESH, "certificate_revoked", DeviceState.REVOKED),
        (Phase.EXPIRED, "certificate_revoked", DeviceState.REVOKED),
        (Phase.FRESH, "device_suspended", DeviceState.SUSPENDED),
        (None, "enrollment_pending", DeviceState.PENDING_APPROVAL),
        (Phase.EXPIRED, "enrollment_pending", DeviceState.PENDING_APPROVAL),
        (Phase.FRESH, "certificate_expired", DeviceState.EXPIRED),  # the server's clock
        (None, "token_invalid", DeviceState.NO_IDENTITY),
    ],
)
def test_device_state_most_serious_condition_wins(
    phase: Phase | None, reason: str | None, expected: DeviceState
) -> None:
    assert device_state(phase, reason, None) is expected


def test_a_refusing_broker_is_not_ok() -> None:
    refused = _broker(BrokerLink.REFUSED, reason=Reason.AUTH_FAILED)
    assert device_state(Phase.FRESH, None, refused) is DeviceState.BROKER_REFUSED
    assert device_state(Phase.DUE, None, refused) is DeviceState.BROKER_REFUSED
    down = _broker(BrokerLink.UNREACHABLE, reason=Reason.TRANSPORT_ERROR)
    assert device_state(Phase.FRESH, None, down) is DeviceState.BROKER_UNREACHABLE
    kicked = _broker(BrokerLink.DISCONNECTED)
    assert device_state(Phase.FRESH, None, kicked) is DeviceState.BROKER_UNREACHABLE
    # Revoked outranks the broker's (reasonless) refusal.
    assert device_state(Phase.FRESH, "device_revoked", refused) is DeviceState.REVOKED
    assert device_state(Phase.FRESH, None, _broker(BrokerLink.CONNECTED, retry=False)) is (
        DeviceState.OK
    )


def test_status_exit_codes_match_the_command_exit_codes() -> None:
    assert STATUS_EXIT[DeviceState.REVOKED] == EXIT_REVOKED == 6
    assert STATUS_EXIT[DeviceState.NO_IDENTITY] == EXIT_CONFIG
    assert STATUS_EXIT[DeviceState.SUSPENDED] == EXIT_REFUSED
    for usable in (DeviceState.OK, DeviceState.RENEWAL_DUE, DeviceState.BROKER_REFUSED):
        assert usable not in STATUS_EXIT


# -- broker state ----------------------------------------------------------------------------


def test_broker_state_round_trips_and_says_until_when() -> None:
    state = _broker(BrokerLink.REFUSED, reason=Reason.AUTH_FAILED)
    raw = json.loads(json.dumps(state.to_json()))
    assert BrokerState.from_json(raw) == state
    assert raw["summary"] == (
        "refused by broker.example:8883 (auth_failed: CONNACK: Not authorized); "
        "backing off until 2026-06-01T00:00:30+00:00"
    )
    assert _broker(BrokerLink.CONNECTED, retry=False).summary() == (
        "connected to broker.example:8883"
    )


@pytest.mark.parametrize(
    ("text", "link", "reason"),
    [
        (
            "[SSL: SSLV3_ALERT_CERTIFICATE_REVOKED] sslv3 alert certificate revoked (_ssl.c:2580)",
            BrokerLink.REFUSED,
            Reason.CERTIFICATE_REVOKED,
        ),
        (
            "[SSL: SSLV3_ALERT_CERTIFICATE_EXPIRED] sslv3 alert certificate expired",
            BrokerLink.REFUSED,
            Reason.CERTIFICATE_EXPIRED,
        ),
        (
            "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca",
            BrokerLink.REFUSED,
            Reason.UNKNOWN_ISSUER,
        ),
        (
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed",
            BrokerLink.REFUSED,
            Reason.TLS_FAILED,
        ),
        ("[Errno 111] Connection refused", BrokerLink.UNREACHABLE, Reason.TRANSPORT_ERROR),
        ("timed out", BrokerLink.UNREACHABLE, Reason.TRANSPORT_ERROR),
    ],
)
def test_tls_failures_are_classified(text: str, link: BrokerLink, reason: Reason) -> None:
    assert classify_tls_failure(text) == (link, reason)


def test_connack_refusals_are_classified() -> None:
    assert classify_connack(135, "Not authorized") is Reason.AUTH_FAILED
    assert classify_connack(5, "") is Reason.AUTH_FAILED
    assert classify_connack(136, "Server unavailable") is Reason.SERVER_UNAVAILABLE


def test_only_revocation_like_refusals_are_worth_asking_est_about() -> None:
    assert suspect_revoked(Reason.CERTIFICATE_REVOKED, after_kick=False, ever_connected=True)
    # "not authorized" right after the broker closed a live session: what a revocation looks like.
    assert suspect_revoked(Reason.AUTH_FAILED, after_kick=True, ever_connected=True)
    # ... or before the first connection of this run (revoked while the agent was off).
    assert suspect_revoked(Reason.AUTH_FAILED, after_kick=False, ever_connected=False)
    # A refusal out of the blue on a device that was connected: a broker problem, back off.
    assert not suspect_revoked(Reason.AUTH_FAILED, after_kick=False, ever_connected=True)
    assert not suspect_revoked(Reason.TRANSPORT_ERROR, after_kick=True, ever_connected=False)
    assert not suspect_revoked(Reason.UNKNOWN_ISSUER, after_kick=True, ever_connected=False)


# -- recorded reasons ------------------------------------------------------------------------


def test_a_transient_failure_keeps_the_recorded_reason_and_a_success_clears_it(
    tmp_path: Path,
) -> None:
    state = StateDir(tmp_path)
    state.record_error(
        "403 device_suspended", now=NOW, next_attempt=None, reason="device_suspended"
    )
    state.record_error("server down", now=NOW, next_attempt=None)
    assert state.load_status().last_reason == "device_suspended"
    assert state.load_status().failures == 2
    state.record_success(next_renewal=NOW)
    after = state.load_status()
    assert (after.last_reason, after.last_error, after.failures) == (None, None, 0)


def test_broker_state_file_is_written_atomically_and_a_damaged_one_is_reported(
    tmp_path: Path,
) -> None:
    state = StateDir(tmp_path)
    assert state.load_broker() is None
    written = _broker(BrokerLink.REFUSED, reason=Reason.AUTH_FAILED)
    state.save_broker(written)
    assert state.load_broker() == written
    assert [p.name for p in tmp_path.iterdir()] == ["broker.json"]  # no temporaries left
    state.broker_path.write_text('{"state": "conn')
    assert state.load_broker() is None
    assert any("broker.json is corrupted" in w for w in state.warnings)


# -- first enrollment leaves nothing half-made -------------------------------------------------


def test_undo_enrollment_removes_a_directory_it_created(tmp_path: Path) -> None:
    target = tmp_path / "state"
    before = entries(target)
    assert before is None
    target.mkdir()
    (target / "agent.json").write_text("{}")
    (target / "op1.key").write_text("key")
    undo_enrollment(target, before)
    assert not target.exists()


def test_undo_enrollment_keeps_what_was_there(tmp_path: Path) -> None:
    target = tmp_path / "state"  # a systemd StateDirectory, or an earlier identity
    target.mkdir()
    (target / "op1.pem").write_text("old")
    before = entries(target)
    (target / "op2.key").write_text("new")
    (target / "agent.lock").write_text("1")
    undo_enrollment(target, before)
    assert sorted(p.name for p in target.iterdir()) == ["op1.pem"]


# -- secrets readable by others are refused ----------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_secret_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "boot.key"
    key.write_text("secret")
    key.chmod(mode)
    with pytest.raises(ConfigError, match="readable by others") as raised:
        require_private(key, "bootstrap key")
    assert f"chmod 600 {key}" in raised.value.hint
    assert stat.S_IMODE(key.stat().st_mode) == mode  # not the agent's file to change
    key.chmod(0o600)
    require_private(key, "bootstrap key")
