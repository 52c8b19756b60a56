"""`fleet admin disable` resolves the fingerprint `fleet admin list` shows, never guessing."""

from __future__ import annotations

import datetime as dt

import pytest

from fleet.authority.admins import resolve_admin_fingerprint
from fleet.kernel.errors import AdminNotFound, RequestInvalid
from fleet.records import AdminCredential, AdminRole

AT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CREDS = [
    AdminCredential("a", AdminRole.ADMIN, "token", "abcdef01" + "1" * 56, AT),
    AdminCredential("b", AdminRole.VIEWER, "token", "abcdef01" + "2" * 56, AT),
    AdminCredential("c", AdminRole.OPERATOR, "certificate", "0123456789" + "3" * 54, AT),
]


def test_unique_prefix_whole_fingerprint_and_colon_spelling() -> None:
    assert resolve_admin_fingerprint("0123456789", CREDS) == CREDS[2].sha256
    assert resolve_admin_fingerprint(CREDS[0].sha256.upper(), CREDS) == CREDS[0].sha256
    assert resolve_admin_fingerprint("AB:CD:EF:01:11", CREDS) == CREDS[0].sha256


def test_ambiguous_prefix_is_refused_and_names_the_candidates() -> None:
    with pytest.raises(RequestInvalid, match=r"matches 2 admin credentials: a \(.*b \(") as err:
        resolve_admin_fingerprint("abcdef01", CREDS)
    assert err.value.reason == "fingerprint_invalid"


@pytest.mark.parametrize("text", ["abc", "", "xyz12345", "abcdef0g"])
def test_short_or_non_hex_is_refused(text: str) -> None:
    with pytest.raises(RequestInvalid):
        resolve_admin_fingerprint(text, CREDS)


def test_no_match_is_not_found() -> None:
    with pytest.raises(AdminNotFound):
        resolve_admin_fingerprint("ffffffff", CREDS)
