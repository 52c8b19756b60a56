"""Console session cookies and CSRF tokens."""

from __future__ import annotations

import datetime as dt

import pytest

from fleet.ui.session import SessionSigner

KEY = b"k" * 32
HOUR = dt.timedelta(hours=1)


def signer(key: bytes = KEY) -> SessionSigner:
    return SessionSigner(key, lifetime=8 * HOUR)


def test_a_session_round_trips_until_it_expires(now: dt.datetime) -> None:
    session = signer().new("token", "ab" * 32, now)
    cookie = signer().encode(session)
    decoded = signer().decode(cookie, now + HOUR)
    assert decoded is not None
    assert (decoded.kind, decoded.sha256, decoded.nonce) == ("token", "ab" * 32, session.nonce)
    assert signer().decode(cookie, now + 8 * HOUR) is None  # expired
    assert signer().decode(cookie, now - HOUR) is None  # not yet issued: a clock gone back


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c.replace("v1.", "v2.", 1),
        lambda c: c[:-2] + ("A" if c[-2] != "A" else "B") + c[-1],
        lambda c: c.split(".")[0] + "." + c.split(".")[1][:-1] + "." + c.split(".")[2],
        lambda c: "",
        lambda c: "v1..",
        lambda c: c + "x" * 1100,
    ],
)
def test_a_tampered_cookie_is_no_session(now: dt.datetime, tamper: object) -> None:
    cookie = signer().encode(signer().new("certificate", "cd" * 32, now))
    assert signer().decode(tamper(cookie), now) is None  # type: ignore[operator]


def test_another_key_knows_no_session(now: dt.datetime) -> None:
    cookie = signer().encode(signer().new("token", "ab" * 32, now))
    assert signer(b"o" * 32).decode(cookie, now) is None


def test_csrf_tokens_are_bound_to_the_session_and_purpose(now: dt.datetime) -> None:
    s = signer()
    one, two = s.new("token", "ab" * 32, now), s.new("token", "ab" * 32, now)
    token = s.csrf_token(one.nonce)
    assert s.csrf_valid(one.nonce, token)
    assert not s.csrf_valid(two.nonce, token)
    assert not s.csrf_valid(one.nonce, token, "login")
    assert not s.csrf_valid(one.nonce, "")
    # A CSRF token is not the cookie's MAC under another name (separate derived keys).
    assert token not in s.encode(one)


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SessionSigner(b"short", lifetime=HOUR)
