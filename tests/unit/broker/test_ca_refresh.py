"""The broker side of /cacerts: the kernel decides, this module logs what it dropped, once."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from broker_plugins.ca_refresh import accepted_bundle
from fleet.pki.ca import create_issuing_ca, create_root_ca

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def test_a_dropped_certificate_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    root = create_root_ca("fleet root", now=NOW)
    issuing = create_issuing_ca(root, "I1", now=NOW).certificate
    stranger = create_issuing_ca(create_root_ca("fleet root", now=NOW), "I9", now=NOW).certificate
    with caplog.at_level(logging.WARNING, logger="fleet.broker.ca"):
        for _ in range(3):  # /cacerts is read every few seconds
            bundle = accepted_bundle([issuing, root.certificate],
                                     [issuing, stranger, root.certificate], NOW)  # fmt: skip
    assert bundle == [issuing, root.certificate]
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(ignored) == 1
    assert "unknown_issuer" in ignored[0]
    assert "CN=I9" in ignored[0]
