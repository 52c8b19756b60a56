"""When a CA's end is near enough to warn about (pure).

Warnings start 180 days before any fleet CA expires and step up at 90 and 30:
an issuing-CA rotation is a few minutes of commands, but a ceremony with an
offline root needs people, media and a room, which takes weeks to arrange.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509

WARNING_DAYS: tuple[int, ...] = (180, 90, 30)


@dataclass(frozen=True, slots=True)
class ExpiryWarning:
    days_left: int
    threshold: int  # the smallest of WARNING_DAYS at or above days_left

    def __str__(self) -> str:
        if self.days_left <= 0:
            return "EXPIRED"
        return f"expires in {self.days_left} days (warned from {self.threshold})"


def days_left(cert: x509.Certificate, now: dt.datetime) -> int:
    """Whole days until notAfter (negative once expired)."""
    return (cert.not_valid_after_utc - now) // dt.timedelta(days=1)


def expiry_warning(cert: x509.Certificate, now: dt.datetime) -> ExpiryWarning | None:
    """None while the CA has more than 180 days; else the tightest threshold crossed."""
    left = days_left(cert, now)
    crossed = [days for days in WARNING_DAYS if left <= days]
    if not crossed:
        return None
    return ExpiryWarning(days_left=left, threshold=min(crossed))
