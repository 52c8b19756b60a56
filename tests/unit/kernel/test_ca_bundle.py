"""What a broker adopts from /cacerts: issuing CAs under roots it trusts, new roots by link only."""

from __future__ import annotations

import datetime as dt

import pytest

from fleet.kernel.admission import TrustPolicy
from fleet.kernel.ca_bundle import follow_cacerts
from fleet.kernel.errors import ConfigError
from fleet.kernel.reasons import Reason
from fleet.pki.ca import create_issuing_ca, create_root_ca
from fleet.pki.rollover import roll_root

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def test_only_issuing_cas_under_a_known_root_are_taken() -> None:
    root = create_root_ca("fleet root", now=NOW)
    current = create_issuing_ca(root, "I1", now=NOW).certificate
    nxt = create_issuing_ca(root, "I2", now=NOW).certificate
    stranger_root = create_root_ca("fleet root", now=NOW)  # same name, another key
    forged = create_issuing_ca(stranger_root, "I3", now=NOW).certificate
    offered = [nxt, current, forged, stranger_root.certificate, root.certificate]
    update = follow_cacerts([current, root.certificate], offered, now=NOW)
    assert update.bundle() == [nxt, current, root.certificate]
    assert {p.reason for p in update.dropped} == {Reason.UNKNOWN_ISSUER, Reason.ROOT_NOT_CERTIFIED}
    # A retired CA leaves the bundle when /cacerts stops listing it.
    later = follow_cacerts(update.bundle(), [nxt, root.certificate], now=NOW)
    assert later.bundle() == [nxt, root.certificate]


def test_an_answer_with_no_usable_issuing_ca_keeps_the_bundle() -> None:
    root = create_root_ca("fleet root", now=NOW)
    expired = create_issuing_ca(root, "old", now=NOW - dt.timedelta(days=400),
                                validity=dt.timedelta(days=10)).certificate  # fmt: skip
    update = follow_cacerts([root.certificate], [expired, root.certificate], now=NOW)
    with pytest.raises(ConfigError, match=r"no issuing CA.*expired"):
        update.bundle()
    with pytest.raises(ConfigError, match="no root"):
        follow_cacerts([expired], [expired], now=NOW)


def test_a_root_rollover_is_followed_through_its_link_as_the_agent_does() -> None:
    old_root = create_root_ca("fleet root", now=NOW - dt.timedelta(days=3000),
                              validity=dt.timedelta(days=7300))  # fmt: skip
    old_issuing = create_issuing_ca(old_root, "I1", now=NOW - dt.timedelta(days=10)).certificate
    rolled = roll_root(old_root, now=NOW)
    new_root = rolled.new_root.certificate
    new_issuing = create_issuing_ca(rolled.new_root, "I2", now=NOW).certificate
    # /cacerts after rotate-root and rotate-issuing: both roots, both links, both issuing CAs.
    answer = [old_issuing, new_issuing, new_root, old_root.certificate, *rolled.links]
    update = follow_cacerts([old_issuing, old_root.certificate], answer, now=NOW)
    assert update.adopted_roots == (new_root,)
    bundle = update.bundle()
    assert bundle == [old_issuing, new_issuing, old_root.certificate, new_root]
    assert not update.dropped
    # The links are evidence, never anchors: the bundle splits into the right policy.
    policy = TrustPolicy.from_bundle(bundle)
    assert policy.anchors == (old_root.certificate, new_root)
    assert policy.issuers == (old_issuing, new_issuing)
    # The next refresh changes nothing; after retire-root the old issuing CA leaves
    # (the old root stays while valid, as on a device: nothing under it is adopted).
    assert follow_cacerts(bundle, answer, now=NOW).bundle() == bundle
    retired = follow_cacerts(bundle, [new_issuing, new_root], now=NOW)
    assert retired.bundle() == [new_issuing, old_root.certificate, new_root]
    assert not retired.adopted_roots


def test_a_new_root_without_a_link_and_what_it_signed_are_dropped() -> None:
    old_root = create_root_ca("fleet root", now=NOW)
    old_issuing = create_issuing_ca(old_root, "I1", now=NOW).certificate
    rolled = roll_root(old_root, now=NOW)
    new_issuing = create_issuing_ca(rolled.new_root, "I2", now=NOW).certificate
    answer = [
        old_issuing,
        new_issuing,
        rolled.new_root.certificate,
        old_root.certificate,
        rolled.new_with_old,
    ]  # fmt: skip  (the link the other way certifies nothing)
    update = follow_cacerts([old_issuing, old_root.certificate], answer, now=NOW)
    assert update.bundle() == [old_issuing, old_root.certificate]
    assert {p.reason for p in update.dropped} == {Reason.UNKNOWN_ISSUER, Reason.ROOT_NOT_CERTIFIED}
