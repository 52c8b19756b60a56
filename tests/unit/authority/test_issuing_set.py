"""The issuing-CA set: which CA signs, which are trusted, how renew-before shortens validity."""

from __future__ import annotations

import datetime as dt

from fleet.authority.issuers import MIN_SHORTENED_VALIDITY, IssuingSet, LiveIssuers
from fleet.pki.ca import CertifiedKey, create_issuing_ca, create_root_ca, issuer_id

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
MONTH = dt.timedelta(days=30)


def _pair() -> tuple[CertifiedKey, CertifiedKey]:
    root = create_root_ca("R", now=NOW)
    return create_issuing_ca(root, "I1", now=NOW), create_issuing_ca(root, "I2", now=NOW)


def test_current_first_and_lookup_by_id() -> None:
    current, nxt = _pair()
    issuers = IssuingSet(current, (nxt,))
    assert issuers.trusted == (current.certificate, nxt.certificate)
    assert issuers.by_id(issuer_id(nxt.certificate)) is nxt
    assert issuers.by_id("0" * 16) is None


def test_renew_before_puts_the_agents_two_thirds_point_before_the_deadline() -> None:
    current, _ = _pair()
    assert IssuingSet(current).validity_for(MONTH, NOW) == MONTH
    deadline = NOW + dt.timedelta(days=6)
    shortened = IssuingSet(current, renew_before=deadline).validity_for(MONTH, NOW)
    assert shortened == dt.timedelta(days=9)
    assert NOW + shortened * 2 / 3 <= deadline
    # Far ahead: nothing to shorten; passed: full validity again; close: the floor.
    far = IssuingSet(current, renew_before=NOW + dt.timedelta(days=90))
    assert far.validity_for(MONTH, NOW) == MONTH
    assert IssuingSet(current, renew_before=NOW).validity_for(MONTH, NOW) == MONTH
    close = IssuingSet(current, renew_before=NOW + dt.timedelta(minutes=1))
    assert close.validity_for(MONTH, NOW) == MIN_SHORTENED_VALIDITY


def test_listeners_see_every_replacement() -> None:
    current, nxt = _pair()
    live = LiveIssuers.of(current)
    seen: list[IssuingSet] = []
    live.subscribe(seen.append)
    promoted = IssuingSet(nxt, (current,), generation=2)
    live.replace(promoted)
    assert live.now is promoted
    assert seen == [promoted]
