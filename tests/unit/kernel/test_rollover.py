"""The root-rollover rule: a new root is trusted only through a link from a trusted root."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.kernel.reasons import Reason
from fleet.kernel.rollover import follow_rollover

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
SKEW = dt.timedelta(minutes=5)
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet root CA")])
Key = ec.EllipticCurvePrivateKey


def _cert(
    subject_key: Key,
    signer_key: Key,
    *,
    subject: x509.Name = NAME,
    issuer: x509.Name = NAME,
    ca: bool = True,
    not_before: dt.datetime = NOW - dt.timedelta(days=1),
    not_after: dt.datetime = NOW + dt.timedelta(days=365),
) -> x509.Certificate:
    return (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
        .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=1 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(not ca, False, False, False, False, ca, ca, False, False), critical=True
        )
        .sign(signer_key, hashes.SHA256())
    )  # fmt: skip


def _key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


OLD_KEY, NEW_KEY, THIRD_KEY, ROGUE_KEY = _key(), _key(), _key(), _key()
OLD = _cert(OLD_KEY, OLD_KEY, not_before=NOW - dt.timedelta(days=3000))
NEW = _cert(NEW_KEY, NEW_KEY)
OLD_WITH_NEW = _cert(NEW_KEY, OLD_KEY)
NEW_WITH_OLD = _cert(OLD_KEY, NEW_KEY)


def _follow(*offered: x509.Certificate, trusted: tuple[x509.Certificate, ...] = (OLD,)):  # type: ignore[no-untyped-def]
    return follow_rollover(trusted, offered, now=NOW, skew=SKEW)


def test_a_new_root_with_its_link_is_accepted_and_becomes_the_pin() -> None:
    result = _follow(NEW, OLD, OLD_WITH_NEW, NEW_WITH_OLD)
    assert result.accepted == (NEW,)
    assert result.trusted == (OLD, NEW)
    assert result.pin == NEW
    assert result.refused == ()


def test_nothing_new_offered_leaves_the_pin_alone() -> None:
    result = _follow(OLD)
    assert result.accepted == ()
    assert result.refused == ()
    assert result.pin == OLD


def test_a_self_signed_new_root_without_a_link_is_refused() -> None:
    result = _follow(NEW, OLD)
    assert result.accepted == ()
    assert result.pin == OLD
    (problem,) = result.refused
    assert problem.reason is Reason.ROOT_NOT_CERTIFIED
    assert "without a link certificate" in problem.detail


def test_only_the_reverse_link_is_not_enough() -> None:
    # NewWithOld is signed by the NEW key: it says nothing a device trusting OLD can check.
    result = _follow(NEW, NEW_WITH_OLD)
    assert result.accepted == ()
    assert result.refused[0].reason is Reason.ROOT_NOT_CERTIFIED


def test_a_link_signed_by_a_key_that_is_not_pinned_is_refused() -> None:
    forged = _cert(NEW_KEY, ROGUE_KEY)  # right name and key, wrong signer
    result = _follow(NEW, forged)
    assert result.accepted == ()
    assert "not signed by a trusted root" in result.refused[0].detail


def test_a_link_for_another_key_does_not_certify_the_root() -> None:
    other_key = _cert(THIRD_KEY, OLD_KEY)  # a genuine link, but for a different key
    result = _follow(NEW, other_key)
    assert result.accepted == ()
    assert "without a link certificate" in result.refused[0].detail


def test_a_link_for_another_subject_does_not_certify_the_root() -> None:
    other = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else")])
    renamed = _cert(NEW_KEY, OLD_KEY, subject=other)
    result = _follow(NEW, renamed)
    assert result.accepted == ()


def test_an_expired_link_is_refused() -> None:
    expired = _cert(NEW_KEY, OLD_KEY, not_after=NOW - dt.timedelta(days=1))
    result = _follow(NEW, expired)
    assert result.accepted == ()
    assert "expired" in result.refused[0].detail


def test_a_link_from_an_expired_pinned_root_is_refused() -> None:
    old = _cert(OLD_KEY, OLD_KEY, not_after=NOW - dt.timedelta(days=1))
    result = _follow(NEW, OLD_WITH_NEW, trusted=(old,))
    assert result.accepted == ()
    assert "the root that signed it" in result.refused[0].detail


def test_a_link_that_is_not_a_ca_is_refused() -> None:
    leafish = _cert(NEW_KEY, OLD_KEY, ca=False)
    result = _follow(NEW, leafish)
    assert result.accepted == ()
    assert "not a CA certificate" in result.refused[0].detail


def test_an_offered_root_that_is_not_a_ca_is_refused() -> None:
    not_ca = _cert(NEW_KEY, NEW_KEY, ca=False)
    result = _follow(not_ca, _cert(NEW_KEY, OLD_KEY))
    assert result.accepted == ()
    assert result.refused[0].reason is Reason.NOT_A_CA


def test_two_rollovers_are_followed_link_by_link_in_any_order() -> None:
    third = _cert(THIRD_KEY, THIRD_KEY, not_before=NOW - dt.timedelta(hours=1))
    new_to_third = _cert(THIRD_KEY, NEW_KEY)
    result = _follow(new_to_third, third, OLD_WITH_NEW, NEW)
    assert result.accepted == (NEW, third)
    assert result.pin == third


def test_a_broken_second_link_stops_the_walk_at_the_first_rollover() -> None:
    third = _cert(THIRD_KEY, THIRD_KEY, not_before=NOW - dt.timedelta(hours=1))
    forged = _cert(THIRD_KEY, ROGUE_KEY)
    result = _follow(NEW, OLD_WITH_NEW, third, forged)
    assert result.accepted == (NEW,)
    assert result.pin == NEW
    assert len(result.refused) == 1


def test_a_trust_set_is_required() -> None:
    with pytest.raises(ValueError, match="at least one trusted root"):
        follow_rollover((), (NEW,), now=NOW, skew=SKEW)
