"""An approval is for one key: the one the admin names, or the only one ever presented."""

from __future__ import annotations

import datetime as dt

import pytest

from fleet.authority.replacement import approved_key
from fleet.kernel.errors import ReplacementKeyRequired
from fleet.records import ReplacementRequest

AT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
KEY = "ab" * 32


def request(keys_seen: int) -> ReplacementRequest:
    return ReplacementRequest("d1", "cd" * 32, KEY, AT, AT, attempts=keys_seen, keys_seen=keys_seen)


def test_the_only_key_needs_no_naming() -> None:
    assert approved_key(request(1), None) == KEY


def test_several_keys_need_the_admin_to_name_one() -> None:
    with pytest.raises(ReplacementKeyRequired, match="2 different keys"):
        approved_key(request(2), None)
    assert approved_key(request(2), "AB:AB:AB:AB") == KEY


@pytest.mark.parametrize("given", ["abab", "cdcdcdcd", "", "ab" * 33])
def test_a_key_the_request_does_not_name_is_refused(given: str) -> None:
    with pytest.raises(ReplacementKeyRequired):
        approved_key(request(1), given)
