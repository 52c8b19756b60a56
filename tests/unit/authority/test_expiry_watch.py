"""A running server warns (log + metric) 180/90/30 days before a fleet CA expires.

The clock is injected: the same data directory is looked at from four moments.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import cast

import pytest

from fleet.authority.issuers import LiveIssuers
from fleet.config import load_config
from fleet.datadir import init_data_dir
from fleet.kernel.clock import ManualClock
from fleet.pki.ca import issuer_id
from fleet.server.issuer_watch import IssuerWatch, load_issuing_set
from fleet.server.metrics import Metrics
from fleet.store.protocol import Store

MADE = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(("days_left", "threshold"), [(200, 0), (180, 180), (90, 90), (12, 30)])
def test_issuing_ca_expiry_warning_by_injected_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, days_left: int, threshold: int
) -> None:
    result = init_data_dir(tmp_path / "data", now=MADE)
    config = load_config(result.config_path, environ={})
    issuers = LiveIssuers(load_issuing_set(config, None))
    end = issuers.now.current.certificate.not_valid_after_utc
    clock = ManualClock(end - dt.timedelta(days=days_left, hours=1))
    metrics = Metrics()
    watch = IssuerWatch(
        config, issuers, passphrase=None, store=cast(Store, None), clock=clock, metrics=metrics
    )
    ca = issuer_id(issuers.now.current.certificate)
    with caplog.at_level(logging.WARNING, logger="fleet.ca"):
        watch.report_expiry()
        watch.report_expiry()  # the same pass again: no second log line
    labels = {"role": "issuing", "state": "current", "issuer": ca}
    sample = metrics.registry.get_sample_value
    assert sample("fleet_ca_expiry_warning_days", labels) == threshold
    assert sample("fleet_ca_days_to_expiry", labels) == days_left
    lines = [r.getMessage() for r in caplog.records if ca in r.getMessage()]
    if threshold:
        assert len(lines) == 1
        assert f"expires in {days_left} days (warned from {threshold})" in lines[0]
    else:
        assert lines == []
