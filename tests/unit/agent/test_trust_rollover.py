"""The agent's side of a root rollover: which roots it keeps, and a power cut mid-move."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from device_agent.state import StateDir
from device_agent.trust import chain_from
from fleet.kernel.fingerprint import sha256_fingerprint
from fleet.pki.ca import CertifiedKey, create_issuing_ca, create_root_ca
from fleet.pki.rollover import NewRoot, roll_root

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
SKEW = dt.timedelta(minutes=15)


@pytest.fixture(scope="module")
def rollover() -> tuple[CertifiedKey, NewRoot, CertifiedKey]:  # old root, rollover, issuing
    old = create_root_ca(
        "fleet root CA", now=NOW - dt.timedelta(days=300), validity=dt.timedelta(days=400)
    )
    rolled = roll_root(old, now=NOW)
    issuing = create_issuing_ca(old, "issuing under R1", now=NOW)
    return old, rolled, issuing


Rollover = tuple[CertifiedKey, NewRoot, CertifiedKey]


def _answer(rollover: Rollover) -> list[x509.Certificate]:
    old, rolled, issuing = rollover
    return [issuing.certificate, rolled.new_root.certificate, old.certificate, *rolled.links]


def test_the_pin_moves_and_the_old_root_stays_while_valid(rollover: Rollover) -> None:
    old, rolled, issuing = rollover
    cacerts = chain_from(_answer(rollover), sha256_fingerprint(old.certificate), now=NOW, skew=SKEW)
    assert cacerts.roots == (rolled.new_root.certificate, old.certificate)
    assert cacerts.issuers == (issuing.certificate,)  # the links are never issuing CAs
    # Once the old root expired it is dropped; what the new one signs still counts.
    later = old.certificate.not_valid_after_utc + dt.timedelta(days=1)
    r2_issuing = create_issuing_ca(rolled.new_root, "R2 issuing", now=NOW).certificate
    kept = chain_from(
        [rolled.new_root.certificate, r2_issuing],
        sha256_fingerprint(rolled.new_root.certificate), kept=cacerts.roots, now=later, skew=SKEW,
    )  # fmt: skip
    assert kept.roots == (rolled.new_root.certificate,)


def test_the_stored_bundle_is_not_a_way_to_learn_roots_without_a_clock(rollover: Rollover) -> None:
    old = rollover[0]
    # Without `now` (reading what the agent stored), the answer teaches nothing new.
    cacerts = chain_from(_answer(rollover), sha256_fingerprint(old.certificate))
    assert cacerts.roots == (old.certificate,)


def test_a_power_cut_between_bundle_and_pin_is_finished_later(
    rollover: Rollover, tmp_path: Path
) -> None:
    old, rolled, _ = rollover
    state = StateDir(tmp_path / "s")
    state.create()
    moved = chain_from(_answer(rollover), sha256_fingerprint(old.certificate), now=NOW, skew=SKEW)
    state.save_cacerts(moved)  # written ... and the power goes before agent.json changes
    loaded = state.load_cacerts(sha256_fingerprint(old.certificate))  # the old pin still finds it
    assert loaded is not None
    assert set(loaded.roots) == {old.certificate, rolled.new_root.certificate}
    again = chain_from(
        _answer(rollover),
        sha256_fingerprint(old.certificate),
        kept=loaded.roots,
        now=NOW,
        skew=SKEW,
    )
    assert again.pinned_sha256 == sha256_fingerprint(rolled.new_root.certificate)
    assert (tmp_path / "s/cacerts.pem").stat().st_mode & 0o777 == 0o644
