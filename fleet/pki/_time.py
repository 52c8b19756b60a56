"""Guarding the ``now`` every pure function takes."""

from __future__ import annotations

import datetime as dt

from fleet.kernel.errors import ConfigError


def require_utc(now: dt.datetime) -> None:
    """Refuse naive or non-UTC datetimes.

    A naive ``now`` would be silently treated as UTC by cryptography, so a local
    clock passed by mistake would shift every validity window by the UTC offset.
    """
    if now.tzinfo is None or now.utcoffset() != dt.timedelta(0):
        raise ConfigError(f"time {now.isoformat()} must be timezone-aware UTC")
