"""One-time enrollment tokens: random, URL-safe, stored only as SHA-256."""

from __future__ import annotations

import datetime as dt
import hashlib
import re

import pytest

from fleet.kernel.errors import ConfigError
from fleet.tokens import MAX_TOKEN_LIFETIME, new_token, parse_lifetime, token_sha256


def test_tokens_are_long_url_safe_and_unique() -> None:
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000
    for token in tokens:
        # 32 bytes -> 43 base64url characters; safe in an HTTP Basic password.
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
        assert ":" not in token


def test_the_hash_is_lowercase_hex_sha256_of_the_utf8_token() -> None:
    token = new_token()
    digest = token_sha256(token)
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert token not in digest
    assert token_sha256(token) == digest  # deterministic: the store compares hashes
    assert token_sha256(token + "x") != digest


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", dt.timedelta(minutes=30)),
        ("12h", dt.timedelta(hours=12)),
        ("7d", dt.timedelta(days=7)),
        (" 2w ", dt.timedelta(weeks=2)),
        ("3600s", dt.timedelta(hours=1)),
        ("90d", MAX_TOKEN_LIFETIME),
    ],
)
def test_lifetimes(text: str, expected: dt.timedelta) -> None:
    assert parse_lifetime(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "0d", "-1d", "1.5h", "7 d", "7D", "1y", "91d"])
def test_bad_or_too_long_lifetimes_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_lifetime(text)
