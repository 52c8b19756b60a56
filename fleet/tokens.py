"""One-time enrollment tokens: made here, shown to an admin once, stored only as a hash.

A token is an admin's grant for one device to enroll without a bootstrap
certificate. The device sends it as the HTTP Basic password (user name = device
id). 32 random bytes make guessing hopeless, so a plain SHA-256 (not a slow
password hash) is enough to keep a copied database from yielding usable tokens.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets

from fleet.kernel.errors import ConfigError

TOKEN_BYTES = 32
DEFAULT_TOKEN_LIFETIME = dt.timedelta(days=7)
# A token is a bearer credential; one that lives for months is a standing risk.
MAX_TOKEN_LIFETIME = dt.timedelta(days=90)

_LIFETIME = re.compile(r"([1-9][0-9]{0,6})([smhdw])", re.ASCII)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe base64 (43 characters, no padding)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_sha256(token: str) -> str:
    """Lowercase hex SHA-256 of the token's UTF-8 bytes: what the store keeps."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_lifetime(text: str) -> dt.timedelta:
    """``30m``, ``12h``, ``7d``, ``2w`` (or seconds ``3600s``); at most 90 days."""
    match = _LIFETIME.fullmatch(text.strip())
    if match is None:
        raise ConfigError(
            f"token lifetime {text!r} is not a duration",
            hint="Write a number and a unit: 30m, 12h, 7d or 2w.",
        )
    lifetime = dt.timedelta(**{_UNITS[match[2]]: int(match[1])})
    if lifetime > MAX_TOKEN_LIFETIME:
        raise ConfigError(
            f"token lifetime {text!r} is longer than the maximum of {MAX_TOKEN_LIFETIME.days} days",
            hint="Issue a shorter-lived token; make a new one if it expires unused.",
        )
    return lifetime
