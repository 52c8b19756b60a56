"""CA expiry warnings at 180, 90 and 30 days (an injected time, no clock)."""

from __future__ import annotations

import datetime as dt

import pytest

from fleet.pki.ca import CertifiedKey
from fleet.pki.expiry import WARNING_DAYS, days_left, expiry_warning


@pytest.mark.parametrize(
    ("left", "threshold"),
    [(181, None), (180, 180), (91, 180), (90, 90), (31, 90), (30, 30), (0, 30)],
)
def test_warning_threshold_by_days_left(
    issuing: CertifiedKey, left: int, threshold: int | None
) -> None:
    end = issuing.certificate.not_valid_after_utc
    now = end - dt.timedelta(days=left, hours=1)
    assert days_left(issuing.certificate, now) == left
    warning = expiry_warning(issuing.certificate, now)
    assert (warning.threshold if warning else None) == threshold


def test_an_expired_ca_says_so(issuing: CertifiedKey) -> None:
    after = issuing.certificate.not_valid_after_utc + dt.timedelta(days=2)
    warning = expiry_warning(issuing.certificate, after)
    assert warning is not None
    assert warning.threshold == min(WARNING_DAYS)
    assert str(warning) == "EXPIRED"
